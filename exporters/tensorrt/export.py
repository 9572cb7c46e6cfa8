"""`export_tensorrt`: an mmserve model directory -> a TensorRT export directory.

    OUT_DIR/
      model.fp32.engine, model.fp16.engine, ...      one engine per ONNX graph and precision
                                                     (translator: encoder, cross_kv, decoder)
      config.json, tokenizer.json / labels.txt       copied, so the directory serves on its own
      onnx/                                          the `--no-function-body` ONNX export they came from
      manifest.json                                  sha256 of every file + TensorRT version, GPU,
                                                     precisions, optimisation profiles, plugin mode

Steps: ONNX export without function bodies (exporters.onnx) -> `graph.prepare_for_tensorrt` (MultiMax
nodes -> plugin nodes) -> fp16 copy for the fp16 engine (`builder.to_fp16`) -> optimisation profile
from the dims' (min, opt, max) -> `builder.build_engine`. Built in a temp dir beside OUT_DIR and moved
into place at the end, so a failed build never leaves a half-written directory behind.

Engines are specific to the TensorRT version and the GPU model that built them; the manifest records
both so a server can refuse a mismatch with a clear message rather than a deserialisation error.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import onnx

from mmserve.checkpoints import CONFIG_NAME, CheckpointError, read_config, write_manifest
from mmserve.checkpoints.manifest import verify_format_manifest, verify_manifest
from mmserve.errors import UserError
from mmserve.versions import package_versions
from plugins.tensorrt.availability import import_tensorrt, require_cuda

from .builder import build_engine, gpu_description, to_fp16
from .graph import prepare_for_tensorrt
from .profiles import DimRange, input_profiles

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ONNX_SUBDIR",
    "TensorRTExportOptions",
    "TensorRTExportResult",
    "default_dim_ranges",
    "engine_filename",
    "export_tensorrt",
    "export_for_cli",
    "is_current",
    "read_tensorrt_manifest",
]

FORMAT = "mmserve-tensorrt"
FORMAT_VERSION = 1
ONNX_SUBDIR = "onnx"
PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
DEFAULT_BATCH: dict[str, DimRange] = {
    "image-classification": DimRange(1, 8, 32),
    # beam search runs batch x beam rows through the decoder (16 sources x beam 4 at the top)
    "translation": DimRange(1, 16, 128),
}


@dataclass(frozen=True)
class TensorRTExportOptions:
    precisions: tuple[str, ...] = PRECISIONS
    batch: Optional[DimRange] = None  # None: the task's default (DEFAULT_BATCH)
    dims: dict[str, DimRange] = field(default_factory=dict)  # overrides for src/tokens/past/...
    workspace_mib: int = 1024
    aot: bool = True  # embed the compiled kernel: the engine then runs without Python
    opset: Optional[int] = None
    verbose: bool = False

    def __post_init__(self) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            raise UserError(f"--precision: expected a subset of {', '.join(PRECISIONS)}, got {list(self.precisions)}")
        if self.workspace_mib < 16:
            raise UserError(f"--workspace-mib: at least 16 MiB, got {self.workspace_mib}")


@dataclass
class EngineReport:
    """One line of `mmserve export` output per engine (the CLI reads filename / multimax_nodes)."""

    filename: str
    multimax_nodes: int
    precision: str
    build_seconds: float


@dataclass
class TensorRTExportResult:
    out_dir: Path
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: bool = False
    reason: str = "built"

    @property
    def graphs(self) -> list[EngineReport]:
        return [
            EngineReport(info["file"], len(entry["multimax_nodes"]), precision, info["build_seconds"])
            for entry in self.engines.values()
            for precision, info in entry["engines"].items()
        ]


def engine_filename(onnx_filename: str, precision: str) -> str:
    """"model.onnx", "fp16" -> "model.fp16.engine"."""
    return f"{Path(onnx_filename).stem}.{precision}.engine"


def default_dim_ranges(
    config: Any, batch: Optional[DimRange] = None, overrides: Optional[dict[str, DimRange]] = None
) -> dict[str, DimRange]:
    """Ranges for the dims the ONNX export names: `batch` for every task; for the translator the
    source length, new tokens per decode step and cached past, bounded by the model's positions."""
    ranges: dict[str, DimRange] = {"batch": batch or DEFAULT_BATCH.get(config.task, DimRange(1, 8, 32))}
    if config.task == "translation":
        limit = int(config.model_architecture().max_positions)
        ranges.update({
            "src": DimRange(1, min(16, limit), limit),
            "tokens": DimRange(1, 1, limit),
            "past": DimRange(0, min(16, limit - 1), limit),
        })
    ranges.update(overrides or {})
    if "past" in ranges and "tokens" in ranges:
        # the decoder's self_pad_mask covers the cached and the new tokens
        past, tokens = ranges["past"], ranges["tokens"]
        ranges.setdefault("past_and_tokens", DimRange(past.min + tokens.min, past.opt + tokens.opt, past.max + tokens.max))
    return ranges


