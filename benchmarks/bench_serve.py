"""Serving throughput and latency over loopback (bounded in count and time).

Starts ``galaxir serve`` in a subprocess (so the clients' Python does not share the
server's interpreter), once without and once with dynamic batching, and drives it with
1, 4 and 16 concurrent tritonclient.http clients (binary tensors); compares with direct
``exe.run`` calls in one process; measures the server's RSS before and after 5,000
requests.  Prints one table.

Both servers run at once (each warms and times its batch sizes before it is ready; their
log lines are printed) and the three modes are measured in interleaved rounds, so that
the load other jobs put on a shared machine hits each mode alike; the load average is
printed with every row.

    python benchmarks/bench_serve.py [--model cifar|alexnet|squeezenet] [--requests 400]
        [--rounds 2] [--clients 1,4,16] [--rss-requests 5000] [--max-batch 16]
        [--max-delay-ms 2] [--batch-instances K] [--batch-sizes 1,2,4,8,16]
        [--warmup-runs N]

With no --batch-instances the batching server chooses it at warm-up (the default of
``galaxir serve``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's galaxir, as in the server subprocess

import galaxir as gx  # noqa: E402
from galaxir.ir import GraphBuilder, tensor  # noqa: E402


def cifar_cnn(seed: int = 0):
    """A CIFAR-size CNN with a symbolic batch: three 3x3 convs (the last two strided),
    global mean, a dense layer."""
    rng = np.random.default_rng(seed)
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 3, 32, 32))

    def conv(h, cin, cout, stride):
        w = gb.constant((rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32))
        b = gb.constant(np.zeros(cout, np.float32))
        return gb.relu(gb.conv(h, w, b, pads=(1, 1, 1, 1), strides=(stride, stride)))

    h = conv(conv(conv(x, 3, 16, 1), 16, 32, 2), 32, 64, 2)
    h = gb.reduce_mean(h, gb.constant(np.array([2, 3], np.int64)), keepdims=0)
    w = gb.constant((rng.standard_normal((64, 10)) / 8).astype(np.float32))
    gb.output(gb.add(gb.matmul(h, w), gb.constant(np.zeros(10, np.float32))), "logits")
    return gb.module()


def zoo_cnn(name: str):
    """A light-zoo CNN with its batch dim made symbolic (graph inputs/outputs, and a
    Reshape's constant target shape [1, K] becomes [-1, K])."""
    import onnx
    from onnx import numpy_helper

    from galaxir.testing import zoo
    m = onnx.load(str(zoo.model_path(name)))
    inits = {i.name for i in m.graph.initializer}
    for v in list(m.graph.input) + list(m.graph.output):
        if v.name not in inits:
            v.type.tensor_type.shape.dim[0].dim_param = "N"
    del m.graph.value_info[:]
    shapes = {n.input[1] for n in m.graph.node if n.op_type == "Reshape"}
    for i, t in enumerate(m.graph.initializer):
        if t.name in shapes:
            a = numpy_helper.to_array(t).copy()
            if a.size and a[0] == 1:
                a[0] = -1
                m.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, t.name))
    return gx.import_model(m)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    def __init__(self, path: Path, max_batch: int, delay_ms: float, run_threads: int = 4,
                 extra: list[str] | None = None):
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.p = subprocess.Popen(
            [sys.executable, "-m", "galaxir.cli", "serve", f"m={path}", "--port", "0",
             "--run-threads", str(run_threads), "--max-batch", str(max_batch),
             "--max-delay-ms", str(delay_ms), "--log-level", "info"] + (extra or []),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.url = None
        self.lines: list[str] = []  # the server's own lines (warm-up, batch sizes)
        deadline = time.time() + 600
        while self.url is None and time.time() < deadline:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("the server exited")
            if "listening on" in line:
                self.url = line.split("listening on ")[1].split()[0]
        threading.Thread(target=self._drain, daemon=True).start()
        while time.time() < deadline:  # ready once every batch size is compiled
            try:
                urllib.request.urlopen(self.url + "/v2/health/ready", timeout=2)
                break
            except OSError:
                time.sleep(0.2)

    def _drain(self):
        for line in self.p.stdout:
            if line.startswith("galaxir serve:"):
                self.lines.append(line.rstrip())

    def stop(self):
        self.p.terminate()
        self.p.wait(60)


def drive(url: str, x_for, clients: int, requests: int, time_limit: float, name: str = "x"):
    """``requests`` infer calls spread over ``clients`` threads (stops at time_limit):
    (throughput req/s, p50 ms, p99 ms, errors)."""
    import tritonclient.http as httpclient
    lat: list[float] = []
    errors = [0]
    stop_at = time.perf_counter() + time_limit
    per = max(1, requests // clients)

    def work(c):
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        x = x_for(c)
        inp = httpclient.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        for _ in range(per):
            if time.perf_counter() > stop_at:
                break
            t = time.perf_counter()
            try:
                client.infer("m", [inp])
            except Exception:
                errors[0] += 1
                continue
            lat.append(time.perf_counter() - t)
        client.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, range(clients)))
    wall = time.perf_counter() - t0
    lat.sort()
    if not lat:
        return 0.0, float("nan"), float("nan"), errors[0]
    return (len(lat) / wall, 1e3 * lat[len(lat) // 2],
            1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], errors[0])


