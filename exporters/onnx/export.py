"""`export_onnx`: an mmserve model directory -> an ONNX export directory.

    OUT_DIR/
      model.onnx, explain.onnx                      (image-classification)
      encoder.onnx, cross_kv.onnx, decoder.onnx     (translation)
      portable/*.onnx                               the same graphs with the MultiMax bodies inlined
                                                    (standard ops only: OpenVINO, onnx.reference, ...);
                                                    left out with ExportOptions(portable=False)
      config.json                                   copied from the model directory
      tokenizer.json / labels.txt                   the vocabulary / class names, beside the graphs
      README.md                                     the model card, when there is one
      manifest.json                                 sha256 of every file + export metadata (manifest.py)

The directory is built in a temp dir next to OUT_DIR and moved into place only after every graph
passed onnx.checker and the onnxruntime-vs-torch check, so a failed export never leaves a
half-written directory behind that a server could pick up.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import onnx
import torch

from mmserve.checkpoints import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_model_dir, read_config, verify_manifest
from mmserve.checkpoints.model_dir import CARD_NAME

from .configs import onnx_configs_for
from .convert import DEFAULT_OPSET, MIN_OPSET, convert_module, to_proto
from .functions import remove_functions
from .manifest import exporter_versions, is_current, write_export_manifest
from .portable import inline_multimax, portable_filename
from .validate import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    ExportValidationError,
    check_model,
    modulator_ops_feeding_multimax,
    validate_outputs,
)

__all__ = ["ExportOptions", "GraphReport", "ExportResult", "export_onnx", "LABELS_NAME"]

LABELS_NAME = "labels.txt"


@dataclass(frozen=True)
class ExportOptions:
    """Options that change the exported bytes (recorded in the manifest, compared by --skip-if-current)."""

    opset: int = DEFAULT_OPSET
    function_body: bool = True
    portable: bool = True

    def __post_init__(self) -> None:
        if self.opset < MIN_OPSET:
            raise ValueError(f"--opset {self.opset}: mmserve exports need opset >= {MIN_OPSET}")


@dataclass
class GraphReport:
    filename: str
    multimax_nodes: int
    inputs: list[str]
    outputs: list[str]
    portable: str | None = None
    """File name of the inlined, standard-ops copy (None when exported with portable=False)."""
    validation: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """{graph file: {output: max abs errors onnx_vs_float64, torch_vs_float64, onnx_vs_torch}}."""

    def worst(self, key: str) -> float:
        """The largest recorded error of one kind over every validated graph and output."""
        return max((errs[key] for outputs in self.validation.values() for errs in outputs.values()), default=0.0)


@dataclass
class ExportResult:
    out_dir: Path
    skipped: bool
    reason: str
    graphs: list[GraphReport] = field(default_factory=list)


def _source_info(model_dir: Path) -> dict[str, str]:
    manifest = verify_manifest(model_dir)
    files = manifest["files"]
    if WEIGHTS_NAME not in files:
        raise CheckpointError(model_dir / "manifest.json", f"does not list {WEIGHTS_NAME}")
    return {
        "model_dir": str(model_dir.resolve()),
        "weights_sha256": files[WEIGHTS_NAME],
        "config_sha256": files.get(CONFIG_NAME, ""),
    }


def _side_files(model_dir: Path, config, staging: Path) -> None:
    shutil.copyfile(model_dir / CONFIG_NAME, staging / CONFIG_NAME)
    if (model_dir / CARD_NAME).is_file():
        shutil.copyfile(model_dir / CARD_NAME, staging / CARD_NAME)
    if config.tokenizer:
        source = model_dir / config.tokenizer
        target = staging / config.tokenizer
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():  # a folder of side files (fairseq dictionaries + BPE of imported translators)
            shutil.copytree(source, target)
        elif source.is_file():
            shutil.copyfile(source, target)
        else:
            raise CheckpointError(source, "named by config.json's 'tokenizer' but missing")
    if config.labels:
        (staging / LABELS_NAME).write_text("".join(f"{label}\n" for label in config.labels))


def _check_replaceable(out_dir: Path) -> None:
    """Only an earlier export (or nothing, or an empty dir) may be replaced: never a user's files."""
    if out_dir.exists() and not (out_dir / "manifest.json").is_file():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise CheckpointError(out_dir, "exists and is not an export directory: refusing to replace it")


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished export into place; an old export is renamed away first and deleted after,
    so readers see the old or the new directory, apart from the instant between two renames."""
    staging.chmod(0o755)
    for path in staging.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    _check_replaceable(out_dir)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{staging.name}")
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _export_graph(graph_config, staging: Path, options: ExportOptions, name: str, validate: bool,
                  tolerance: tuple[float, float], say: Callable[[str], None]) -> tuple[GraphReport, int]:
    """Convert, check and save one graph; returns its report and IR version."""
    path = staging / graph_config.filename
    say(f"{graph_config.filename}: tracing and converting")
    args = graph_config.generate_dummy_inputs(graph_config.export_shapes, torch.Generator().manual_seed(0))
    spec = graph_config.spec()
    converted = convert_module(graph_config.graph_module(), args, spec, opset=options.opset, function_body=True,
                               doc=f"{name}: {graph_config.description}")
    with_bodies = to_proto(converted)
    with_bodies.producer_name = "mmserve"
    check_model(with_bodies, path)
    chains = modulator_ops_feeding_multimax(with_bodies)
    if chains:
        raise ExportValidationError(f"{path}: modulator ops feed a MultiMax node: {chains[:3]}")
    report = GraphReport(graph_config.filename, converted.multimax_count, spec.input_names, spec.output_names)
    graphs = {graph_config.filename: with_bodies}
    if options.portable:
        report.portable = portable_filename(graph_config.filename)
        portable = inline_multimax(with_bodies)
        check_model(portable, staging / report.portable)
        graphs[report.portable] = portable
    if validate:
        # A body-less export is validated with the bodies attached: everything but the missing kernel
        # is checked here; the kernel itself is checked by the plugin runtime's own parity run.
        say(f"{graph_config.filename}: onnxruntime vs torch float32 and float64")
        atol, rtol = tolerance
        checked = validate_outputs(graph_config, graphs, path, atol=atol, rtol=rtol)
        report.validation = {f: {o: e.as_dict() for o, e in outputs.items()} for f, outputs in checked.items()}
    if options.portable:
        (staging / report.portable).parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(graphs[report.portable], str(staging / report.portable))
    final = with_bodies
    if not options.function_body:
        remove_functions(converted.model)
        final = to_proto(converted)
        final.producer_name = "mmserve"
        check_model(final, path)
    onnx.save_model(final, str(path))
    return report, final.ir_version


def export_onnx(
    model_dir: Path | str,
    out_dir: Path | str,
    options: ExportOptions = ExportOptions(),
    skip_if_current: bool = False,
    validate: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    progress: Optional[Callable[[str], None]] = None,
) -> ExportResult:
    """Export every graph of the model's task; see the module docstring for the layout.

    `atol`/`rtol` bound each output's distance from a float64 run of the torch module beyond the error
    torch float32 itself makes there (exporters/onnx/validate.py); they are not export options (the
    bytes do not depend on them), so --skip-if-current ignores them."""
    if atol < 0 or rtol < 0:
        raise ValueError(f"tolerances must be >= 0 (atol {atol}, rtol {rtol})")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    say = progress or (lambda _msg: None)
    config = read_config(model_dir)
    source = _source_info(model_dir)
    option_record = asdict(options)
    if skip_if_current:
        current, why = is_current(out_dir, source, option_record)
        if current:
            return ExportResult(out_dir, True, why)
        say(f"exporting: {why}")
    _check_replaceable(out_dir)
    loaded = load_model_dir(model_dir)
    configs = onnx_configs_for(config.task, loaded.model, loaded.architecture)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    reports: list[GraphReport] = []
    ir_version = None
    try:
        for graph_config in configs:
            report, ir_version = _export_graph(graph_config, staging, options, config.name, validate, (atol, rtol), say)
            reports.append(report)
        _side_files(model_dir, config, staging)
        write_export_manifest(
            staging,
            {
                "task": config.task,
                "name": config.name,
                "opset": options.opset,
                "ir_version": ir_version,
                "options": option_record,
                "exporter": exporter_versions(),
                "source": source,
                "graphs": {r.filename: {k: v for k, v in asdict(r).items() if k != "filename"} for r in reports},
            },
        )
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out_dir, False, "exported", reports)


def export_for_cli(
    model_dir: Path,
    out_dir: Path,
    *,
    opset: Optional[int] = None,
    function_body: bool = True,
    portable: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    skip_if_current: bool = False,
    progress: Optional[Callable[[str], None]] = None,
) -> ExportResult:
    """The `mmserve export --format onnx` entry point (see exporters/formats.py)."""
    from mmserve.errors import UserError

    if atol < 0 or rtol < 0:
        raise UserError(f"--atol/--rtol must be >= 0, got atol {atol:g}, rtol {rtol:g}")
    try:
        options = ExportOptions(opset=opset or DEFAULT_OPSET, function_body=function_body, portable=portable)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return export_onnx(model_dir, out_dir, options, skip_if_current=skip_if_current, atol=atol, rtol=rtol,
                       progress=progress)
