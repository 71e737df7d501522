"""The Starlette application: KServe v2 routes, bearer-token auth, request size limits,
metrics, and the model runs on a thread pool (or through a dynamic batcher).

Why Starlette + uvicorn: a small, maintained ASGI toolkit and server (no framework
magic between a route and the bytes, which the binary tensor extension needs), asyncio
for dynamic batching (requests wait on futures, not threads), and uvicorn's graceful
shutdown (stop accepting, let in-flight requests finish).  docs/serving.md."""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import ExecutionError, GalaxirError, InputValidationError
from .batcher import MAX_INSTANCES, Batcher, check_sizes, example_feeds
from .metrics import Metrics
from .models import ServedModel
from .protocol import RequestError, decode_request, encode_response

log = logging.getLogger("galaxir.serve")


@dataclass
class ServeConfig:
    max_batch: int = 0           # 0/1: no dynamic batching
    max_delay_ms: float = 2.0
    max_body_bytes: int = 64 << 20
    token: str | None = None     # bearer token required on every route but health
    run_threads: int = 4         # threads running models (concurrent calls per model)
    batch_instances: int | None = None  # batches of one model running at once (None: warm-up)
    batch_sizes: list[int] | None = None  # sizes to pad to, as given (None: powers of two)
    warm: bool = True            # run (compile) and time the batch sizes before serving
    warmup_runs: int = 2         # timed runs per batch size (best of), after the compiling one

    def __post_init__(self):
        if self.batch_sizes is not None:
            self.batch_sizes = check_sizes(self.batch_sizes)
        if self.warmup_runs < 1:
            raise ValueError(f"warmup_runs must be at least 1, got {self.warmup_runs} "
                             "(warm=False skips the warm-up)")
        if self.batch_instances is not None and self.batch_instances < 1:
            raise ValueError(f"batch_instances must be at least 1, got {self.batch_instances}")

    @property
    def batching(self) -> bool:
        return bool(self.batch_sizes) or self.max_batch > 1


