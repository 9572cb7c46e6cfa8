"""MultiMax vs SoftMax on onnxruntime (CPU): the cost of the exported `mmserve.MultiMax` op.

In ONE run, for the bundled digits classifier and a DeiT-S-sized classifier (random weights,
224x224, batch 8), each exported to ONNX exactly as `mmserve export` does (model.onnx: probs +
logits), and the same architecture built with SoftMax attention and a SoftMax head:

    variants    softmax             SoftMax model (the baseline)
                multimax            MultiMax as exported: the function body `mmserve export` writes
                                    (term by term, like torch); onnxruntime inlines it
                multimax-shift      experiment: a body exact up to a constant shift, which Softmax
                                    ignores: relu(r-x) = max(x,r) - x, relu(x-r) = max(x,r) - r, so
                                    each linear term is Max, Mul, Add instead of Sub, Relu, Mul, Add
                multimax-sum        experiment: the same terms, accumulated by one variadic Sum
                                    instead of a chain of Adds (bitwise the same result here)
                multimax-pow        the naive decomposition: squares as Pow(b, 2), which is what
                                    exporting `relu(..)**2` from torch gives, instead of Mul(b, b)
    ORT levels  basic, extended, all        SessionOptions.graph_optimization_level

Timing: every session is warmed up, then repetitions are interleaved (one run of each session per
round, so load from other processes hits all variants alike) and the median is reported, with the
ratio MultiMax / SoftMax at the same optimisation level. Machine info is printed first.

    nice -n 5 python benchmarks/bench_onnx_cpu.py [--reps 15] [--warmup 3] [--threads 2] [--json out.json]

The bundled model is read from models/digits-vit (skipped with a message if it is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmserve.checkpoints import load_model_dir  # noqa: E402
from mmserve.models import VIT_PRESETS, ViTConfig, build_model  # noqa: E402

LEVELS = ("basic", "extended", "all")


def machine_info(threads: int) -> dict[str, object]:
    import onnx
    import onnxruntime as ort

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "ort_threads": threads,
        "note": "medians of interleaved runs; ORT worker threads do not spin unless --spin",
    }


def softmax_twin(model: torch.nn.Module, arch: ViTConfig) -> torch.nn.Module:
    """The same architecture and weights with SoftMax attention and head (ranges/ts dropped)."""
    twin = build_model(arch.model_copy(update={"attention_fn": "softmax", "output_fn": "softmax"})).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(("ranges", "ts"))}
    twin.load_state_dict(state, strict=True)
    return twin


def export_graph(model: torch.nn.Module, arch: ViTConfig, path: Path) -> None:
    """model.onnx exactly as `mmserve export` builds it (reference body)."""
    import onnx

    from exporters.onnx.configs import ImageClassificationOnnxConfig
    from exporters.onnx.convert import check, convert_module, to_proto

    config = ImageClassificationOnnxConfig(model, arch)
    args = config.generate_dummy_inputs(config.export_shapes, torch.Generator().manual_seed(0))
    proto = to_proto(convert_module(config.graph_module(), args, config.spec()))
    check(proto)
    onnx.save_model(proto, str(path))


def _shift_modulator(tape, x, order):
    """seglu(x) minus a constant (see the docstring); only valid inside a Softmax."""
    from exporters.onnx.functions import attribute_params, scalar

    if order == 0:
        return x
    ranges, ts = attribute_params(tape, x)
    one = tape.op("CastLike", [tape.op("Constant", [], attributes={"value_float": 1.0}), x])
    t_b1 = scalar(tape, ts, 0)
    z = tape.op("Mul", [x, tape.op("Sub", [one, t_b1])])
    z = tape.op("Add", [z, tape.op("Mul", [t_b1, tape.op("Max", [x, scalar(tape, ranges, 0)])])])
    z = tape.op("Add", [z, tape.op("Mul", [scalar(tape, ts, 1), tape.op("Max", [x, scalar(tape, ranges, 1)])])])
    for n in range(2, order + 1):
        below = tape.op("Relu", [tape.op("Sub", [scalar(tape, ranges, 2 * n - 2), x])])
        above = tape.op("Relu", [tape.op("Sub", [x, scalar(tape, ranges, 2 * n - 1)])])
        if n > 2:
            raise NotImplementedError("the experiment covers order <= 2")
        z = tape.op("Add", [z, tape.op("Mul", [tape.op("Mul", [scalar(tape, ts, 2), below]), below])])
        z = tape.op("Add", [z, tape.op("Mul", [tape.op("Mul", [scalar(tape, ts, 3), above]), above])])
    return z


def _sum_modulator(tape, x, order):
    """The reference terms, accumulated with one variadic Sum (x + term1 + term2 + ...)."""
    from exporters.onnx.functions import attribute_params, scalar

    if order == 0:
        return x
    ranges, ts = attribute_params(tape, x)
    terms = [x]
    for n in range(1, order + 1):
        below = tape.op("Relu", [tape.op("Sub", [scalar(tape, ranges, 2 * n - 2), x])])
        above = tape.op("Relu", [tape.op("Sub", [x, scalar(tape, ranges, 2 * n - 1)])])
        if n == 2:
            below, above = tape.op("Mul", [below, below]), tape.op("Mul", [above, above])
        elif n > 2:
            raise NotImplementedError("the experiment covers order <= 2")
        terms += [tape.op("Mul", [scalar(tape, ts, 2 * n - 2), below]), tape.op("Mul", [scalar(tape, ts, 2 * n - 1), above])]
    return tape.op("Sum", terms)


def _pow_modulator(tape, x, order):
    """The reference terms with Pow for the powers (as a naive torch -> ONNX decomposition has them)."""
    from exporters.onnx.functions import attribute_params, scalar

    if order == 0:
        return x
    ranges, ts = attribute_params(tape, x)
    z = x
    for n in range(1, order + 1):
        below = tape.op("Relu", [tape.op("Sub", [scalar(tape, ranges, 2 * n - 2), x])])
        above = tape.op("Relu", [tape.op("Sub", [x, scalar(tape, ranges, 2 * n - 1)])])
        if n > 1:
            exponent = tape.op("CastLike", [tape.op("Constant", [], attributes={"value_float": float(n)}), x])
            below, above = tape.op("Pow", [below, exponent]), tape.op("Pow", [above, exponent])
        z = tape.op("Add", [z, tape.op("Mul", [scalar(tape, ts, 2 * n - 2), below])])
        z = tape.op("Add", [z, tape.op("Mul", [scalar(tape, ts, 2 * n - 1), above])])
    return z


EXPERIMENTS = {"multimax-shift": _shift_modulator, "multimax-sum": _sum_modulator, "multimax-pow": _pow_modulator}


def with_body(src: Path, dst: Path, modulator) -> None:
    """Swap the model-local MultiMax functions for an experimental body (same nodes and attributes)."""
    import onnx
    import onnx_ir as ir

    from exporters.onnx.convert import check
    from exporters.onnx.functions import attach_functions, multimax_functions, remove_functions

    model = ir.load(str(src))
    overloads = {f.overload for f in model.functions.values()}
    remove_functions(model)
    order = len(next(n for n in model.graph.all_nodes() if n.op_type == "MultiMax").attributes["ranges"].value) // 2
    attach_functions(model, multimax_functions(order, model.opset_imports[""], overloads, modulator))
    proto = ir.to_proto(model)
    check(proto)
    onnx.save_model(proto, str(dst))


def session(path: Path, level: str, threads: int, spin: bool):
    from exporters.onnx.runtime import RuntimeOptions, create_session

    # Spinning worker threads make a shared machine's load swamp the differences being measured.
    config = {} if spin else {"session.intra_op.allow_spinning": "0"}
    return create_session(path, RuntimeOptions(intra_op_threads=threads, optimization=level, extra_session_config=config))


def bench(sessions: dict[str, object], x: np.ndarray, reps: int, warmup: int, min_sample_s: float) -> dict[str, list[float]]:
    """Per session: warm up, pick how many calls make one sample (>= min_sample_s, so a 2 ms model
    is not timed at the scheduler's resolution), then interleave the samples across sessions."""
    feed = {"pixel_values": x}
    inner = {}
    for key, sess in sessions.items():
        for _ in range(warmup):
            sess.run(None, feed)
        start = time.perf_counter()
        sess.run(None, feed)
        once = max(time.perf_counter() - start, 1e-6)
        inner[key] = max(1, int(np.ceil(min_sample_s / once)))
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(reps):
        for key, sess in sessions.items():
            start = time.perf_counter()
            for _ in range(inner[key]):
                sess.run(None, feed)
            times[key].append((time.perf_counter() - start) / inner[key])
    return times


def check_outputs(sessions: dict[str, object], x: np.ndarray) -> dict[str, float]:
    """The experimental bodies must compute the same probabilities as the exported one."""
    out = {}
    for key, sess in sessions.items():
        variant, level = key.split("/")
        if variant in EXPERIMENTS:
            ref = sessions[f"multimax/{level}"].run(None, {"pixel_values": x})[0]
            out[key] = float(np.abs(sess.run(None, {"pixel_values": x})[0] - ref).max())
    return out


def run_model(label: str, model, arch: ViTConfig, batch: int, args, workdir: Path) -> dict[str, object]:
    print(f"\n== {label}: embed {arch.embed_dim}, depth {arch.depth}, heads {arch.num_heads}, "
          f"{arch.img_size}x{arch.img_size}/{arch.patch_size} ({arch.num_patches} tokens), batch {batch}", flush=True)
    paths = {"softmax": workdir / f"{label}-softmax.onnx", "multimax": workdir / f"{label}-multimax.onnx"}
    paths.update({name: workdir / f"{label}-{name}.onnx" for name in EXPERIMENTS})
    t0 = time.perf_counter()
    export_graph(model, arch, paths["multimax"])
    export_graph(softmax_twin(model, arch), arch, paths["softmax"])
    for name, modulator in EXPERIMENTS.items():
        with_body(paths["multimax"], paths[name], modulator)
    print(f"   exported in {time.perf_counter() - t0:.1f} s", flush=True)
    sessions = {f"{v}/{lvl}": session(p, lvl, args.threads, args.spin) for v, p in paths.items() for lvl in LEVELS}
    x = np.random.default_rng(0).standard_normal((batch, arch.in_chans, arch.img_size, arch.img_size), dtype=np.float32)
    body_diff = check_outputs(sessions, x)
    times = bench(sessions, x, args.reps, args.warmup, args.min_sample_s)
    medians = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    print(f"   {'variant':<22}{'level':<10}{'median ms':>10}{'ratio vs softmax':>18}")
    for variant in paths:
        for level in LEVELS:
            key = f"{variant}/{level}"
            ratio = medians[key] / medians[f"softmax/{level}"]
            rows.append({"variant": variant, "level": level, "median_ms": medians[key] * 1e3, "ratio": ratio})
            print(f"   {variant:<22}{level:<10}{medians[key] * 1e3:>10.2f}{ratio:>18.3f}")
    print(f"   max |probs(experiment) - probs(exported body)|: {body_diff}")
    return {"label": label, "batch": batch, "architecture": arch.model_dump(), "rows": rows,
            "body_max_abs_diff": body_diff, "reps": args.reps, "warmup": args.warmup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (this machine: 2 cores)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--min-sample-s", type=float, default=0.05, help="each sample repeats calls for at least this long")
    parser.add_argument("--spin", action="store_true", help="let onnxruntime's worker threads spin (default: off)")
    parser.add_argument("--models", default="bundled,deit-s", help="comma-separated: bundled, deit-s")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    info = machine_info(args.threads)
    print("machine:", json.dumps(info))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        workdir = Path(tmp)
        wanted = [m.strip() for m in args.models.split(",")]
        if "bundled" in wanted:
            bundled = REPO / "models" / "digits-vit"
            if (bundled / "model.safetensors").is_file():
                loaded = load_model_dir(bundled)
                results.append(run_model("digits-vit", loaded.model, loaded.architecture, args.batch, args, workdir))
            else:
                print(f"\n== digits-vit: skipped ({bundled} has no weights)")
        if "deit-s" in wanted:
            arch = ViTConfig(**VIT_PRESETS["deit-small"], img_size=224, patch_size=16, num_classes=1000)
            model = build_model(arch).eval()
            results.append(run_model("deit-s", model, arch, args.batch, args, workdir))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
