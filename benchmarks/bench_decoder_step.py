"""One decoder step of the bundled translator on onnxruntime: the variants tried to make it faster.

`benchmarks/bench_translate.py` says where decoding time goes (the decoder's `session.run`); this
script times that one call, 1 intra-op thread, on the same inputs (a cache of 6 generated tokens, a
10-token source), at --rows rows, for the variants weighed in issue 14, side by side in ONE process:

    export             decoder.onnx as `mmserve export` writes it, `session.run` with numpy feeds
    iobinding          the same graph, inputs bound once as OrtValues, outputs bound to the CPU
                       (`run_with_iobinding`): what IO binding saves on the CPU
    decode_step        the same graph through `OnnxSeq2SeqStepper.decode_step` (torch tensors in and
                       out): what the search loop's wrapper costs on top of `run`
    vector-multimax    the MultiMax function bodies replaced by a vectorised one (the 4 thresholds as
                       one broadcast Sub, Pow with an exponent vector, one ReduceSum: 10 nodes against 21)
    mulsum-attention   the model exported with single-query attention as Mul + ReduceSum instead of
                       MatMul (q.k and p.v), the usual trick when a batched GEMM has one row
    softmax-twin       the SoftMax twin (same weights, softmax): how much MultiMax costs per step

Every candidate runs once per repetition, in rotation; medians and paired ratios to `export` are
printed (`_timing.compare`). The variants' outputs are compared with the export's logits as well
(max |difference|), since a faster graph that changes the numbers would not be a candidate.

`--profile` adds onnxruntime's profiler view of the export's step: kernel time by op type (the
profiler's own overhead inflates small nodes, so read it as a split, not as times).

    python benchmarks/bench_decoder_step.py [--rows 1,32,128] [--reps 30] [--profile] [--work build/bench-decoder-step]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _timing import compare, machine_info, paired_ratio  # noqa: E402

from exporters.onnx import export_onnx  # noqa: E402
from exporters.onnx.runtime import OnnxSeq2SeqStepper, RuntimeOptions  # noqa: E402

BUNDLED = REPO / "models" / "numbers-en-de"
PAST_TOKENS, SOURCE_TOKENS = 6, 10


def vector_modulator(tape, x, order: int):
    """seglu(x) with the 2 * order thresholds in one broadcast: x + sum(t * relu(s * (x - r)) ** p)."""
    from exporters.onnx.functions import attribute_params

    if order != 2:
        raise NotImplementedError("the experiment covers order 2 (the bundled model's)")
    ranges, ts = attribute_params(tape, x)

    def floats(values):
        return tape.op("CastLike", [tape.op("Constant", [], attributes={"value_floats": values}), x])

    axes = tape.op("Constant", [], attributes={"value_ints": [-1]})
    spread = tape.op("Sub", [tape.op("Unsqueeze", [x, axes]), ranges])
    distance = tape.op("Relu", [tape.op("Mul", [spread, floats([-1.0, 1.0, -1.0, 1.0])])])
    terms = tape.op("Mul", [tape.op("Pow", [distance, floats([1.0, 1.0, 2.0, 2.0])]), ts])
    return tape.op("Add", [x, tape.op("ReduceSum", [terms, axes], attributes={"keepdims": 0})])


def with_vector_multimax(export: Path, out: Path) -> Path:
    """A copy of the export whose graphs carry the vectorised MultiMax body."""
    from bench_onnx_cpu import with_body

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(export, out)
    for graph in ("encoder.onnx", "decoder.onnx"):
        with_body(export / graph, out / graph, vector_modulator)
    return out


def mulsum_export(out: Path) -> Path:
    """The bundled model exported with attention products written as Mul + ReduceSum (patched for the
    export only; the patch is undone before returning)."""
    import mmserve.models.layers as layers
    import mmserve.ops.attention as attention

    def scores(q, k, scale):
        scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        return (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1) * scale

    def mulsum_attention(q, k, v, ranges, ts, mask=None, is_causal=False, scale=None, impl="auto",
                         return_weights=False):
        weights = attention.multimax(scores(q, k, scale), ranges, ts, dim=-1,
                                     mask=attention._full_mask(q, k, mask, is_causal))
        result = (weights.unsqueeze(-1) * v.unsqueeze(-3)).sum(-2)
        return (result, weights) if return_weights else result

    original = layers.multimax_attention
    layers.multimax_attention = mulsum_attention
    try:
        shutil.rmtree(out, ignore_errors=True)
        return export_onnx(BUNDLED, out).out_dir
    finally:
        layers.multimax_attention = original


def softmax_export(work: Path) -> Path:
    from bench_translate import softmax_twin_dir

    twin = softmax_twin_dir(BUNDLED, work / "softmax-twin")
    shutil.rmtree(work / "softmax-twin-onnx", ignore_errors=True)
    return export_onnx(twin, work / "softmax-twin-onnx").out_dir


def step_inputs(stepper: OnnxSeq2SeqStepper, rows: int):
    """decode_step arguments after PAST_TOKENS steps, and the same as the graph's numpy feeds."""
    torch.manual_seed(0)
    ids = torch.randint(4, 300, (rows, SOURCE_TOKENS))
    mask = torch.zeros(rows, SOURCE_TOKENS, dtype=torch.bool)
    cross = stepper.cross_kv(stepper.encode(ids, mask))
    tokens, kv = torch.full((rows, 1), 1), None
    for step in range(PAST_TOKENS):
        _, kv = stepper.decode_step(tokens, torch.full((rows, 1), step), kv,
                                    torch.zeros(rows, step + 1, dtype=torch.bool), cross, mask)
    args = (tokens, torch.full((rows, 1), PAST_TOKENS), kv, torch.zeros(rows, PAST_TOKENS + 1, dtype=torch.bool),
            cross, mask)
    feeds = {"tokens": tokens.numpy(), "positions": args[1].numpy(), "self_pad_mask": args[3].numpy(),
             "src_pad_mask": mask.numpy()}
    feeds |= {name: t.numpy() for name, t in zip(stepper._past, (t for pair in kv for t in pair))}
    feeds |= {name: t.numpy() for name, t in zip(stepper._cross, (t for pair in cross for t in pair))}
    return args, feeds


