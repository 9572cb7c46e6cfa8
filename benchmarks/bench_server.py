"""Serving throughput and latency of `mmserve serve` on loopback, against the offline ceiling.

In ONE run, for /classify (bundled digits-vit, PNG uploads) and /translate (bundled numbers-en-de,
greedy), with --items-per-request images or texts in each request (default 1: every item pays for a
whole HTTP request, the hardest case for a server on 2 cores):

    light load   1 connection, closed loop              -> p50 / p99 latency
    heavy load   --concurrency connections, closed loop -> throughput at saturation, p50 / p99
    ceiling      the same backend in this process, offline, batches of --max-batch-size, same inputs:
                 classify: `backend_run` (the model alone) and `pipeline` (decode + preprocess + run:
                 the per-image work the server does too; `pipeline_pool` with the server's
                 preprocessing processes when it uses them); translate: `translate` (decoding.translate:
                 tokenise + greedy + detokenise)
    ratio        server throughput at saturation / ceiling

The script starts the server (`python -m server`, --backend onnxruntime unless told otherwise) and
stops it at the end. Heavy load and ceiling are measured in interleaved rounds (server at saturation,
then the ceiling while the server idles) and medians are reported, so load from other processes on a
shared machine hits both alike; the load average is printed with the figures.

Keeping the client light (the machine has 2 cores the server needs): the load generator runs in its
own process, is a ~60-line asyncio HTTP/1.1 client over raw keep-alive sockets (no httpx/aiohttp
parsing), sends request bytes encoded once up front (multipart bodies and JSON included), and only
parses the status line and Content-Length of each answer. Its CPU time is measured and printed next
to the figures, so how much of the machine it took is visible rather than assumed.

    nice -n 5 python benchmarks/bench_server.py [--backend onnxruntime|torch] [--duration 8]
        [--rounds 3] [--concurrency 64] [--max-batch-size 32] [--threads 1] [--workers 1]
        [--preprocess-processes 0] [--items-per-request 1] [--only classify|translate] [--json out.json]
        [--frontends 0,1,2] [--upload multipart|raw] [--image-px 64] [--image-format PNG|JPEG] [--wrk]
        [--decode-lanes N]

`--threads N` is the server's `--threads`: on onnxruntime the translator decodes in N lanes of one
intra-op thread each (server/continuous.py); `--decode-lanes 1` gives the old split (one loop with N
intra-op threads). The lanes the server chose are read from /v1/models and printed. The translate
ceiling stays ONE offline loop with --threads intra-op threads, so with more than one lane the server
may beat it (ratios above 1).

`--frontends 0,1,2` measures one server per value in turn (0 = the in-process server, N = N HTTP
frontend processes + one engine process) and ends with a scaling table; the offline ceiling is
re-measured inside every server's rounds, so each ratio compares figures taken side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing as mp
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ------------------------------------------------------------------------------------- client process


def _http_request(path: str, body: bytes, content_type: str, port: int) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


async def _connection(port: int, requests: list[bytes], offset: int, stop_at: float, out: list, errors: list):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while time.perf_counter() < stop_at:
            payload = requests[i % len(requests)]
            i += 1
            t0 = time.perf_counter()
            writer.write(payload)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            elapsed = time.perf_counter() - t0
            if status_line[9:12] == b"200":
                out.append(elapsed)
            else:
                errors.append(status_line[9:12].decode())
    finally:
        writer.close()


def _load_worker(port: int, requests: list[bytes], concurrency: int, duration: float, warmup: float, queue) -> None:
    """Runs in its own process: warm up, then drive `concurrency` closed-loop connections."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main():
        if warmup > 0:
            sink: list = []
            end = time.perf_counter() + warmup
            await asyncio.gather(*(_connection(port, requests, i, end, sink, []) for i in range(concurrency)))
        latencies: list = []
        errors: list = []
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(_connection(port, requests, i * 7, t0 + duration, latencies, errors)
                               for i in range(concurrency)))
        wall = time.perf_counter() - t0
        return latencies, errors, wall, time.process_time() - cpu0

    queue.put(asyncio.run(main()))


def drive(port: int, requests: list[bytes], concurrency: int, duration: float, warmup: float) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load_worker, args=(port, requests, concurrency, duration, warmup, queue))
    proc.start()
    latencies, errors, wall, cpu = queue.get()
    proc.join()
    queue.close()
    queue.join_thread()
    lat = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "error_codes": sorted(set(errors)),
        "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "client_cpu_share": cpu / wall,  # CPU seconds per wall second of the client process (of 2 cores)
    }


