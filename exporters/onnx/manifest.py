"""The export directory's manifest.json: what was exported, from what, with which tools and options.

Reuses `mmserve.checkpoints.write_manifest` (sha256 of every file) and adds:

    format, format_version     "mmserve-onnx", 1
    task, name                 from the source config.json
    opset, ir_version          of the graphs
    options                    the export options that change the files (opset, function body, portable)
    exporter                   versions of mmserve, torch, onnx, onnxscript, onnx-ir, onnxruntime
    source                     the source directory, its weights' and config's sha256
    graphs                     per graph: inputs, outputs, MultiMax node count, `portable` (the file
                               name of its inlined copy, or null) and `validation`: per graph file
                               (custom-node and portable) and output, the max abs errors the export
                               check measured (onnx_vs_float64, torch_vs_float64, onnx_vs_torch)

`is_current` is what `--skip-if-current` asks: same weights and config, same options, same exporter
versions, and every file still matches its hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmserve.checkpoints import CheckpointError, write_manifest
from mmserve.checkpoints.manifest import read_manifest, verify_format_manifest
from mmserve.versions import package_versions

__all__ = ["FORMAT", "FORMAT_VERSION", "exporter_versions", "write_export_manifest", "is_current", "read_export_manifest"]

FORMAT = "mmserve-onnx"
FORMAT_VERSION = 1
_TOOLS = ("mmserve", "torch", "onnx", "onnxscript", "onnx-ir", "onnxruntime")


def exporter_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the exported bytes."""
    return package_versions(_TOOLS)


def write_export_manifest(directory: Path, extra: dict[str, Any]) -> dict[str, Any]:
    return write_manifest(directory, {"format": FORMAT, "format_version": FORMAT_VERSION, **extra})


def read_export_manifest(directory: Path | str) -> dict[str, Any]:
    """The verified manifest of an export directory (every file's sha256 checked)."""
    return verify_format_manifest(Path(directory), FORMAT, "mmserve ONNX export",
                                  "export one with `mmserve export MODEL_DIR --format onnx --out DIR`")


def is_current(out_dir: Path, source: dict[str, Any], options: dict[str, Any]) -> tuple[bool, str]:
    """(True, why) when out_dir holds a verified export of the same source with the same options."""
    out_dir = Path(out_dir)
    if not (out_dir / "manifest.json").is_file():
        return False, "no previous export"
    try:
        read_manifest(out_dir)
        manifest = read_export_manifest(out_dir)
    except CheckpointError as exc:
        return False, f"previous export does not verify ({exc.problem})"
    previous = manifest.get("source", {})
    for key in ("weights_sha256", "config_sha256"):
        if previous.get(key) != source.get(key):
            return False, f"source {key.split('_')[0]} changed"
    if manifest.get("options") != options:
        return False, "export options changed"
    if manifest.get("exporter") != exporter_versions():
        return False, "exporter versions changed"
    return True, "up to date (same weights, config, options and exporter versions; all hashes verify)"
