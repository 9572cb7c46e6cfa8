"""Shared timing helpers for the CPU/GPU benchmarks: interleaved repetitions, medians, paired ratios.

The machines these run on are shared and noisy, so every benchmark measures the candidates side by
side in one process: after warm-up, each repetition runs every candidate once (in a rotating order),
and ratios are the median over repetitions of the per-repetition ratio to the baseline (paired, so a
slow phase of the machine hits both sides of a ratio).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["machine_info", "Timing", "compare", "print_comparison", "cuda_sync", "torch_cpu_parser", "apply_threads"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> str:
    """One line: CPU model, threads torch uses / cores, torch version, load average, GPU if any."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    gpu = ""
    if torch.cuda.is_available():
        gpu = f" | GPU {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return (
        f"CPU {_cpu_model()} | torch threads {torch.get_num_threads()} of {os.cpu_count()} cores | "
        f"torch {torch.__version__} | python {platform.python_version()} | "
        f"load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}{gpu}"
    )


def torch_cpu_parser(doc: str, reps: int, warmup: int) -> argparse.ArgumentParser:
    """The options every torch CPU benchmark takes (--reps, --warmup, --threads); `doc` is the
    script's docstring, whose first paragraph becomes the description."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    return parser


def apply_threads(args: argparse.Namespace) -> None:
    """torch.set_num_threads(--threads) when given, before anything is timed."""
    if args.threads:
        torch.set_num_threads(args.threads)


def cuda_sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Timing:
    name: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def iqr(self) -> tuple[float, float]:
        q = statistics.quantiles(self.seconds, n=4) if len(self.seconds) >= 2 else [self.median] * 3
        return q[0], q[2]


def compare(
    candidates: dict[str, Callable[[], object]],
    reps: int = 20,
    warmup: int = 3,
    sync: Callable[[], None] = lambda: None,
    inner: int = 1,
) -> dict[str, Timing]:
    """Time each candidate `reps` times, interleaved, after `warmup` calls of each.

    `inner` calls are timed together per sample (for very short calls). Returns seconds per call.
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]  # rotate: no fixed position
        for name in order:
            fn = candidates[name]
            sync()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: Timing(name, samples[name]) for name in names}


def paired_ratio(a: Timing, b: Timing) -> float:
    """Median over repetitions of a/b (repetition i of both was measured back to back)."""
    return statistics.median(x / y for x, y in zip(a.seconds, b.seconds))


def print_comparison(title: str, timings: dict[str, Timing], baseline: str, unit: str = "ms",
                     extra: Optional[dict[str, str]] = None) -> dict[str, float]:
    """Print median, IQR and the paired ratio to `baseline` per candidate; returns the ratios."""
    scale = {"ms": 1e3, "us": 1e6, "s": 1.0}[unit]
    base = timings[baseline]
    print(f"\n{title}")
    print(f"  {'candidate':<34} {'median ' + unit:>12} {'IQR ' + unit:>20} {'x ' + baseline:>16}")
    ratios = {}
    for name, timing in timings.items():
        lo, hi = timing.iqr
        ratio = paired_ratio(timing, base)
        ratios[name] = ratio
        note = f"  {extra[name]}" if extra and name in extra else ""
        print(
            f"  {name:<34} {timing.median * scale:>12.3f} {lo * scale:>9.3f}-{hi * scale:<10.3f}"
            f" {ratio:>15.2f}x{note}"
        )
    return ratios
