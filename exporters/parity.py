"""Numerical parity of one model across backends (torch, onnxruntime, tensorrt, ...).

Every backend runs the same inputs: a held-out batch of the model's own data (the digits test split
via `mmserve.data.digits.heldout_pixel_values`, the numbers test split via
`mmserve.data.numbers.heldout_texts`) when the model's config names that dataset, plus seeded random
inputs, each at several batch sizes (the same samples cut into batches of 1, 4, 16, ..., so a
batch-dependent bug shows up as a difference between rows of the table). Every pair of backends is
compared.

What is compared
    classifier   probs and logits: max abs error, max rel error, top-1 agreement
    translator   step logits (teacher-forced along the first backend's greedy output, through the KV
                 cache one token at a time): max abs / rel error; greedy and beam outputs: token-level
                 agreement and exact match; and each backend's agreement with the references

When a check fails (exit status 1 from `mmserve parity`)
    - any compared float output violates |a - b| <= atol + rtol * |b| + 4 * e32 (b = the first
      backend of the pair), with (atol, rtol) from the tolerance table of the pair's lower-precision
      dtype and e32 = max |torch float32 - torch float64| on that output, the same inputs and batch
      size: the error float32 itself makes there (the export check's rule, exporters/onnx/validate.py).
      Sharp attention amplifies float32 rounding, so two correct float32 runs may differ by more than
      a fixed atol; e32 is ~1e-6 on well-conditioned outputs, where atol decides;
    - on held-out data, a classifier's top-1 differs where the first backend's top-2 margin exceeds
      `tie_margin`, or a translator's greedy or beam output differs in any token.
    Decisions on random inputs are reported but do not fail the check: a random input can sit on a
    near-tie that float rounding legitimately flips; the value tolerances cover those inputs.

Default tolerances (absolute, relative), per dtype of the lower-precision backend of a pair:
    float32    atol 1e-4, rtol 1e-4
    tfloat32   atol 1e-3, rtol 1e-3   (GPU matmuls with TF32's 10-bit mantissa)
    float16    atol 1e-2, rtol 1e-2
    bfloat16   atol 5e-2, rtol 5e-2
float32 is what the ONNX export runs in (observed torch vs onnxruntime errors on the bundled models
are ~1e-6, see the README); the other rows are for engines built with TF32/fp16/bf16 (TensorRT). Relative errors are reported over elements with |b| >= 1e-3 (a relative error of a value
near zero says nothing). A backend that cannot run here (e.g. TensorRT without the `tensorrt`
package) is listed as SKIPPED with the reason and is never counted as passed.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from mmserve.checkpoints import WEIGHTS_NAME, CheckpointError, read_config, verify_manifest
from mmserve.errors import UserError

from .onnx.validate import FLOAT32_ERROR_FACTOR

from .parity_backends import BackendUnavailable, ParityBackend, ParityContext, load_parity_backend

__all__ = [
    "Tolerance",
    "DEFAULT_TOLERANCES",
    "REL_FLOOR",
    "PairResult",
    "ParityReport",
    "run_parity",
    "parse_tolerances",
]


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(1e-4, 1e-4),
    "tfloat32": Tolerance(1e-3, 1e-3),
    "float16": Tolerance(1e-2, 1e-2),
    "bfloat16": Tolerance(5e-2, 5e-2),
}
_PRECISION_ORDER = ["bfloat16", "float16", "tfloat32", "float32"]
REL_FLOOR = 1e-3
DEFAULT_TIE_MARGIN = 1e-4
HELDOUT = "held-out"
RANDOM = "random"


def parse_tolerances(atol: Optional[str], rtol: Optional[str]) -> dict[str, Tolerance]:
    """`--atol 2e-4` (float32) or `--atol float32=2e-4,float16=2e-2`; same for --rtol."""
    table = dict(DEFAULT_TOLERANCES)

    def apply(text: Optional[str], which: str) -> None:
        if not text:
            return
        for part in text.split(","):
            dtype, sep, value = part.strip().rpartition("=")
            dtype = dtype if sep else "float32"
            if dtype not in table:
                raise UserError(f"--{which}: unknown dtype {dtype!r} (known: {', '.join(table)})")
            try:
                number = float(value)
            except ValueError as exc:
                raise UserError(f"--{which}: {value!r} is not a number") from exc
            if number < 0:
                raise UserError(f"--{which}: tolerances must be >= 0, got {number}")
            old = table[dtype]
            table[dtype] = Tolerance(number, old.rtol) if which == "atol" else Tolerance(old.atol, number)

    apply(atol, "atol")
    apply(rtol, "rtol")
    return table


def _pair_dtype(a: ParityBackend, b: ParityBackend) -> str:
    known = [d for d in (a.dtype, b.dtype) if d in _PRECISION_ORDER]
    return min(known, key=_PRECISION_ORDER.index) if known else "float32"


@dataclass
class Errors:
    """Value comparison of two arrays: max abs, max rel (|b| >= REL_FLOOR), allclose violations."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    violations: int = 0

    def update(self, a: np.ndarray, b: np.ndarray, tol: Tolerance, float32_error: float = 0.0) -> None:
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a64.shape != b64.shape:
            raise AssertionError(f"shape mismatch {a64.shape} vs {b64.shape}")
        diff = np.abs(a64 - b64)
        bad_values = ~np.isfinite(a64) & np.isfinite(b64) | np.isfinite(a64) & ~np.isfinite(b64)
        diff = np.where(np.isfinite(diff), diff, 0.0)
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        big = np.abs(b64) >= REL_FLOOR
        if big.any():
            self.max_rel = max(self.max_rel, float((diff[big] / np.abs(b64[big])).max()))
        allowed = tol.atol + tol.rtol * np.abs(b64) + FLOAT32_ERROR_FACTOR * float32_error
        self.violations += int((diff > allowed).sum() + bad_values.sum())


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over finite entries (non-finite mismatches are counted by Errors, not here)."""
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(diff[np.isfinite(diff)].max(initial=0.0))


def _outside(what: str, err: "Errors", tol: Tolerance, float32_error: float) -> str:
    return (f"{what}: {err.violations} values outside atol {tol.atol:g} + rtol {tol.rtol:g} + "
            f"{FLOAT32_ERROR_FACTOR:g}x float32 error {float32_error:.2g}")


@dataclass
class _Float32Probe:
    """torch float32 and float64 runs of the model: how far float32 is from exact on each input."""

    f32: ParityBackend
    f64: ParityBackend


def _float32_probe(model_dir: Path) -> _Float32Probe:
    from mmserve.checkpoints import load_model_dir

    model32 = load_model_dir(model_dir).model.eval()
    model64 = copy.deepcopy(model32).double()
    if not hasattr(model32, "classify"):
        return _Float32Probe(ParityBackend("torch-float32", stepper=model32),
                             ParityBackend("torch-float64", "float64", stepper=model64))

    def classifier(model: torch.nn.Module, dtype: torch.dtype):
        @torch.no_grad()
        def classify(pixel_values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            probs, logits = model.classify(pixel_values.to(dtype))
            return probs.numpy(), logits.numpy()

        return classify

    return _Float32Probe(ParityBackend("torch-float32", classify=classifier(model32, torch.float32)),
                         ParityBackend("torch-float64", "float64", classify=classifier(model64, torch.float64)))


@dataclass
class PairResult:
    """One row of the table: a backend pair on one input kind at one batch size."""

    batch_size: int
    inputs: str
    pair: tuple[str, str]
    tolerance: Tolerance
    metrics: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ReferenceResult:
    """A backend's agreement with the dataset's references (held-out data only)."""

    backend: str
    batch_size: int
    metrics: dict[str, float]


@dataclass
class ParityReport:
    model_dir: Path
    task: str
    backends: dict[str, str]
    skipped: dict[str, str]
    pairs: list[PairResult]
    references: list[ReferenceResult]
    samples: dict[str, int]
    tolerances: dict[str, Tolerance]

    @property
    def passed(self) -> bool:
        return bool(self.pairs) and all(p.passed for p in self.pairs)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "task": self.task,
            "passed": self.passed,
            "backends": self.backends,
            "skipped": self.skipped,
            "samples": self.samples,
            "tolerances": {k: vars(v) for k, v in self.tolerances.items()},
            "pairs": [
                {"batch_size": p.batch_size, "inputs": p.inputs, "pair": list(p.pair), "tolerance": vars(p.tolerance),
                 "metrics": p.metrics, "passed": p.passed, "failures": p.failures}
                for p in self.pairs
            ],
            "references": [vars(r) for r in self.references],
        }


# ---------------------------------------------------------------------------------- classifier


def _classifier_inputs(config, samples: int, seed: int) -> dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]]:
    arch = config.model_architecture()
    inputs: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
    if config.dataset.get("name") == "sklearn-digits":
        from mmserve.data.digits import heldout_pixel_values

        pixel_values, labels = heldout_pixel_values(config, samples)
        inputs[HELDOUT] = (pixel_values, labels)
    generator = torch.Generator().manual_seed(seed)
    shape = (samples, arch.in_chans, arch.img_size, arch.img_size)
    inputs[RANDOM] = (torch.randn(shape, generator=generator), None)
    return inputs


def _run_classifier(backend: ParityBackend, pixel_values: torch.Tensor, batch_size: int):
    probs, logits = [], []
    for start in range(0, pixel_values.shape[0], batch_size):
        p, lg = backend.classify(pixel_values[start : start + batch_size])
        probs.append(np.asarray(p))
        logits.append(np.asarray(lg))
    return np.concatenate(probs), np.concatenate(logits)


def _top1_flips(p_ref: np.ndarray, p_other: np.ndarray, tie_margin: float) -> tuple[float, int]:
    """(agreement fraction, disagreements not explained by a near-tie in the reference)."""
    top_ref, top_other = p_ref.argmax(-1), p_other.argmax(-1)
    agree = top_ref == top_other
    ordered = np.sort(p_ref, axis=-1)
    margin = ordered[:, -1] - ordered[:, -2] if p_ref.shape[-1] > 1 else np.full(len(p_ref), np.inf)
    real_flips = int((~agree & (margin > tie_margin)).sum())
    return float(agree.mean()) if len(agree) else 1.0, real_flips


def _classifier_parity(backends, config, batch_sizes, samples, tolerances, tie_margin, seed, say, probe):
    pairs, references = [], []
    inputs = _classifier_inputs(config, samples, seed)
    for batch_size in batch_sizes:
        for kind, (pixel_values, labels) in inputs.items():
            say(f"classifier: {kind} inputs, batch size {batch_size}")
            outputs = {b.name: _run_classifier(b, pixel_values, batch_size) for b in backends}
            p32, l32 = outputs.get("torch") or _run_classifier(probe.f32, pixel_values, batch_size)
            p64, l64 = _run_classifier(probe.f64, pixel_values, batch_size)
            e32 = {"probs": _max_abs_diff(p32, p64), "logits": _max_abs_diff(l32, l64)}
            if labels is not None:
                for b in backends:
                    accuracy = float((outputs[b.name][0].argmax(-1) == labels.numpy()).mean())
                    references.append(ReferenceResult(b.name, batch_size, {"accuracy": accuracy}))
            for a, b in itertools.combinations(backends, 2):
                tol = tolerances[_pair_dtype(a, b)]
                (pa, la), (pb, lb) = outputs[a.name], outputs[b.name]
                probs_err, logits_err = Errors(), Errors()
                probs_err.update(pb, pa, tol, e32["probs"])
                logits_err.update(lb, la, tol, e32["logits"])
                agreement, flips = _top1_flips(pa, pb, tie_margin)
                row = PairResult(batch_size, kind, (a.name, b.name), tol, {
                    "probs_max_abs": probs_err.max_abs,
                    "logits_max_abs": logits_err.max_abs,
                    "logits_max_rel": logits_err.max_rel,
                    "logits_float32_error": e32["logits"],
                    "top1_agreement": agreement,
                })
                for what, err in (("probs", probs_err), ("logits", logits_err)):
                    if err.violations:
                        row.failures.append(_outside(what, err, tol, e32[what]))
                if kind == HELDOUT and flips:
                    row.failures.append(f"top-1 differs on {flips} held-out rows (margin > {tie_margin:g})")
                pairs.append(row)
    return pairs, references


# ---------------------------------------------------------------------------------- translator


@dataclass
class _Decoded:
    greedy: list[list[int]]
    beam: list[list[int]]


def _translator_inputs(config, tokenizer, samples: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, Optional[list[str]]]]:
    from mmserve.tasks.translation import encode_batch

    arch = config.model_architecture()
    gen = config.generation
    inputs = {}
    if tokenizer is not None and config.dataset.get("name"):
        from mmserve.data.numbers import DATASET_NAME, heldout_texts

        if config.dataset.get("name") == DATASET_NAME:
            pairs = heldout_texts(config, samples)
            src_ids, src_pad = encode_batch(tokenizer, [s for s, _ in pairs])
            inputs[HELDOUT] = (src_ids, src_pad, [t for _, t in pairs])
    generator = torch.Generator().manual_seed(seed)
    special = max(gen.get("pad_id", 0), gen.get("bos_id", 1), gen.get("eos_id", 2), gen.get("unk_id", 3)) + 1
    max_src = int(gen.get("max_source_tokens", 16))
    width = max(2, min(max_src, 12))
    lengths = torch.randint(2, width + 1, (samples,), generator=generator)
    ids = torch.randint(special, arch.src_vocab_size, (samples, width), generator=generator)
    positions = torch.arange(width)[None, :]
    ids = torch.where(positions == (lengths - 1)[:, None], torch.full_like(ids, gen["eos_id"]), ids)
    pad = positions >= lengths[:, None]
    inputs[RANDOM] = (ids.masked_fill(pad, gen["pad_id"]), pad, None)
    return inputs


def _batches(src_ids, src_pad, batch_size):
    for start in range(0, src_ids.shape[0], batch_size):
        ids, pad = src_ids[start : start + batch_size], src_pad[start : start + batch_size]
        width = int((~pad).sum(dim=1).max())  # as `translate` does: drop all-padding columns
        yield ids[:, :width], pad[:, :width]


def _decode(backend: ParityBackend, src_ids, src_pad, batch_size, gen) -> _Decoded:
    from mmserve.models.decoding import SearchRules, beam_search, greedy_search, search_rules
    from mmserve.tasks.translation import GenerationConfig

    args = (gen["bos_id"], gen["eos_id"], gen["pad_id"], int(gen["max_length"]))
    alpha = float(gen.get("length_penalty", 0.6))
    # The model's own scoring rules (fairseq-generate's for imported fairseq translators).
    try:
        rules = search_rules(GenerationConfig.model_validate(gen))
    except ValueError:  # partial generation settings (no unk id, limits): the plain mmserve rules
        rules = SearchRules()
    greedy, beam = [], []
    for ids, pad in _batches(src_ids, src_pad, batch_size):
        greedy += [h.tokens for h in greedy_search(backend.stepper, ids, pad, *args, alpha=alpha, rules=rules)]
        beams = beam_search(backend.stepper, ids, pad, *args, beam_size=int(gen.get("beam_size", 4)), alpha=alpha,
                            rules=rules)
        beam += [h[0].tokens if h else [] for h in beams]
    return _Decoded(greedy, beam)


@torch.no_grad()
def _step_logits(backend: ParityBackend, src_ids, src_pad, sequences: list[list[int]], batch_size, gen) -> list[np.ndarray]:
    """Teacher-forced logits along `sequences` (BOS + tokens), one token per decode_step through the
    cache; per row an array [len, V] of the logits at its real positions."""
    stepper = backend.stepper
    out: list[np.ndarray] = []
    row = 0
    for ids, pad in _batches(src_ids, src_pad, batch_size):
        n = ids.shape[0]
        seqs = [[gen["bos_id"]] + list(s) for s in sequences[row : row + n]]
        row += n
        length = max(len(s) for s in seqs)
        tokens = torch.full((n, length), gen["pad_id"], dtype=torch.long)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = torch.tensor(s)
        cross = stepper.cross_kv(stepper.encode(ids, pad))
        kv = None
        steps = []
        for t in range(length):
            positions = torch.full((n, 1), t, dtype=torch.long)
            self_pad = torch.zeros(n, t + 1, dtype=torch.bool)
            logits, kv = stepper.decode_step(tokens[:, t : t + 1], positions, kv, self_pad, cross, pad)
            steps.append(np.asarray(logits[:, 0], dtype=np.float32))
        stacked = np.stack(steps, axis=1)  # [n, length, V]
        out += [stacked[i, : len(s)] for i, s in enumerate(seqs)]
    return out


def _token_agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """(token-level agreement over max(len) positions, exact-match fraction)."""
    agree = total = exact = 0
    for x, y in zip(a, b):
        width = max(len(x), len(y), 1)
        agree += sum(1 for i in range(min(len(x), len(y))) if x[i] == y[i])
        total += width
        exact += int(x == y)
    return (agree / total if total else 1.0), (exact / len(a) if a else 1.0)


def _translator_parity(backends, config, model_dir, batch_sizes, samples, tolerances, seed, say, probe):
    from mmserve.tasks.translation import decode_ids, load_tokenizer

    gen = config.generation
    if not {"bos_id", "eos_id", "pad_id", "max_length"} <= set(gen):
        raise CheckpointError(Path(model_dir) / "config.json", "has no generation settings (bos/eos/pad ids, max_length)")
    tokenizer = load_tokenizer(model_dir) if config.tokenizer else None
    inputs = _translator_inputs(config, tokenizer, samples, seed)
    pairs, references = [], []
    for batch_size in batch_sizes:
        for kind, (src_ids, src_pad, targets) in inputs.items():
            say(f"translator: {kind} inputs, batch size {batch_size}: greedy + beam on {len(backends)} backends")
            decoded = {b.name: _decode(b, src_ids, src_pad, batch_size, gen) for b in backends}
            if targets is not None and tokenizer is not None:
                for b in backends:
                    d = decoded[b.name]
                    greedy_em = np.mean([decode_ids(tokenizer, t) == ref for t, ref in zip(d.greedy, targets)])
                    beam_em = np.mean([decode_ids(tokenizer, t) == ref for t, ref in zip(d.beam, targets)])
                    references.append(ReferenceResult(b.name, batch_size, {
                        "greedy_exact_match": float(greedy_em), "beam_exact_match": float(beam_em)}))
            sequences = decoded[backends[0].name].greedy
            say(f"translator: {kind} inputs, batch size {batch_size}: teacher-forced step logits")
            logits = {b.name: _step_logits(b, src_ids, src_pad, sequences, batch_size, gen) for b in backends}
            l32 = logits.get("torch") or _step_logits(probe.f32, src_ids, src_pad, sequences, batch_size, gen)
            l64 = _step_logits(probe.f64, src_ids, src_pad, sequences, batch_size, gen)
            e32 = max((_max_abs_diff(x, y) for x, y in zip(l32, l64)), default=0.0)
            for a, b in itertools.combinations(backends, 2):
                tol = tolerances[_pair_dtype(a, b)]
                err = Errors()
                for la, lb in zip(logits[a.name], logits[b.name]):
                    err.update(lb, la, tol, e32)
                g_tok, g_exact = _token_agreement(decoded[a.name].greedy, decoded[b.name].greedy)
                b_tok, b_exact = _token_agreement(decoded[a.name].beam, decoded[b.name].beam)
                row = PairResult(batch_size, kind, (a.name, b.name), tol, {
                    "logits_max_abs": err.max_abs,
                    "logits_max_rel": err.max_rel,
                    "logits_float32_error": e32,
                    "greedy_token_agreement": g_tok,
                    "greedy_exact_match": g_exact,
                    "beam_token_agreement": b_tok,
                    "beam_exact_match": b_exact,
                })
                if err.violations:
                    row.failures.append(_outside("step logits", err, tol, e32))
                if kind == HELDOUT and g_exact < 1.0:
                    row.failures.append(f"greedy outputs differ on held-out data (exact match {g_exact:.3f})")
                if kind == HELDOUT and b_exact < 1.0:
                    row.failures.append(f"beam outputs differ on held-out data (exact match {b_exact:.3f})")
                pairs.append(row)
    return pairs, references


# ---------------------------------------------------------------------------------------- driver


def _check_export_matches(model_dir: Path, onnx_dir: Path) -> None:
    """An export of other weights would 'fail parity' for the wrong reason: say so plainly."""
    from exporters.onnx.manifest import read_export_manifest

    exported = read_export_manifest(onnx_dir).get("source", {}).get("weights_sha256")
    current = verify_manifest(model_dir)["files"].get(WEIGHTS_NAME)
    if exported != current:
        raise CheckpointError(
            onnx_dir / "manifest.json",
            f"was exported from other weights ({str(exported)[:12]}…) than {model_dir} ({str(current)[:12]}…): "
            "export again or drop --onnx",
        )


def run_parity(
    model_dir: Path | str,
    backends: Sequence[str] = ("torch", "onnxruntime"),
    onnx_dir: Optional[Path | str] = None,
    batch_sizes: Sequence[int] = (1, 4, 16),
    samples: Optional[int] = None,
    tolerances: Optional[dict[str, Tolerance]] = None,
    tie_margin: float = DEFAULT_TIE_MARGIN,
    threads: int = 0,
    providers: Any = None,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> ParityReport:
    """Compare `backends` on the model; see the module docstring for inputs, metrics and criteria."""
    say = progress or (lambda _msg: None)
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if not (model_dir / WEIGHTS_NAME).is_file():
        raise CheckpointError(model_dir, f"has no {WEIGHTS_NAME}: parity needs the source model directory, not an export")
    if any(b < 1 for b in batch_sizes) or not batch_sizes:
        raise UserError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    names = list(dict.fromkeys(backends))
    if len(names) < 2:
        raise UserError(f"parity needs at least two backends, got {names}")
    samples = int(samples or max(batch_sizes))
    tolerances = tolerances or dict(DEFAULT_TOLERANCES)
    onnx_path = Path(onnx_dir) if onnx_dir is not None else None
    if onnx_path is not None:
        _check_export_matches(model_dir, onnx_path)
    ctx = ParityContext(model_dir, config, onnx_path, threads, providers, say)
    loaded: list[ParityBackend] = []
    skipped: dict[str, str] = {}
    try:
        for name in names:
            try:
                loaded.append(load_parity_backend(name, ctx))
            except KeyError:
                from .parity_backends import available_parity_backends

                raise UserError(f"unknown backend {name!r} (available: {', '.join(available_parity_backends())})")
            except BackendUnavailable as exc:
                skipped[name] = str(exc)
                say(f"{name}: SKIPPED ({exc})")
        if len(loaded) < 2:
            raise UserError(f"fewer than two backends can run here (skipped: {skipped}); nothing to compare")
        say("torch float32 and float64: the error float32 itself makes on these inputs")
        probe = _float32_probe(model_dir)
        if config.task == "image-classification":
            pairs, references = _classifier_parity(loaded, config, batch_sizes, samples, tolerances, tie_margin, seed,
                                                   say, probe)
        else:
            pairs, references = _translator_parity(loaded, config, model_dir, batch_sizes, samples, tolerances, seed,
                                                   say, probe)
    finally:
        ctx.cleanup()
    counted = {HELDOUT: 0, RANDOM: 0}
    for row in pairs:
        counted[row.inputs] = samples
    return ParityReport(model_dir, config.task, {b.name: b.description for b in loaded}, skipped, pairs,
                        references, counted, tolerances)