def wrk_throughput(port: int, request: bytes, concurrency: int, duration: float) -> dict | None:
    """The same saturated load from `wrk` (a C load generator, Debian package `wrk`) as a cross-check
    of the project's client: one of the workload's requests, repeated. None when wrk is not installed."""
    import re
    import shutil
    import tempfile

    if shutil.which("wrk") is None:
        return None
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    path = lines[0].split()[1]
    content_type = next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("content-type:"))
    with tempfile.NamedTemporaryFile(suffix=".body") as f:
        f.write(body)
        f.flush()
        env = {**os.environ, "MMSERVE_WRK_BODY": f.name, "MMSERVE_WRK_CONTENT_TYPE": content_type}
        out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, int(duration))}s", "--latency",
                              "-s", str(REPO / "benchmarks" / "wrk_post.lua"), f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, text=True, env=env, timeout=duration + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {"throughput_rps": float(rps.group(1)) if rps else float("nan"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan")}


# ------------------------------------------------------------------------------------- server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port), "--backend", args.backend,
           "--max-batch-size", str(args.max_batch_size), "--max-queue-delay-ms", str(args.max_queue_delay_ms),
           "--threads", str(args.threads), "--workers", str(args.workers), "--log-level", "warning",
           "--preprocess-processes", str(args.preprocess_processes)]
    if args.server_frontends is not None:
        cmd += ["--frontends", str(args.server_frontends)]
    if args.decode_lanes is not None:
        cmd += ["--decode-lanes", str(args.decode_lanes)]
    if args.classifier:
        cmd += ["--classifier", str(args.classifier)]
    if args.translator:
        cmd += ["--translator", str(args.translator)]
    env = {**os.environ, "MMSERVE_ONNX_CACHE_DIR": str(args.onnx_cache_dir)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 600:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server not ready after 600 s")


def translator_lanes(port: int) -> Optional[tuple[int, int]]:
    """(decode lanes, intra-op threads per lane) of the served translator, from /v1/models."""
    import httpx

    for model in httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["models"]:
        extra = model.get("extra") or {}
        if model.get("task") == "translation" and "decode_lanes" in extra:
            return extra["decode_lanes"], extra["intra_op_threads_per_lane"]
    return None


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def batch_counters(port: int) -> dict[str, tuple[float, float]]:
    """Per model: (sum of rows over model runs, number of model runs) from /metrics."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    out: dict = {}
    for line in text.splitlines():
        for i, name in enumerate(("mmserve_batch_size_sum", "mmserve_batch_size_count")):
            if line.startswith(name + "{"):
                model = line.split('model="')[1].split('"')[0]
                out.setdefault(model, [0.0, 0.0])[i] = float(line.rsplit(" ", 1)[1])
    return {m: (v[0], v[1]) for m, v in out.items()}


def mean_rows(before: dict, after: dict) -> dict[str, float]:
    """Mean rows per model run between two /metrics snapshots (items per batch; decoder rows per step)."""
    out = {}
    for model, (rows, runs) in after.items():
        rows0, runs0 = before.get(model, (0.0, 0.0))
        if runs > runs0:
            out[model] = round((rows - rows0) / (runs - runs0), 2)
    return out


# ------------------------------------------------------------------------------------- workloads


def classify_inputs(n: int, px: int = 64, fmt: str = "PNG") -> list[bytes]:
    """Held-out digits drawn as px x px uploads (what a client would send): 64 px PNG by default;
    `--image-px 400 --image-format JPEG` for photo-sized files (tens of KB, a real decode)."""
    from PIL import Image

    from mmserve.checkpoints import read_config
    from mmserve.data.digits import split_from_config
    from mmserve.training.classifier import render_ink

    config = read_config(REPO / "models" / "digits-vit")
    _, test = split_from_config(config.dataset)
    images = []
    for grid in test.ink[:n]:
        buf = io.BytesIO()
        image = render_ink(grid, px, Image.Resampling.BILINEAR)
        image.convert("RGB").save(buf, fmt, quality=90) if fmt == "JPEG" else image.save(buf, fmt)
        images.append(buf.getvalue())
    return images


def translate_inputs(n: int, translator: Path) -> list[str]:
    from mmserve.checkpoints import read_config
    from mmserve.data.numbers import heldout_texts

    try:
        return [src for src, _ in heldout_texts(read_config(translator), n)]
    except Exception:  # a model without a regenerable dataset: random numbers in words
        from num2words import num2words

        rng = np.random.default_rng(0)
        return [num2words(int(x)) for x in rng.integers(0, 1_000_000, n)]


def multipart(images: list[bytes], boundary: str = "mmservebench") -> tuple[bytes, str]:
    """One multipart/form-data body with every image as a repeated `files` part."""
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"d.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    body = b"".join(head + image + b"\r\n" for image in images) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def groups(items: list, size: int) -> list[list]:
    """Consecutive groups of `size` items (the last partial group dropped): one request each."""
    return [items[i: i + size] for i in range(0, len(items) - size + 1, size)]


# ------------------------------------------------------------------------------------- offline ceiling


def _rate(fn, n_batches: int, batch: int, duration: float) -> float:
    """Items per second of fn(i) over batches i, cycled for `duration` seconds."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        for i in range(n_batches):
            fn(i)
            n += batch
    return n / (time.perf_counter() - t0)


class ClassifyCeiling:
    """The same backend offline, batches of max_batch_size: backend.run alone, and decode +
    preprocess + run (the per-image work the server does too; with the server's preprocessing process
    pool when it uses one)."""

    def __init__(self, args, images: list[bytes]) -> None:
        from mmserve.tasks.image_classification import (
            ImageLimits,
            ImagePreprocessing,
            decode_image,
            images_to_pixel_values,
        )
        from server.backends import LoadOptions, load_backend

        self.backend = load_backend(args.backend, args.classifier, "image-classification",
                                    LoadOptions(intra_op_threads=args.threads, onnx_cache_dir=args.onnx_cache_dir))
        self.backend.warmup()
        self.pre = ImagePreprocessing.model_validate(self.backend.config.preprocessing)
        self.bs = bs = args.max_batch_size
        self.batches = [images[i: i + bs] for i in range(0, len(images) - bs + 1, bs)]
        self._decode = lambda b: images_to_pixel_values([decode_image(d, ImageLimits()) for d in b], self.pre).numpy()
        self.pixels = [self._decode(b) for b in self.batches]
        self.pool = None
        if args.preprocess_processes:
            import concurrent.futures
            import multiprocessing

            from server.preprocess import _init_worker

            self.procs = args.preprocess_processes
            self.pool = concurrent.futures.ProcessPoolExecutor(
                self.procs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(self.pre.model_dump(), ImageLimits().model_dump()))
            self._pooled(0)

    def _pooled(self, i: int) -> None:
        import math

        from server.preprocess import _job

        size = math.ceil(self.bs / self.procs)
        parts = [self.pool.submit(_job, self.batches[i][j: j + size], j) for j in range(0, self.bs, size)]
        self.backend.run(np.stack([row for part in parts for row in part.result()[1]]))

    def measure(self, duration: float) -> dict:
        n = len(self.batches)
        out = {"batch_size": self.bs,
               "backend_run": _rate(lambda i: self.backend.run(self.pixels[i]), n, self.bs, duration),
               "pipeline": _rate(lambda i: self.backend.run(self._decode(self.batches[i])), n, self.bs, duration)}
        if self.pool is not None:
            out["pipeline_pool"] = _rate(self._pooled, n, self.bs, duration)
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


class TranslateCeiling:
    """The same backend offline: decoding.translate (tokenise, greedy, detokenise) on batches of
    max_batch_size sentences, the same texts the server gets."""

    def __init__(self, args, texts: list[str]) -> None:
        from server.backends import LoadOptions, load_backend

        self.backend = load_backend(args.backend, args.translator, "translation",
                                    LoadOptions(intra_op_threads=args.threads, onnx_cache_dir=args.onnx_cache_dir))
        self.backend.warmup()
        self.bs = args.max_batch_size
        self.batches = [texts[i: i + self.bs] for i in range(0, len(texts) - self.bs + 1, self.bs)]

    def measure(self, duration: float) -> dict:
        from mmserve.models.decoding import translate

        def run(i: int) -> None:
            translate(self.backend.stepper, self.backend.tokenizer, self.batches[i], beam_size=1, batch_size=self.bs)

        return {"batch_size": self.bs, "translate": _rate(run, len(self.batches), self.bs, duration)}

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--classifier", type=Path, default=REPO / "models" / "digits-vit")
    parser.add_argument("--translator", type=Path, default=REPO / "models" / "numbers-en-de")
    parser.add_argument("--onnx-cache-dir", type=Path, default=REPO / "build" / "onnx-cache")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64, help="connections at heavy load")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (server and ceiling alike)")
    parser.add_argument("--workers", type=int, default=1, help="server threads decoding uploads / tokenising")
    parser.add_argument("--decode-lanes", type=int, default=None,
                        help="server's --decode-lanes (translator decode loops; default: the thread policy)")
    parser.add_argument("--preprocess-processes", type=int, default=0,
                        help="server processes preprocessing images (the ceiling gets the same pool)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved server/ceiling rounds (medians)")
    parser.add_argument("--only", choices=["classify", "translate"], default=None)
    parser.add_argument("--items-per-request", type=int, default=1,
                        help="images / texts per request (1 = every item pays a whole HTTP request)")
    parser.add_argument("--frontends", default="default",
                        help="comma-separated `mmserve serve --frontends` values to compare, e.g. 0,1,2 "
                             "(0 = the in-process server; default = the server's own default)")
    parser.add_argument("--upload", choices=["multipart", "raw"], default="multipart",
                        help="/classify body: multipart/form-data, or the image itself (Content-Type image/*; "
                             "one item per request)")
    parser.add_argument("--image-px", type=int, default=64, help="side of the uploaded digit images")
    parser.add_argument("--image-format", choices=["PNG", "JPEG"], default="PNG")
    parser.add_argument("--wrk", action="store_true", help="cross-check saturation with wrk (Debian: wrk)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.only == "translate" or not (args.classifier / "config.json").is_file():
        args.classifier = None
    if args.only == "classify" or not (args.translator / "config.json").is_file():
        args.translator = None
    if args.classifier is None and args.translator is None:
        raise SystemExit("no model to benchmark (train the bundled ones with `make train-bundled`)")

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}; backend {args.backend}, max batch {args.max_batch_size}, "
          f"queue delay {args.max_queue_delay_ms} ms, intra-op threads {args.threads}, "
          f"upload workers {args.workers}, {args.duration:.0f} s per point")
    port = free_port()
    if args.items_per_request < 1:
        raise SystemExit("--items-per-request must be at least 1")
    if args.upload == "raw" and args.items_per_request != 1:
        raise SystemExit("--upload raw sends one image per request: use --items-per-request 1")
    images = classify_inputs(256, args.image_px, args.image_format) if args.classifier else []
    texts = translate_inputs(512, args.translator) if args.translator else []
    workloads = {}
    per = args.items_per_request
    if args.classifier:
        if args.upload == "raw":
            kind = f"image/{args.image_format.lower()}"
            workloads["classify"] = [_http_request("/classify", image, kind, port) for image in images]
        else:
            workloads["classify"] = [_http_request("/classify", *multipart(group), port)
                                     for group in groups(images, per)]
    if args.translator:
        workloads["translate"] = [_http_request("/translate", json.dumps({"texts": group, "beam_size": 1}).encode(),
                                                "application/json", port) for group in groups(texts, per)]

    from exporters.onnx.runtime import apply_thread_policy

    apply_thread_policy(args.backend, args.threads)  # as the server does with --threads (server/state.py)
    ceilings = {}
    if args.classifier:
        ceilings["classify"] = ClassifyCeiling(args, images)
    if args.translator:
        ceilings["translate"] = TranslateCeiling(args, texts)
    settings = [None if v == "default" else int(v) for v in args.frontends.split(",")]
    results: dict = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "load_average_start": os.getloadavg(), "servers": {}}
    try:
        for frontends in settings:
            args.server_frontends = frontends
            label = "default" if frontends is None else str(frontends)
            results["servers"][label] = measure_server(args, port, workloads, ceilings)
    finally:
        for ceiling in ceilings.values():
            ceiling.close()
    results["load_average_end"] = os.getloadavg()

    scaling: dict = {}
    for label, server in results["servers"].items():
        lanes = server.get("translator_lanes")
        split = f", translator {lanes[0]} decode lane(s) x {lanes[1]} intra-op thread(s)" if lanes else ""
        print(f"\n=== mmserve serve --frontends {label}  (ready in {server['server_ready_s']:.1f} s{split})")
        for name in workloads:
            scaling.setdefault(name, {})[label] = report(name, server[name], args, per)
    if len(settings) > 1:
        print("\nscaling with --frontends (saturated items/s; ratio to the offline pipeline ceiling of the same run):")
        for name, rows in scaling.items():
            print(f"  /{name}: " + "; ".join(f"{label}: {sat:.0f}/s ({ratio:.2f})" for label, (sat, ratio) in rows.items()))
    print(f"load average (1/5/15 min) at start {results['load_average_start']}, end {results['load_average_end']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


def measure_server(args, port: int, workloads: dict, ceilings: dict) -> dict:
    """Start one server configuration, measure light load, then interleaved heavy-load / ceiling rounds."""
    proc, ready_s = start_server(args, port)
    out: dict = {"server_ready_s": ready_s, "translator_lanes": translator_lanes(port)}
    try:
        for name, requests in workloads.items():
            before = batch_counters(port)
            light = drive(port, requests, 1, args.duration, args.warmup)
            light["mean_rows_per_run"] = mean_rows(before, batch_counters(port))
            rounds = []
            # Interleaved rounds: server at saturation, then the offline ceiling (server idle), so load
            # from other processes on the machine hits both alike; medians are reported.
            for r in range(args.rounds):
                before = batch_counters(port)
                heavy = drive(port, requests, args.concurrency, args.duration, args.warmup if r == 0 else 0.5)
                heavy["mean_rows_per_run"] = mean_rows(before, batch_counters(port))
                rounds.append({"heavy": heavy, "ceiling": ceilings[name].measure(args.duration / 2)})
            out[name] = {"light": light, "rounds": rounds}
            if args.wrk:
                out[name]["wrk"] = wrk_throughput(port, requests[0], args.concurrency, args.duration)
    finally:
        stop_server(proc)
    return out


def report(name: str, r: dict, args, per: int) -> tuple[float, float]:
    """Print one workload's figures; returns (saturated items/s, ratio to the pipeline ceiling)."""
    unit = "images/s" if name == "classify" else "sentences/s"
    heavy = {k: statistics.median(x["heavy"][k] for x in r["rounds"])
             for k in ("throughput_rps", "p50_ms", "p99_ms", "client_cpu_share")}
    heavy["errors"] = sum(x["heavy"]["errors"] for x in r["rounds"])
    ceiling = {k: statistics.median(x["ceiling"][k] for x in r["rounds"])
               for k in r["rounds"][0]["ceiling"] if k != "batch_size"}
    r["heavy_median"], r["ceiling_median"] = heavy, ceiling
    print(f"/{name}  ({unit}; {per} item(s) per request; upload {args.upload if name == 'classify' else 'json'})")
    m = r["light"]
    print(f"  light   c=1    {m['throughput_rps'] * per:8.1f} {unit}   p50 {m['p50_ms']:7.2f} ms   "
          f"p99 {m['p99_ms']:7.2f} ms   errors {m['errors']}   client CPU {m['client_cpu_share']:.2f} core")
    print(f"  heavy   c={args.concurrency:<4d} {heavy['throughput_rps'] * per:8.1f} {unit}   p50 "
          f"{heavy['p50_ms']:7.2f} ms   p99 {heavy['p99_ms']:7.2f} ms   errors {heavy['errors']}   client CPU "
          f"{heavy['client_cpu_share']:.2f} core   (median of {args.rounds} rounds)")
    if r.get("wrk"):
        w = r["wrk"]
        print(f"  heavy   wrk    {w['throughput_rps'] * per:8.1f} {unit}   p50 {w['p50_ms']:7.2f} ms   "
              f"non-2xx {w['non_2xx']}   (wrk -c{args.concurrency}, one request body repeated: cross-check)")
    elif args.wrk:
        print("  heavy   wrk    not run: `wrk` is not installed (apt-get install wrk)")
    rows = [x["heavy"]["mean_rows_per_run"] for x in r["rounds"]]
    print(f"  rows per model run at heavy load: {rows}  (target >= 8)")
    print(f"  offline ceiling, batch {args.max_batch_size} (median): "
          + ", ".join(f"{k} {v:.0f}" for k, v in ceiling.items()))
    sat = heavy["throughput_rps"] * per
    r["items_per_second"] = sat
    r["ratios"] = {k: sat / v for k, v in ceiling.items()}
    per_round = {k: [round(x["heavy"]["throughput_rps"] * per / x["ceiling"][k], 2) for x in r["rounds"]]
                 for k in ceiling}
    print("  saturated server / ceiling: " + ", ".join(f"{k} {v:.2f} (rounds {per_round[k]})"
                                                     for k, v in r["ratios"].items())
          + "   (target: pipeline/translate >= 0.9)")
    key = "pipeline" if name == "classify" else "translate"
    return sat, r["ratios"].get(key, float("nan"))


if __name__ == "__main__":
    main()
