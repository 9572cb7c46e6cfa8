"""Run an ONNX export directory on onnxruntime: `OnnxClassifier` and `OnnxSeq2SeqStepper`.

Both load a directory written by `mmserve export --format onnx` (manifest verified, so a tampered or
truncated graph is refused), read config.json for labels / generation settings, and create one
`InferenceSession` per graph. `OnnxSeq2SeqStepper` implements `mmserve.models.decoding.Seq2SeqStepper`
with torch tensors at its boundary, so mmserve's greedy/beam search and the server's batching drive
onnxruntime exactly as they drive the torch model.

Providers: CPUExecutionProvider by default; `providers="auto"` takes CUDAExecutionProvider first when
this onnxruntime build has it. Threads and the graph optimisation level are SessionOptions knobs
(`RuntimeOptions`); how threads are shared between onnxruntime and the torch code around it is ONE
policy, `thread_policy` / `apply_thread_policy` (see there), used by the CLI, parity and the server.
An export made with `--no-function-body` needs a MultiMax kernel: pass its custom op library
(`custom_op_library`), otherwise loading fails with a message saying so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import torch

from mmserve.checkpoints import CheckpointError, ModelDirConfig, read_config
from mmserve.errors import UserError

from .manifest import read_export_manifest

__all__ = [
    "RuntimeOptions",
    "ThreadPolicy",
    "thread_policy",
    "apply_thread_policy",
    "resolve_providers",
    "create_session",
    "OnnxClassifier",
    "OnnxSeq2SeqStepper",
    "load_onnx_model",
]

OptLevel = Literal["disable", "basic", "extended", "all"]
Providers = Union[None, str, Sequence[str]]


@dataclass(frozen=True)
class RuntimeOptions:
    """SessionOptions knobs. 0 threads = onnxruntime's default (one per physical core).

    `allow_spinning` None = the thread policy's choice (`thread_policy`): spinning off whenever the
    session may have more than one intra-op thread."""

    providers: Providers = None
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    optimization: OptLevel = "all"
    custom_op_library: Optional[Path] = None
    extra_session_config: dict[str, str] = field(default_factory=dict)
    allow_spinning: Optional[bool] = None


@dataclass(frozen=True)
class ThreadPolicy:
    """How N threads are used by one process that decodes: how many independent decode workers
    ("lanes": batches decoded at the same time, each its own search loop) and how each worker's
    threads are split between onnxruntime and torch.

    Measured on the 2-core machine (bundled translator, batches of 32, `benchmarks/bench_translate.py`
    and tests/test_thread_policy.py):

    - torch and onnxruntime both on 2 threads decoded 5-10x SLOWER than 1 thread: both keep idle worker
      threads spinning (onnxruntime's intra-op pool, torch's OpenMP team) and the search loop alternates
      between them every few microseconds, so each runtime's spinners steal the cores the other needs.
      Hence: no spinning when a session has more than one intra-op thread, and the torch glue around
      onnxruntime (log_softmax, top-k, cache reordering on small tensors) on ONE torch thread.
    - Even without the fight, a second intra-op thread barely pays on a small translator (0.8-1.0x of
      one thread at 32-128 rows per step: each op is a few microseconds of work). Two workers with one
      intra-op thread each, decoding different batches, ran at 1.6-1.9x: onnxruntime releases the GIL
      inside `run`, and the sessions are stateless between calls, so one session serves both. So for
      onnxruntime N threads = N workers x 1 intra-op thread, CTranslate2's `inter_threads` model.
      A caller with one batch only (or a large model whose matrix products do scale) asks for
      `workers=1` and gets N intra-op threads.
    - With the torch backend torch runs the model itself and gets every thread in one worker.
    """

    intra_op_threads: int
    torch_threads: int
    allow_spinning: bool
    workers: int = 1


def thread_policy(backend: str, threads: int, workers: Optional[int] = None) -> ThreadPolicy:
    """The split of `threads` (0 = the runtimes' defaults) when `backend` runs the model; `workers`
    None = the policy's choice (see ThreadPolicy), else that many workers sharing the threads."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers is None:  # torch: one worker with every thread; onnxruntime, native: one worker per thread
        workers = 1 if backend == "torch" else max(1, threads)
    per_worker = max(1, threads // workers) if threads else 0
    if backend in ("torch", "native"):
        # The native translator's GEMMs (oneDNN, MKL) take torch's thread count: one per worker.
        return ThreadPolicy(intra_op_threads=per_worker, torch_threads=per_worker, allow_spinning=False, workers=workers)
    return ThreadPolicy(intra_op_threads=per_worker, torch_threads=1, allow_spinning=per_worker == 1, workers=workers)


def apply_thread_policy(backend: str, threads: int, workers: Optional[int] = None) -> ThreadPolicy:
    """Set torch's thread count for this process by `thread_policy` (torch threads are process-wide;
    onnxruntime's are per session and come from `RuntimeOptions`). 0 leaves torch's default for the
    torch backend."""
    policy = thread_policy(backend, threads, workers)
    if policy.torch_threads > 0:
        torch.set_num_threads(policy.torch_threads)
    return policy


def resolve_providers(requested: Providers) -> list[str]:
    """None -> CPU; "auto" -> CUDA (if this build has it) then CPU; names are checked to exist."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested is None or requested == "cpu":
        return ["CPUExecutionProvider"]
    if requested == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    names = [requested] if isinstance(requested, str) else list(requested)
    missing = [p for p in names if p not in available]
    if missing:
        raise UserError(f"onnxruntime providers {missing} are not available here (available: {available})")
    return names


def _session_options(options: RuntimeOptions):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(options.intra_op_threads)
    so.inter_op_num_threads = int(options.inter_op_threads)
    spinning = options.allow_spinning
    if spinning is None:  # the policy: spin only when the session has a single intra-op thread
        spinning = thread_policy("onnxruntime", int(options.intra_op_threads), workers=1).allow_spinning
    config = {"session.intra_op.allow_spinning": "1" if spinning else "0",
              "session.inter_op.allow_spinning": "1" if spinning else "0"}
    config.update(options.extra_session_config)  # explicit entries win over the policy
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.optimization]
    if options.custom_op_library is not None:
        library = Path(options.custom_op_library)
        if not library.is_file():
            raise UserError(f"{library}: custom op library not found")
        so.register_custom_ops_library(str(library))
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    return so


def create_session(path: Path | str | bytes, options: RuntimeOptions = RuntimeOptions()):
    """An InferenceSession for a graph file (or serialized bytes) with the given options."""
    import onnxruntime as ort

    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, _session_options(options), providers=resolve_providers(options.providers))


class _OnnxModel:
    """Shared loading: verify the export, read its config, open the sessions lazily."""

    task: str

    def __init__(self, export_dir: Path | str, options: RuntimeOptions = RuntimeOptions(), verify: bool = True):
        self.directory = Path(export_dir)
        if not self.directory.is_dir():
            raise CheckpointError(self.directory, "not a directory (expected an ONNX export directory)")
        self.manifest = read_export_manifest(self.directory) if verify else {}
        self.config: ModelDirConfig = read_config(self.directory)
        if self.config.task != self.task:
            raise CheckpointError(
                self.directory / "config.json", f"is a {self.config.task!r} model, not {self.task!r}"
            )
        self.architecture = self.config.model_architecture()
        self.options = options
        has_bodies = self.manifest.get("options", {}).get("function_body", True)
        if not has_bodies and options.custom_op_library is None:
            raise UserError(
                f"{self.directory}: exported with --no-function-body, so onnxruntime has no MultiMax kernel "
                "for it; pass a custom op library or export again without --no-function-body"
            )
        self._sessions: dict[str, Any] = {}
        self.device = torch.device("cpu")

    def session(self, filename: str):
        if filename not in self._sessions:
            path = self.directory / filename
            if not path.is_file():
                raise CheckpointError(path, "missing from the export directory")
            self._sessions[filename] = create_session(path, self.options)
        return self._sessions[filename]

    @property
    def providers(self) -> list[str]:
        return resolve_providers(self.options.providers)

    def close(self) -> None:
        self._sessions.clear()


_TORCH_DTYPES = {np.float32: torch.float32, np.int64: torch.int64, np.bool_: torch.bool}


def _numpy(x: Union[np.ndarray, torch.Tensor], dtype) -> np.ndarray:
    """x as a C-contiguous numpy array of `dtype`, without a copy when it already is one.

    The decoder takes ~20 tensors per step; the fast path (a CPU tensor of the right dtype and
    layout: `.numpy()` shares its memory) costs ~1 us a tensor against ~3.5 us for the general one."""
    if isinstance(x, torch.Tensor):
        if x.dtype == _TORCH_DTYPES.get(dtype) and x.device.type == "cpu" and not x.requires_grad and x.is_contiguous():
            return x.numpy()
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


class OnnxClassifier(_OnnxModel):
    """model.onnx (probs, logits) and, on demand, explain.onnx (+ per-block attention weights)."""

    task = "image-classification"

    def run(self, pixel_values: Union[np.ndarray, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """pixel_values [B, C, H, W] float32 -> (probs [B, K], logits [B, K])."""
        probs, logits = self.session("model.onnx").run(["probs", "logits"], {"pixel_values": _numpy(pixel_values, np.float32)})
        return probs, logits

    __call__ = run

    def explain(self, pixel_values: Union[np.ndarray, torch.Tensor]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(probs, logits, [attention weights [B, H, N, N] per block]) from explain.onnx."""
        outputs = self.session("explain.onnx").run(None, {"pixel_values": _numpy(pixel_values, np.float32)})
        return outputs[0], outputs[1], list(outputs[2:])


KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class OnnxSeq2SeqStepper(_OnnxModel):
    """The translator step API on onnxruntime (encoder.onnx, cross_kv.onnx, decoder.onnx)."""

    task = "translation"

    def __init__(self, export_dir: Path | str, options: RuntimeOptions = RuntimeOptions(), verify: bool = True):
        super().__init__(export_dir, options, verify)
        from .configs import decoder_io_names

        arch = self.architecture
        self.num_layers = arch.decoder_layers
        self.num_heads = arch.num_heads
        self.head_dim = arch.d_model // arch.num_heads
        self._past, self._cross, self._present, _ = decoder_io_names(self.num_layers)
        self._outputs = ["logits", *self._present]
        self._local = threading.local()  # the last cross-attention feeds, per decoding thread

    def encode(self, src_ids: torch.Tensor, src_pad_mask: torch.Tensor) -> torch.Tensor:
        (memory,) = self.session("encoder.onnx").run(
            ["memory"], {"src_ids": _numpy(src_ids, np.int64), "src_pad_mask": _numpy(src_pad_mask, np.bool_)}
        )
        return torch.from_numpy(memory)

    def cross_kv(self, memory: torch.Tensor) -> KVCache:
        outputs = self.session("cross_kv.onnx").run(self._cross, {"memory": _numpy(memory, np.float32)})
        tensors = [torch.from_numpy(o) for o in outputs]
        return [(tensors[2 * i], tensors[2 * i + 1]) for i in range(self.num_layers)]

    def decode_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        self_kv: Optional[KVCache],
        self_pad_mask: torch.Tensor,
        cross_kv: KVCache,
        src_pad_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, KVCache]:
        batch = tokens.shape[0]
        feeds = {
            "tokens": _numpy(tokens, np.int64),
            "positions": _numpy(positions, np.int64),
            "self_pad_mask": _numpy(self_pad_mask, np.bool_),
            "src_pad_mask": _numpy(src_pad_mask, np.bool_),
        }
        if self_kv:
            past = [t for kv in self_kv for t in kv]
        else:  # first step: an empty cache (length 0) is what decoder.onnx takes
            empty = np.zeros((batch, self.num_heads, 0, self.head_dim), dtype=np.float32)
            past = [empty] * (2 * self.num_layers)
        feeds.update({name: _numpy(t, np.float32) for name, t in zip(self._past, past)})
        feeds.update(self._cross_feeds(cross_kv))
        outputs = self.session("decoder.onnx").run(self._outputs, feeds)
        present = [torch.from_numpy(o) for o in outputs[1:]]
        return torch.from_numpy(outputs[0]), [(present[2 * i], present[2 * i + 1]) for i in range(self.num_layers)]

    def _cross_feeds(self, cross_kv: KVCache) -> dict[str, np.ndarray]:
        """The cross-attention inputs as numpy, converted once per cache: the search passes the same
        list object step after step until rows leave, so the last conversion is reused (keyed by the
        list's identity, and kept with the list itself so the identity cannot be recycled). Per thread:
        decode workers share one stepper, each with its own batch."""
        cached = getattr(self._local, "cross", None)
        if cached is not None and cached[0] is cross_kv:
            return cached[1]
        feeds = {name: _numpy(t, np.float32) for name, t in zip(self._cross, (t for kv in cross_kv for t in kv))}
        self._local.cross = (cross_kv, feeds)
        return feeds

    @staticmethod
    def reorder_kv(kv: KVCache, index: torch.Tensor) -> KVCache:
        return [(k.index_select(0, index), v.index_select(0, index)) for k, v in kv]


def load_onnx_model(export_dir: Path | str, options: RuntimeOptions = RuntimeOptions()) -> Union[OnnxClassifier, OnnxSeq2SeqStepper]:
    """The runner matching the export's task."""
    task = read_config(export_dir).task
    if task == "image-classification":
        return OnnxClassifier(export_dir, options)
    if task == "translation":
        return OnnxSeq2SeqStepper(export_dir, options)
    raise CheckpointError(Path(export_dir) / "config.json", f"task {task!r} has no ONNX runner")
