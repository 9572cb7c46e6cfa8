"""What Ray Serve costs and gives: `mmserve serve` against the same app on Ray Serve, side by side.

In ONE run, /classify on the bundled digits-vit (PNG uploads, onnxruntime unless told otherwise),
with 1 and with 8 images per request, closed-loop load at --concurrency connections:

    plain       `mmserve serve` (split serving: frontend process + engine process)
    ray-1       the Ray Serve application (server/ray_serve/), 1 replica of the model
    ray-2       2 replicas
    ray-2-mor5  2 replicas with Ray's default max_ongoing_requests (5) instead of mmserve's
                2 x max_batch_size: how much Ray's per-replica admission limit starves batching
    ray-2-sbatch 2 replicas batching with Ray's `@serve.batch` (same batch size and wait) instead of
                the project's dynamic batcher

All Ray variants are applications of one private Ray (loopback) started here, under route prefixes
(/r1, /r2, /r2m5, /r2sb) on one Serve HTTP port. Targets are measured in interleaved rounds (every target
once per round, the order rotating) and the medians reported, so load from other processes on a
shared machine hits all alike; ratios are throughput / plain's in the same run.

Ray's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1: user code on the replica's main
loop, gRPC between proxy and replicas, direct ingress, ...) applies to a whole Ray cluster, so it is
a second run (`--throughput-optimized`); compare its ray/plain ratios with a run without it.

    nice -n 5 python benchmarks/bench_ray.py [--duration 4] [--rounds 3] [--concurrency 32]
        [--items 1,8] [--backend onnxruntime|torch] [--throughput-optimized] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_server import (  # noqa: E402  (the load generator and inputs of the plain-server benchmark)
    _http_request,
    classify_inputs,
    drive,
    free_port,
    groups,
    multipart,
    start_server,
    stop_server,
)

RAY_APPS = {  # name -> (route prefix, replicas, max_ongoing_requests or None for mmserve's default, batching)
    "ray-1": ("/r1", 1, None, "mmserve"),
    "ray-2": ("/r2", 2, None, "mmserve"),
    "ray-2-mor5": ("/r2m5", 2, 5, "mmserve"),
    "ray-2-sbatch": ("/r2sb", 2, None, "serve.batch"),
}


def serve_batch_model_server(max_batch_size: int, wait_s: float) -> type:
    """ModelServer with Ray's `@serve.batch` in place of the project's dynamic batcher: calls (one
    per HTTP request, each with its rows) are gathered up to `max_batch_size` calls or `wait_s`,
    their rows run as one model batch per explain flag, and the results split back per call."""
    import asyncio

    import numpy as np
    from ray import serve

    from server.ray_serve.deployments import ModelServer

    class ServeBatchModelServer(ModelServer):
        async def submit(self, items, key, request_id):
            return await self._batched((items, key))

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s)
        async def _batched(self, calls: list) -> list:
            out: list = [None] * len(calls)
            for key in {k for _, k in calls}:
                idx = [i for i, (_, k) in enumerate(calls) if k == key]
                rows = np.concatenate([calls[i][0] for i in idx])
                results = await asyncio.to_thread(self.served._run_batch, key, list(rows))
                start = 0
                for i in idx:
                    n = len(calls[i][0])
                    out[i] = (results[start:start + n], None)
                    start += n
            return out

    return ServeBatchModelServer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per target per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--items", default="1,8", help="images per request, comma-separated")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--throughput-optimized", action="store_true", help="RAY_SERVE_THROUGHPUT_OPTIMIZED=1")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    # what bench_server.start_server reads
    args.classifier, args.translator = REPO / "models" / "digits-vit", None
    args.threads, args.workers, args.preprocess_processes = 1, 2, 0
    args.onnx_cache_dir = REPO / "build" / "onnx-cache"
    return args


def start_ray_apps(args: argparse.Namespace, port: int) -> None:
    if args.throughput_optimized:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    from ray import serve

    from server.ray_serve import cluster
    from server.ray_serve.app import RayAppArgs, build_application, settings_args
    from server.settings import ServerSettings

    cluster.start_or_join(None, num_cpus=16)  # logical CPUs, for placement: every app's replicas fit
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = ServerSettings(classifier=args.classifier, backend=args.backend, max_batch_size=args.max_batch_size,
                              max_queue_delay_ms=args.max_queue_delay_ms, intra_op_threads=args.threads,
                              workers=args.workers, onnx_cache_dir=args.onnx_cache_dir, log_level="warning")
    for name, (prefix, replicas, ongoing, batching) in RAY_APPS.items():
        app_args = RayAppArgs(settings=settings_args(settings), replicas=replicas, max_ongoing_requests=ongoing)
        model_server = (serve_batch_model_server(args.max_batch_size, args.max_queue_delay_ms / 1000)
                        if batching == "serve.batch" else None)
        serve.run(build_application(app_args, model_server), name=name, route_prefix=prefix, blocking=False)
    import httpx

    deadline = time.monotonic() + 600
    for prefix, *_ in RAY_APPS.values():
        while httpx.get(f"http://127.0.0.1:{port}{prefix}/readyz", timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit(f"{prefix} not ready after 600 s")
            time.sleep(0.5)


def main() -> None:
    args = parse_args()
    images = classify_inputs(64)
    plain_port, ray_port = free_port(), free_port()
    plain, load_s = start_server(args, plain_port)
    print(f"plain server ready in {load_s:.1f} s", flush=True)
    targets = {"plain": (plain_port, "")} | {n: (ray_port, p) for n, (p, *_) in RAY_APPS.items()}
    results: dict = {}
    try:
        t0 = time.perf_counter()
        start_ray_apps(args, ray_port)
        print(f"Ray apps ready in {time.perf_counter() - t0:.1f} s "
              f"(throughput-optimized: {args.throughput_optimized})", flush=True)
        for items in [int(x) for x in args.items.split(",")]:
            rounds: dict[str, list[dict]] = {name: [] for name in targets}
            for r in range(args.rounds):
                order = list(targets)[r % len(targets):] + list(targets)[:r % len(targets)]
                for name in order:
                    port, prefix = targets[name]
                    reqs = []
                    for group in groups(images, items):
                        body, ctype = multipart(group)
                        reqs.append(_http_request(f"{prefix}/classify", body, ctype, port))
                    rounds[name].append(drive(port, reqs, args.concurrency, args.duration, warmup=0.5))
            plain_rps = statistics.median(x["throughput_rps"] for x in rounds["plain"])
            print(f"\n/classify, {items} image(s) per request, {args.concurrency} connections, "
                  f"median of {args.rounds} rounds x {args.duration:.0f} s, load average {os.getloadavg()[0]:.1f}")
            print(f"  {'target':<12} {'req/s':>8} {'images/s':>9} {'x plain':>8} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'errors':>7}")
            for name, runs in rounds.items():
                rps = statistics.median(x["throughput_rps"] for x in runs)
                p50 = statistics.median(x["p50_ms"] for x in runs)
                p99 = statistics.median(x["p99_ms"] for x in runs)
                errors = sum(x["errors"] for x in runs)
                print(f"  {name:<12} {rps:8.1f} {rps * items:9.1f} {rps / plain_rps:8.2f} {p50:8.1f} {p99:8.1f} "
                      f"{errors:7d}")
                results.setdefault(str(items), {})[name] = {"rps": rps, "ratio": rps / plain_rps, "p50_ms": p50,
                                                            "p99_ms": p99, "errors": errors}
    finally:
        from server.ray_serve import cluster

        try:
            from ray import serve

            serve.shutdown()
        except Exception:
            pass
        cluster.stop()
        stop_server(plain)
    if args.json:
        args.json.write_text(json.dumps({"throughput_optimized": args.throughput_optimized, "results": results},
                                        indent=2))


if __name__ == "__main__":
    main()