#: bytes past the body limit the server still reads (and drops) before answering 413
DRAIN_BYTES = 16 << 20


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _App:
    def __init__(self, models: dict[str, ServedModel], config: ServeConfig):
        self.models = models
        self.config = config
        self.metrics = Metrics()
        self.executor: ThreadPoolExecutor | None = None
        self.batchers: dict[str, Batcher] = {}
        self.ready = False

    # -- lifecycle ------------------------------------------------------------------------
    @asynccontextmanager
    async def lifespan(self, app):
        self.executor = ThreadPoolExecutor(self.config.run_threads,
                                           thread_name_prefix="galaxir-serve")
        await self._warm()
        self.ready = True
        try:
            yield
        finally:
            self.ready = False
            for b in self.batchers.values():
                await b.stop()
            self.executor.shutdown(wait=True)

    async def _warm(self) -> None:
        """Compile and time the batch sizes each model will run before the server is ready
        (a target that compiles per shape then never compiles inside a request); a model
        where no batch size beats single rows is served without batching."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        for name, m in self.models.items():
            if not m.batchable:
                continue
            if not cfg.batching:  # unbatched: requests of one row are the usual case
                feeds = example_feeds(m, 1) if cfg.warm else None
                if feeds is not None:
                    await loop.run_in_executor(self.executor, m.run, feeds)
                continue
            b = Batcher(m, cfg.max_batch, cfg.max_delay_ms / 1e3, self.executor,
                        self._batch_observer(name), instances=cfg.batch_instances,
                        sizes=cfg.batch_sizes, max_instances=min(MAX_INSTANCES, cfg.run_threads))
            if cfg.warm:
                await loop.run_in_executor(self.executor, b.warm, max(1, cfg.warmup_runs))
            if b.buckets == [1]:
                log.info("model '%s': no batch size but 1 (none cheaper per row, or as "
                         "given); serving it without batching", name)
                continue
            b.start()
            self.batchers[name] = b

    def _batch_observer(self, name):
        def observe(rows: int, requests: int):
            self.metrics.batch_size.labels(name).observe(rows)
            self.metrics.batch_requests.labels(name).observe(requests)
        return observe

    # -- helpers ----------------------------------------------------------------------------
    def _model(self, request: Request) -> ServedModel:
        name = request.path_params["model"]
        m = self.models.get(name)
        if m is None:
            raise RequestError(f"unknown model '{name}'; served: {sorted(self.models)}", 404)
        m.check_version(request.path_params.get("version"))
        return m

    async def _body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        too_big = False
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                raise RequestError("Content-Length is not a number") from None
        # an oversized body is read and dropped (up to DRAIN_BYTES more) so that the client,
        # still sending, gets the 413 answer instead of a reset connection
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            too_big = too_big or size > limit
            if too_big:
                if size > limit + DRAIN_BYTES:
                    break
                continue
            chunks.append(chunk)
        if too_big:
            raise RequestError(f"the request body is {declared or 'over ' + str(size)} bytes; "
                               f"the limit is {limit}", 413)
        body = b"".join(chunks)
        enc = request.headers.get("content-encoding", "").strip().lower()
        if enc in ("gzip", "deflate"):
            d = zlib.decompressobj(16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
            try:
                body = d.decompress(body, limit + 1)
            except zlib.error as e:
                raise RequestError(f"the {enc} body does not decompress: {e}") from None
            if len(body) > limit or d.unconsumed_tail:
                raise RequestError(f"the decompressed body exceeds the limit of {limit} bytes",
                                   413)
        elif enc not in ("", "identity"):
            raise RequestError(f"unsupported Content-Encoding {enc!r}", 415)
        return body

    # -- routes -----------------------------------------------------------------------------
    async def live(self, request):
        return JSONResponse({"live": True})

    async def ready_route(self, request):
        return JSONResponse({"ready": self.ready}, status_code=200 if self.ready else 503)

    async def server_metadata(self, request):
        return JSONResponse({"name": "galaxir", "version": __version__,
                             "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request):
        return JSONResponse(self._model(request).metadata())

    async def model_ready(self, request):
        self._model(request)
        return JSONResponse({"ready": self.ready}, status_code=200 if self.ready else 503)

    async def metrics_route(self, request):
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def infer(self, request: Request):
        name = request.path_params["model"]
        t0 = time.perf_counter()
        self.metrics.inflight.inc()
        status = 500
        try:
            resp = await self._infer(request)
            status = resp.status_code
            return resp
        except RequestError as e:
            status = e.status
            raise
        except InputValidationError:
            status = 400
            raise
        finally:
            self.metrics.inflight.dec()
            label = name if name in self.models else "_unknown"
            self.metrics.requests.labels(label, "infer", str(status)).inc()
            if status == 200:
                self.metrics.latency.labels(label).observe(time.perf_counter() - t0)

    async def _infer(self, request: Request) -> Response:
        m = self._model(request)
        hl = request.headers.get("inference-header-content-length")
        try:
            header_length = int(hl) if hl is not None else None
        except ValueError:
            raise RequestError("Inference-Header-Content-Length is not a number") from None
        req = decode_request(await self._body(request), header_length)
        wanted = [n for n, _ in req.outputs] if req.outputs is not None else None
        if wanted is not None:
            m.check_outputs(wanted)
        m.exe.validate(req.inputs)  # shapes/dtypes: 400 before the request joins a batch
        batcher = self.batchers.get(m.name)
        if batcher is not None:
            out = await batcher.submit(req.inputs, wanted)
        else:
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self.executor, m.run, req.inputs, wanted)
        if req.outputs is None:
            pick = [(n, out[n], req.binary_output) for n in m.output_names]
        else:
            pick = [(n, out[n], b) for n, b in req.outputs]
        body, header_len = encode_response(m.name, m.version, req.id, pick)
        headers = {}
        if header_len is not None:
            headers["Inference-Header-Content-Length"] = str(header_len)
            media = "application/octet-stream"
        else:
            media = "application/json"
        return Response(body, media_type=media, headers=headers)


def create_app(models: dict[str, ServedModel], config: ServeConfig | None = None) -> Starlette:
    """The ASGI app serving ``models`` (name -> ServedModel) under ``config``."""
    config = config or ServeConfig()
    a = _App(models, config)
    M = "/v2/models/{model}"
    V = M + "/versions/{version}"
    routes = [
        Route("/v2/health/live", a.live), Route("/v2/health/ready", a.ready_route),
        Route("/v2", a.server_metadata), Route("/v2/", a.server_metadata),
        Route(M, a.model_metadata), Route(V, a.model_metadata),
        Route(M + "/ready", a.model_ready), Route(V + "/ready", a.model_ready),
        Route(M + "/infer", a.infer, methods=["POST"]),
        Route(V + "/infer", a.infer, methods=["POST"]),
        Route("/metrics", a.metrics_route),
    ]

    async def on_request_error(request, exc: RequestError):
        return _error(str(exc), exc.status)

    async def on_galaxir_error(request, exc: GalaxirError):
        status = 400 if isinstance(exc, InputValidationError) else 500
        if isinstance(exc, ExecutionError):
            log.warning("model run failed: %s", exc)
        return _error(str(exc), status)

    async def on_http(request, exc):
        return _error(getattr(exc, "detail", "") or "not found", exc.status_code)

    async def on_unexpected(request, exc: Exception):
        log.exception("unexpected error serving %s", request.url.path)
        return _error(f"internal error: {type(exc).__name__}", 500)

    from starlette.exceptions import HTTPException
    app = Starlette(routes=routes, lifespan=a.lifespan, exception_handlers={
        RequestError: on_request_error, GalaxirError: on_galaxir_error,
        HTTPException: on_http, Exception: on_unexpected})
    app.state.galaxir = a
    if config.token:
        app.add_middleware(_BearerAuth, token=config.token)
    return app


class _BearerAuth:
    """ASGI middleware: every route but /v2/health/* needs ``Authorization: Bearer T``."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not scope["path"].startswith("/v2/health/"):
            auth = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                body = json.dumps({"error": "missing or wrong bearer token"}).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="galaxir"'),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