def direct(exe, x_for, clients: int, requests: int, time_limit: float, name: str = "x"):
    """The same load as direct exe.run calls from ``clients`` threads in this process."""
    lat: list[float] = []
    stop_at = time.perf_counter() + time_limit
    per = max(1, requests // clients)

    def work(c):
        x = x_for(c)
        for _ in range(per):
            if time.perf_counter() > stop_at:
                break
            t = time.perf_counter()
            exe.run({name: x})
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, range(clients)))
    wall = time.perf_counter() - t0
    lat.sort()
    return len(lat) / wall, 1e3 * lat[len(lat) // 2], 1e3 * lat[int(0.99 * (len(lat) - 1))], 0


def _row(mode, clients, r):
    print(f"{mode:<22}{clients:>8}{r[0]:>10.1f}{r[1]:>10.2f}{r[2]:>10.2f}{r[3]:>8}"
          f"{os.getloadavg()[0]:>7.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["cifar", "alexnet", "squeezenet"], default="cifar")
    ap.add_argument("--requests", type=int, default=400, help="requests per measurement")
    ap.add_argument("--time-limit", type=float, default=30.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=2,
                    help="interleaved rounds (direct, server, server+batching) per client count")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--rss-requests", type=int, default=5000)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument("--batch-instances", type=int, default=None,
                    help="batches of the model running at once (default: the server chooses "
                         "at warm-up)")
    ap.add_argument("--batch-sizes", help="the batching server's --batch-sizes (default: "
                                          "powers of two up to --max-batch)")
    ap.add_argument("--warmup-runs", type=int, default=None, help="the servers' --warmup-runs")
    args = ap.parse_args()
    extra = ["--warmup-runs", str(args.warmup_runs)] if args.warmup_runs else []
    batch_extra = list(extra)
    if args.batch_instances is not None:
        batch_extra += ["--batch-instances", str(args.batch_instances)]
    if args.batch_sizes:
        batch_extra += ["--batch-sizes", args.batch_sizes]
        args.max_batch = max(int(b) for b in args.batch_sizes.split(","))
    module = cifar_cnn() if args.model == "cifar" else \
        zoo_cnn("bvlc_alexnet" if args.model == "alexnet" else args.model)
    shape = [d for d in module.graph.inputs[0].type.shape[1:]]
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal([1] + shape).astype(np.float32) for _ in range(16)]
    x_for = lambda c: xs[c % len(xs)]  # noqa: E731
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "m.gxm"
    gx.save(module, path)
    print(f"model {args.model}: input [1, {', '.join(map(str, shape))}]; cores "
          f"{len(os.sched_getaffinity(0))}; load {os.getloadavg()[0]:.1f}")
    exe = gx.compile(module, target="cpu")
    name = module.graph.input_names[0]
    exe.run({name: xs[0]})
    batched = f"server, batch<={args.max_batch}"
    servers = {"server, no batching": Server(path, 0, args.max_delay_ms, extra=extra)}
    servers[batched] = Server(path, args.max_batch, args.max_delay_ms, extra=batch_extra)
    for mode, srv in servers.items():
        for line in srv.lines:
            print(f"  [{mode}] {line}")
        drive(srv.url, x_for, 16, 4 * args.max_batch * 4, args.time_limit, name)  # warm
    print(f"{'mode':<22}{'clients':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'load':>7}")
    results: dict[tuple, list] = {}
    try:
        for clients in [int(c) for c in args.clients.split(",")]:
            for _ in range(args.rounds):  # interleaved: the machine's load hits every mode
                r = direct(exe, x_for, clients, args.requests, args.time_limit, name)
                results.setdefault(("direct", clients), []).append(r[0])
                _row("direct exe.run", clients, r)
                for mode, srv in servers.items():
                    r = drive(srv.url, x_for, clients, args.requests, args.time_limit, name)
                    results.setdefault((mode, clients), []).append(r[0])
                    _row(mode, clients, r)
            ratios = [b / a for a, b in zip(results[("server, no batching", clients)],
                                            results[(batched, clients)]) if a]
            if ratios:
                print(f"  batching / no batching at {clients} clients: per round "
                      f"{', '.join(f'{q:.2f}' for q in ratios)}x (median {np.median(ratios):.2f}x)")
        srv = servers[batched]
        if args.rss_requests:
            before = _rss_kb(srv.p.pid)
            t = time.perf_counter()
            r = drive(srv.url, x_for, 16, args.rss_requests, 10 * args.time_limit, name)
            after = _rss_kb(srv.p.pid)
            print(f"RSS over {args.rss_requests} more requests ({time.perf_counter() - t:.0f} s, "
                  f"{r[3]} errors): {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB "
                  f"({100 * (after - before) / before:+.1f}%)")
    finally:
        for srv in servers.values():
            srv.stop()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
