"""Where a request's CPU time goes in split serving: py-spy samples every server process under load.

Starts `mmserve serve --frontends N` (onnxruntime, the bundled digits-vit), drives /classify with one
image per request at --concurrency connections (the client of benchmarks/bench_server.py, in its own
process), and meanwhile samples each frontend and the engine with py-spy (`pip install py-spy`; needs
ptrace rights, e.g. root). Each sample is filed under the first category its stack matches, from the
innermost frame outwards, and turned into microseconds of CPU per request:

    sampled CPU seconds in a category / requests answered in the same window

    python benchmarks/profile_server.py [--frontends 1] [--concurrency 64] [--duration 10]
        [--upload multipart|raw] [--image-px 64] [--image-format PNG|JPEG]

Only samples of the thread holding the GIL are counted (`py-spy --gil`): that is the Python CPU time
of the process, the resource the split spreads over processes. Without `--gil` py-spy also counted
threads blocked in lock and condition waits (the batcher waiting for work, idle worker threads), which
is not CPU. Native code that releases the GIL (onnxruntime's run, most of PIL's decoding) is therefore
under-counted; the engine's model time is better read from `mmserve_batch_duration_seconds`. On a shared
machine the figures are noisy; the split between categories is the robust part.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_server import _http_request, classify_inputs, drive, free_port, multipart  # noqa: E402

# (category, pattern on "function (file:line)"), tried from the innermost frame outwards.
CATEGORIES = [
    ("image decode + preprocess / top-k (PIL, numpy, tasks)", re.compile(r"PIL/|image_classification\.py|preprocess\.py")),
    ("multipart parsing", re.compile(r"formparsers\.py|/multipart/|python_multipart")),
    ("engine transport (zmq, msgspec)", re.compile(r"/zmq/|engine_client\.py|wire\.py|engine\.py")),
    ("model run (onnxruntime / torch)", re.compile(r"onnxruntime|torch/|exporters/onnx")),
    ("batching + post-processing", re.compile(r"batching\.py|continuous\.py|classify\.py")),
    ("JSON encode/decode", re.compile(r"json/|orjson|responses\.py")),
    ("metrics (prometheus)", re.compile(r"prometheus_client")),
    ("HTTP protocol (uvicorn, httptools)", re.compile(r"uvicorn/|httptools")),
    ("routing, middleware, validation (starlette, fastapi, server)", re.compile(r"starlette/|fastapi/|server/")),
    ("thread hand-off (anyio worker threads, locks)", re.compile(r"anyio/|threading\.py|concurrent/")),
    ("asyncio event loop", re.compile(r"asyncio/|uvloop")),
]


def categorise(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, pattern in CATEGORIES:
            if pattern.search(frame):
                return name
    return "other"


def record(pid: int, seconds: float, out: Path, rate: int) -> subprocess.Popen:
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
                             str(rate), "--format", "raw", "--output", str(out), "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frontends", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--upload", choices=["multipart", "raw"], default="multipart")
    parser.add_argument("--image-px", type=int, default=64)
    parser.add_argument("--image-format", choices=["PNG", "JPEG"], default="PNG")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    if args.frontends < 1:
        raise SystemExit("--frontends must be at least 1 (this profiles the split server)")

    port = free_port()
    images = classify_inputs(256, args.image_px, args.image_format)
    if args.upload == "raw":
        requests = [_http_request("/classify", img, f"image/{args.image_format.lower()}", port) for img in images]
    else:
        requests = [_http_request("/classify", *multipart([img]), port) for img in images]
    workdir = Path(tempfile.mkdtemp(prefix="mmserve-profile-"))
    log = open(workdir / "server.log", "w+")
    env = {**os.environ, "MMSERVE_ONNX_CACHE_DIR": str(REPO / "build" / "onnx-cache")}
    proc = subprocess.Popen([sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--classifier", str(REPO / "models" / "digits-vit"), "--backend", args.backend,
                             "--frontends", str(args.frontends), "--threads", "1", "--workers", "1"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        import httpx

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"server exited:\n{(workdir / 'server.log').read_text()}")
            time.sleep(0.2)
        text = (workdir / "server.log").read_text()
        engine = [int(p) for p in re.findall(r"engine process (\d+) started", text)][-1]
        frontends = [int(p) for p in re.findall(r"Started server process \[(\d+)\]", text)]
        drive(port, requests, args.concurrency, 3.0, 1.0)  # warm-up
        pids = {"engine": engine, **{f"frontend {i + 1}": pid for i, pid in enumerate(frontends)}}
        spies = {name: record(pid, args.duration, workdir / f"{pid}.txt", args.rate) for name, pid in pids.items()}
        load: dict = {}
        worker = threading.Thread(target=lambda: load.update(drive(port, requests, args.concurrency,
                                                                   args.duration, 0.0)))
        worker.start()
        worker.join()
        for spy in spies.values():
            spy.wait(60)
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()

    answered = load["requests"]
    print(f"--frontends {args.frontends}, {args.backend}, upload {args.upload} ({args.image_px} px "
          f"{args.image_format}), c={args.concurrency}: {answered} requests in {args.duration:.0f} s "
          f"({load['throughput_rps']:.0f}/s), errors {load['errors']}, load average {os.getloadavg()}")
    print(f"\n{'process / category':66s} {'us per request':>15s} {'share':>7s}")
    for name, pid in pids.items():
        path = workdir / f"{pid}.txt"
        if not path.is_file():
            print(f"{name}: no samples (py-spy failed; ptrace rights?)")
            continue
        counts: collections.Counter = collections.Counter()
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if stack and n.isdigit():
                counts[categorise(stack)] += int(n)
        total = sum(counts.values())
        us = lambda n: n / args.rate / answered * 1e6  # noqa: E731
        print(f"{name} (pid {pid}): {us(total):.0f} us of CPU per request")
        for category, n in counts.most_common():
            print(f"  {category:64s} {us(n):15.0f} {n / total:7.1%}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
