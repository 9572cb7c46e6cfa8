"""One-call TensorRT check for a machine with an NVIDIA GPU and the `tensorrt` package.

    python benchmarks/trt_check.py [--out build/trt_check] [--iters 200] [--skip-tests]

1. environment: TensorRT, GPU, torch/CUDA, onnxruntime providers;
2. the TensorRT tests of tests/test_tensorrt.py (`-m tensorrt`: plugin engines AOT + Python impl,
   fp32 + fp16, masked / non-last axis; bundled models' engines, parity, server backend);
3. `mmserve export --format tensorrt` of each bundled model into OUT/<model> (fp32 + fp16);
4. `mmserve parity` torch vs onnxruntime vs tensorrt vs tensorrt-fp16 on those engines;
5. timing (median of --iters, CUDA-synchronised, inputs already on the device):
   - op level: the plugin alone on [32, 6, 197, 197] vs the same Triton kernel launched from torch,
     torch eager softmax(seglu(x)) and torch.softmax;
   - classifier: TensorRT fp32/fp16 engines vs onnxruntime-gpu (CUDA EP, function-body export) when
     installed vs torch eager on CUDA, at batch 1, 8, 32.
Everything lands in OUT/results.json; the exit status is non-zero if a check failed.
Exit status 3 (and nothing else run) when TensorRT or a CUDA GPU is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODELS = ["digits-vit", "numbers-en-de"]


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True, env={**os.environ, **(env or {})})
    output = proc.stdout + proc.stderr
    print(output[-6000:], flush=True)
    return proc.returncode, output


def _median_ms(fn: Callable[[], Any], iters: int) -> float:
    import torch

    for _ in range(max(3, iters // 10)):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def environment() -> dict[str, Any]:
    import torch

    from plugins.tensorrt.availability import import_tensorrt

    trt = import_tensorrt()
    info = {"tensorrt": trt.__version__, "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(), "capability": ".".join(map(str, torch.cuda.get_device_capability()))}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def op_timing(work: Path, iters: int) -> dict[str, float]:
    """The plugin alone in an engine vs torch on the DESIGN.md benchmark shape."""
    import onnx
    import torch
    from onnx import TensorProto, helper

    from exporters.tensorrt.builder import build_engine, to_fp16
    from exporters.tensorrt.graph import prepare_for_tensorrt
    from exporters.tensorrt.profiles import DimRange, input_profiles
    from exporters.tensorrt.runtime import TrtEngine
    from mmserve.ops.reference import multimax_reference

    ranges, ts = [0.1, -0.2, 0.3, 0.05], [0.02, -0.01, 0.03, 0.04]
    x_info = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 6, 197, 197])
    node = helper.make_node("MultiMax", ["X"], ["Y"], domain="mmserve", name="mm", axis=-1, ranges=ranges, ts=ts)
    graph = helper.make_graph([node], "op", [x_info], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("mmserve", 1)],
                              ir_version=10)
    prepared = prepare_for_tensorrt(model).model
    x = torch.randn(32, 6, 197, 197, device="cuda")
    r, t = torch.tensor(ranges, device="cuda"), torch.tensor(ts, device="cuda")
    from plugins.triton.ops import multimax_forward

    results = {
        "torch_softmax_ms": _median_ms(lambda: torch.softmax(x, -1), iters),
        "torch_eager_multimax_ms": _median_ms(lambda: multimax_reference(x, r, t), iters),
        "triton_kernel_via_torch_ms": _median_ms(lambda: multimax_forward(x, r, t), iters),
    }
    for precision in ("fp32", "fp16"):
        g = prepared if precision == "fp32" else to_fp16(prepared)
        path = work / f"op.{precision}.onnx"
        onnx.save_model(g, str(path))
        built = build_engine(path, work / f"op.{precision}.engine", input_profiles(g, {"batch": DimRange(1, 32, 32)}),
                             precision=precision)
        engine = TrtEngine(built.engine_path)
        results[f"tensorrt_plugin_{precision}_ms"] = _median_ms(lambda: engine.run_torch({"X": x}), iters)
    return results


def classifier_timing(trt_dir: Path, onnx_dir: Path, iters: int) -> dict[str, Any]:
    import torch

    from exporters.tensorrt.runtime import TrtEngine
    from mmserve.checkpoints import load_model_dir

    loaded = load_model_dir(REPO / "models" / "digits-vit", "cuda")
    results: dict[str, Any] = {}
    engines = {p: TrtEngine(trt_dir / f"model.{p}.engine") for p in ("fp32", "fp16")}
    session = None
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CUDAExecutionProvider"])
    except ImportError:
        pass
    for batch in (1, 8, 32):
        x = torch.randn(batch, 1, 8, 8, device="cuda")
        row = {}
        with torch.inference_mode():
            row["torch_eager_ms"] = _median_ms(lambda: loaded.model.classify(x), iters)
        for precision, engine in engines.items():
            row[f"tensorrt_{precision}_ms"] = _median_ms(lambda: engine.run_torch({"pixel_values": x}), iters)
        if session is not None:
            host = x.cpu().numpy()
            row["onnxruntime_cuda_ms (host I/O)"] = _median_ms(lambda: session.run(None, {"pixel_values": host}), iters)
        results[f"batch_{batch}"] = row
    results["onnxruntime_cuda"] = session is not None
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "trt_check")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()

    from plugins.tensorrt.availability import unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"trt_check: nothing run: {reason}")
        return 3
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"environment": environment(), "failures": []}
    print(json.dumps(results["environment"], indent=1), flush=True)

    if not args.skip_tests:
        code, output = _run([sys.executable, "-m", "pytest", "tests/test_tensorrt.py", "-m", "tensorrt", "-q", "-rs"])
        results["pytest_tensorrt"] = {"exit": code, "summary": output.strip().splitlines()[-1] if output.strip() else ""}
        if code != 0:
            results["failures"].append("pytest -m tensorrt")

    mmserve = [sys.executable, "-c", "from mmserve.cli import main; main()"]
    for model in MODELS:
        model_dir = REPO / "models" / model
        if not (model_dir / "model.safetensors").is_file():
            results[model] = "not trained: skipped"
            continue
        trt_dir, onnx_dir = args.out / model, args.out / f"{model}-onnx"
        start = time.perf_counter()
        code, _ = _run([*mmserve, "export", str(model_dir), "--format", "tensorrt", "--out", str(trt_dir)])
        entry: dict[str, Any] = {"export_exit": code, "export_seconds": round(time.perf_counter() - start, 1)}
        if code == 0:
            _run([*mmserve, "export", str(model_dir), "--format", "onnx", "--out", str(onnx_dir), "--skip-if-current"])
            code, output = _run(
                [*mmserve, "parity", str(model_dir), "--onnx", str(onnx_dir),
                 "--backends", "torch,onnxruntime,tensorrt,tensorrt-fp16"],
                env={"MMSERVE_PARITY_TENSORRT_DIR": str(trt_dir)},
            )
            entry["parity_exit"] = code
            entry["parity_tail"] = output.strip().splitlines()[-12:]
            if code != 0:
                results["failures"].append(f"parity {model}")
            if model == "digits-vit":
                entry["timing"] = classifier_timing(trt_dir, onnx_dir, args.iters)
        else:
            results["failures"].append(f"export {model}")
        results[model] = entry

    try:
        results["op_timing_32x6x197x197"] = op_timing(args.out, args.iters)
    except Exception as exc:  # report and go on: the other results are still worth keeping
        results["op_timing_32x6x197x197"] = f"failed: {type(exc).__name__}: {exc}"
        results["failures"].append("op timing")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=1))
    print(f"wrote {args.out / 'results.json'}")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
