"""Scale-out on Ray (the ``ray`` extra): a Ray Serve deployment and a Ray Data
batch-inference helper.  docs/serving.md shows the multi-node route.

- ``deployment(path, ...)``: a Ray Serve application; each replica loads the model file
  (.gxm, .onnx, textual IR) and compiles it once.  Replicas, autoscaling and resources
  come from Ray's own deployment options (passed through).  Replicas answer KServe v2
  infer requests over Ray's HTTP proxy (``POST <route>/v2/models/<name>/infer``, JSON or
  binary tensors, the codec of galaxir.serve.protocol) and ``handle.run.remote(feeds)``.
- ``map_batches(dataset, path, ...)``: ``dataset.map_batches`` with one compiled
  executable per actor (``Predictor``), the model's outputs added as columns.

Each replica or actor compiles for its own machine's CPU (object code never travels);
with ``cache_dir`` on a shared disk the compile cache is shared too."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def _require_ray():
    try:
        import ray  # noqa: F401
    except ImportError as e:
        from ..errors import GalaxirError
        raise GalaxirError("galaxir.integrations.ray needs the ray extra "
                           "(pip install 'ray[serve,data]')") from e


def _compile(path: str, target: str, num_threads: int | None, options: Mapping[str, Any]):
    import galaxir as gx
    opts = dict(options)
    if num_threads is not None:
        opts["num_threads"] = num_threads
    return gx.compile(gx.import_model(str(path)), target=target, **opts)


class Predictor:
    """A Ray Data callable class: compiles the model once per actor, then maps a numpy
    batch ``{column: array}`` to the same batch plus one column per model output.
    ``columns`` maps model input names to batch columns (default: the same names)."""

    def __init__(self, path: str, target: str = "cpu", columns: Mapping[str, str] | None = None,
                 outputs: Sequence[str] | None = None, num_threads: int | None = None,
                 compile_options: Mapping[str, Any] | None = None):
        self.exe = _compile(path, target, num_threads, compile_options or {})
        self.columns = dict(columns or {})
        self.outputs = list(outputs) if outputs is not None else None

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {}
        for info in self.exe.inputs:
            col = self.columns.get(info.name, info.name)
            if col not in batch:
                from ..errors import InputValidationError
                raise InputValidationError(f"the batch has no column '{col}' for model input "
                                           f"'{info.name}'; columns: {sorted(batch)}")
            x = np.asarray(batch[col])
            if x.dtype == object:  # ragged tensor columns arrive as object arrays
                x = np.stack(list(x))
            feeds[info.name] = x.astype(info.dtype, copy=False) if info.dtype is not None else x
        out = dict(batch)
        out.update(self.exe.run(feeds, outputs=self.outputs))
        return out


def map_batches(dataset, path: str, *, target: str = "cpu", columns=None, outputs=None,
                num_threads: int | None = 1, batch_size: int = 32, concurrency: int = 1,
                compile_options: Mapping[str, Any] | None = None, **ray_options):
    """``dataset.map_batches`` running the model on an actor pool of ``concurrency`` actors,
    each holding one compiled executable.  ``num_threads`` (cpu) per actor defaults to 1:
    Ray gives each actor its own CPU (``num_cpus`` in ``ray_options``)."""
    _require_ray()
    return dataset.map_batches(
        Predictor, batch_size=batch_size, batch_format="numpy", concurrency=concurrency,
        fn_constructor_kwargs=dict(path=str(path), target=target, columns=columns,
                                   outputs=outputs, num_threads=num_threads,
                                   compile_options=compile_options),
        **ray_options)


class ModelReplica:
    """The body of the Ray Serve deployment: one compiled executable per replica."""

    def __init__(self, path: str, name: str, target: str = "cpu", num_threads: int | None = None,
                 compile_options: Mapping[str, Any] | None = None):
        from ..serve.models import ServedModel
        self.model = ServedModel(name, _compile(path, target, num_threads, compile_options or {}))

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> dict:
        """For ``handle.run.remote(feeds)``: ``exe.run`` on this replica."""
        return self.model.run(dict(feeds), outputs)

    def metadata(self) -> dict:
        return self.model.metadata()

    async def __call__(self, request):
        """KServe v2 over Ray's HTTP proxy: GET .../v2/models/NAME (metadata) and POST
        .../v2/models/NAME/infer; errors answer 4xx/5xx with a JSON message."""
        from starlette.responses import JSONResponse, Response

        from ..errors import GalaxirError, InputValidationError
        from ..serve.protocol import RequestError, decode_request, encode_response
        m = self.model
        try:
            path = request.url.path.rstrip("/")
            if request.method == "GET" and path.endswith(f"/v2/models/{m.name}"):
                return JSONResponse(m.metadata())
            if request.method != "POST" or not path.endswith(f"/v2/models/{m.name}/infer"):
                raise RequestError(f"this replica serves GET/POST /v2/models/{m.name}[/infer], "
                                   f"not {request.method} {path}", 404)
            hl = request.headers.get("inference-header-content-length")
            req = decode_request(await request.body(), int(hl) if hl else None)
            wanted = [n for n, _ in req.outputs] if req.outputs is not None else None
            if wanted is not None:
                m.check_outputs(wanted)
            out = m.run(req.inputs, wanted)
            pick = [(n, out[n], req.binary_output) for n in m.output_names] \
                if req.outputs is None else [(n, out[n], b) for n, b in req.outputs]
            body, header_len = encode_response(m.name, m.version, req.id, pick)
        except RequestError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except (InputValidationError, ValueError) as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except GalaxirError as e:
            return JSONResponse({"error": str(e)}, status_code=500)
        headers = {} if header_len is None else {"Inference-Header-Content-Length": str(header_len)}
        return Response(body, headers=headers, media_type="application/octet-stream"
                        if header_len is not None else "application/json")


def deployment(path: str, name: str | None = None, *, target: str = "cpu",
               num_threads: int | None = None, compile_options: Mapping[str, Any] | None = None,
               **deployment_options):
    """A bound Ray Serve application serving ``path`` as model ``name``; pass it to
    ``ray.serve.run``.  ``deployment_options`` are Ray's (``num_replicas``,
    ``autoscaling_config``, ``ray_actor_options``, ...)."""
    _require_ray()
    from pathlib import Path

    from ray import serve
    name = name or Path(path).name.split(".")[0]
    dep = serve.deployment(ModelReplica, name=f"galaxir-{name}", **deployment_options)
    return dep.bind(str(path), name, target, num_threads, dict(compile_options or {}))