def _versions() -> dict[str, str]:
    return package_versions(("mmserve", "torch", "triton", "onnx", "onnxconverter-common", "tensorrt"))


def _publish(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        if not (out_dir / "manifest.json").is_file() and any(out_dir.iterdir()):
            raise CheckpointError(out_dir, "exists, is not empty and is not an export directory: refusing to replace it")
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def export_tensorrt(
    model_dir: Path | str,
    out_dir: Path | str,
    options: TensorRTExportOptions = TensorRTExportOptions(),
    progress: Optional[Callable[[str], None]] = None,
) -> TensorRTExportResult:
    """Build fp32/fp16 engines for every graph of the model; see the module docstring."""
    trt = import_tensorrt()  # one clear line when TensorRT or the GPU is missing, before any work
    require_cuda()
    from exporters.onnx import ExportOptions, export_onnx
    from exporters.onnx.convert import DEFAULT_OPSET

    say = progress or (lambda _msg: None)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = read_config(model_dir)
    ranges = default_dim_ranges(config, options.batch, options.dims)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    result = TensorRTExportResult(out_dir)
    try:
        onnx_dir = staging / ONNX_SUBDIR
        say("ONNX export without function bodies")
        onnx_options = ExportOptions(opset=options.opset or DEFAULT_OPSET, function_body=False)
        export_onnx(model_dir, onnx_dir, onnx_options, validate=False, progress=say)
        onnx_manifest = verify_manifest(onnx_dir)
        for name in (CONFIG_NAME, "labels.txt", "README.md", config.tokenizer):
            if name and (onnx_dir / name).is_file():
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(onnx_dir / name, target)
            elif name and (onnx_dir / name).is_dir():  # fairseq-text/ of imported translators
                shutil.copytree(onnx_dir / name, staging / name)

        work = Path(tempfile.mkdtemp(prefix="prepared.", dir=staging.parent))
        try:
            for graph_name in sorted(onnx_manifest.get("graphs", {})):
                source = onnx_dir / graph_name
                prepared = prepare_for_tensorrt(onnx.load(str(source)), aot=options.aot, source=str(source))
                profiles = input_profiles(prepared.model, ranges, source=str(source))
                entry: dict[str, Any] = {
                    "onnx": f"{ONNX_SUBDIR}/{graph_name}",
                    "multimax_nodes": [asdict(n) for n in prepared.nodes],
                    "profile": {p.name: p.as_dict() for p in profiles},
                    "engines": {},
                }
                for precision in options.precisions:
                    graph = prepared.model if precision == "fp32" else to_fp16(prepared.model)
                    graph_path = work / f"{Path(graph_name).stem}.{precision}.onnx"
                    onnx.save_model(graph, str(graph_path))
                    filename = engine_filename(graph_name, precision)
                    say(f"{filename}: building ({precision})")
                    built = build_engine(
                        graph_path, staging / filename, profiles, precision=precision,  # type: ignore[arg-type]
                        workspace_bytes=options.workspace_mib << 20, verbose=options.verbose,
                    )
                    entry["engines"][precision] = {
                        "file": filename,
                        "build_seconds": round(built.seconds, 2),
                        "plugin_layers": built.plugin_layers,
                        "inputs": built.inputs,
                        "outputs": built.outputs,
                        "notes": built.notes,
                    }
                result.engines[graph_name] = entry
        finally:
            shutil.rmtree(work, ignore_errors=True)

        write_manifest(staging, {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "task": config.task,
            "name": config.name,
            "tensorrt_version": str(trt.__version__),
            "gpu": gpu_description(),
            "precisions": list(options.precisions),
            "fp16_method": "ONNX graph converted to fp16 (onnxconverter-common, float32 I/O kept), strongly typed network",
            "plugin": {"name": "mmserve::MultiMax / mmserve::MultiMaxMasked", "aot": options.aot},
            "dims": {k: v.as_dict() for k, v in ranges.items()},
            "workspace_mib": options.workspace_mib,
            "options": _option_record(options),
            "graphs": result.engines,
            "source": onnx_manifest.get("source", {}),
            "versions": _versions(),
        })
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _option_record(options: TensorRTExportOptions) -> dict[str, Any]:
    return {
        "precisions": list(options.precisions),
        "batch": options.batch.as_dict() if options.batch else None,
        "dims": {k: v.as_dict() for k, v in sorted(options.dims.items())},
        "workspace_mib": options.workspace_mib,
        "aot": options.aot,
        "opset": options.opset,
    }


def is_current(out_dir: Path, model_dir: Path, options: TensorRTExportOptions) -> tuple[bool, str]:
    """(True, why) when out_dir holds verified engines of the same weights/config, built with the same
    options by this TensorRT version on this GPU model."""
    out_dir = Path(out_dir)
    if not (out_dir / "manifest.json").is_file():
        return False, "no previous export"
    try:
        manifest = read_tensorrt_manifest(out_dir)
        source = verify_manifest(Path(model_dir))["files"]
    except CheckpointError as exc:
        return False, f"previous export does not verify ({exc.problem})"
    previous = manifest.get("source", {})
    if previous.get("weights_sha256") != source.get("model.safetensors") or previous.get("config_sha256") != source.get(CONFIG_NAME):
        return False, "source weights or config changed"
    if manifest.get("options") != _option_record(options):
        return False, "export options changed"
    if manifest.get("tensorrt_version") != str(import_tensorrt().__version__):
        return False, "TensorRT version changed"
    if manifest.get("gpu") != gpu_description():
        return False, "GPU model changed (engines are specific to it)"
    return True, "up to date (same weights, config, options, TensorRT version and GPU; all hashes verify)"


def export_for_cli(
    model_dir: Path,
    out_dir: Path,
    *,
    opset: Optional[int] = None,
    function_body: bool = True,
    skip_if_current: bool = False,
    progress: Optional[Callable[[str], None]] = None,
    precision: str = "fp32,fp16",
    batch: Optional[str] = None,
    workspace_mib: int = 1024,
    aot: bool = True,
) -> TensorRTExportResult:
    """`mmserve export --format tensorrt` (exporters.formats). `function_body` is accepted for the shared
    CLI signature and ignored: engines are always built from the export without function bodies."""
    from .profiles import parse_range

    import_tensorrt()
    require_cuda()
    options = TensorRTExportOptions(
        precisions=tuple(p.strip() for p in precision.split(",") if p.strip()),
        batch=parse_range(batch, "--batch") if batch else None,
        workspace_mib=workspace_mib,
        aot=aot,
        opset=opset,
    )
    if skip_if_current:
        current, why = is_current(Path(out_dir), Path(model_dir), options)
        if current:
            return TensorRTExportResult(Path(out_dir), skipped=True, reason=why)
    return export_tensorrt(model_dir, out_dir, options, progress)


def read_tensorrt_manifest(directory: Path | str) -> dict[str, Any]:
    """The verified manifest of a TensorRT export directory (every file's sha256 checked)."""
    return verify_format_manifest(Path(directory), FORMAT, "mmserve TensorRT export",
                                  "build one with `mmserve export MODEL_DIR --format tensorrt --out DIR`")


def available_precisions(manifest: dict[str, Any]) -> Sequence[str]:
    return list(manifest.get("precisions", []))