def candidates(exports: dict[str, Path], rows: int):
    """name -> (callable running one step, its logits)."""
    import onnxruntime as ort

    out = {}
    for name, export in exports.items():
        stepper = OnnxSeq2SeqStepper(export, RuntimeOptions(intra_op_threads=1), verify=False)
        args, feeds = step_inputs(stepper, rows)
        session = stepper.session("decoder.onnx")
        names = ["logits", *stepper._present]
        out[name] = (lambda s=session, f=feeds, n=names: s.run(n, f), session.run(["logits"], feeds)[0])
        if name == "export":
            values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()}

            def bound(s=session, values=values, n=names):
                binding = s.io_binding()
                for key, value in values.items():
                    binding.bind_ortvalue_input(key, value)
                for output in n:
                    binding.bind_output(output)
                s.run_with_iobinding(binding)
                return binding.get_outputs()

            out["iobinding"] = (bound, out[name][1])
            out["decode_step"] = (lambda st=stepper, a=args: st.decode_step(*a), out[name][1])
    return out


def profile_split(export: Path, rows: int, calls: int = 200) -> dict[str, float]:
    """Share of onnxruntime's profiled kernel time per op type for `calls` steps of the export."""
    import onnxruntime as ort

    from exporters.onnx.runtime import _session_options

    stepper = OnnxSeq2SeqStepper(export, RuntimeOptions(intra_op_threads=1), verify=False)
    _, feeds = step_inputs(stepper, rows)
    options = _session_options(RuntimeOptions(intra_op_threads=1))
    options.enable_profiling = True
    options.profile_file_prefix = str(export.parent / f"profile-{rows}")
    session = ort.InferenceSession(str(export / "decoder.onnx"), options, providers=["CPUExecutionProvider"])
    for _ in range(calls):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values())
    return {op: microseconds / total for op, microseconds in by_op.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,32,128")
    parser.add_argument("--profile", action="store_true", help="also print the profiler's split by op type")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--work", type=Path, default=REPO / "build" / "bench-decoder-step")
    args = parser.parse_args()
    if not (BUNDLED / "model.safetensors").is_file():
        sys.exit("bundled numbers-en-de missing (make train-bundled)")
    torch.set_num_threads(1)
    print(machine_info())
    args.work.mkdir(parents=True, exist_ok=True)
    export = args.work / "export"
    shutil.rmtree(export, ignore_errors=True)
    exports = {"export": export_onnx(BUNDLED, export).out_dir}
    exports["vector-multimax"] = with_vector_multimax(exports["export"], args.work / "vector-multimax")
    exports["mulsum-attention"] = mulsum_export(args.work / "mulsum-attention")
    exports["softmax-twin"] = softmax_export(args.work)
    for rows in (int(r) for r in args.rows.split(",")):
        runs = candidates(exports, rows)
        timings = compare({name: fn for name, (fn, _) in runs.items()}, reps=args.reps, warmup=5, inner=10)
        reference = runs["export"][1]
        print(f"\ndecoder step, {rows} rows, cache of {PAST_TOKENS} tokens, 1 intra-op thread ({args.reps} reps x 10 calls)")
        print(f"  {'variant':<18} {'median us':>10} {'time x export':>14} {'max |logit - export|':>22}")
        for name, (_, logits) in runs.items():
            gap = "(other model)" if name == "softmax-twin" else f"{float(np.abs(logits - reference).max()):.1e}"
            ratio = paired_ratio(timings[name], timings["export"])
            print(f"  {name:<18} {timings[name].median * 1e6:>10.0f} {ratio:>13.2f}x {gap:>22}")
        if args.profile:
            split = profile_split(exports["export"], rows)
            print("  onnxruntime profiler, export, share of kernel time: "
                  + ", ".join(f"{op} {share:.0%}" for op, share in split.items() if share >= 0.01))


if __name__ == "__main__":
    main()
