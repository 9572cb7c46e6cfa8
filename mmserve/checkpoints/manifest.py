"""`manifest.json`: the sha256 of every file in a model or export directory.

Loading verifies every hash so a truncated download or an edited weight file is refused with a clear
message instead of silently serving a different model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import CheckpointError

__all__ = ["MANIFEST_NAME", "sha256_file", "write_manifest", "read_manifest", "verify_manifest", "verify_format_manifest"]

MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed so large graphs do not load into memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _listed_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME and "__pycache__" not in p.parts
    )


def write_manifest(directory: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file under `directory` and write manifest.json; `extra` adds top-level metadata."""
    directory = Path(directory)
    files = {p.relative_to(directory).as_posix(): sha256_file(p) for p in _listed_files(directory)}
    manifest = {"files": files, **(extra or {})}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse manifest.json, with a clear error when it is missing or malformed."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(path, "missing: every model directory needs a manifest with the files' sha256")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(path, "has no 'files' mapping of file name to sha256")
    return manifest


def verify_manifest(directory: Path) -> dict[str, Any]:
    """Check that every listed file exists and matches its sha256; return the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for name, expected in manifest["files"].items():
        path = directory / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise CheckpointError(directory / MANIFEST_NAME, f"lists a path outside the directory: {name!r}")
        if not path.is_file():
            raise CheckpointError(path, "listed in manifest.json but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(
                path, f"sha256 mismatch (manifest says {expected[:12]}…, file is {actual[:12]}…): "
                "the file is corrupt or was modified after the manifest was written"
            )
    return manifest


def verify_format_manifest(directory: Path, expected_format: str, what: str, remedy: str) -> dict[str, Any]:
    """verify_manifest, then refuse a directory of another kind: export directories (ONNX, TensorRT)
    share the manifest mechanism and differ only in their `format` field.

    `what` names the expected kind ("mmserve ONNX export"), `remedy` says how to make one.
    """
    manifest = verify_manifest(directory)
    if manifest.get("format") != expected_format:
        raise CheckpointError(
            Path(directory) / MANIFEST_NAME,
            f"is not an {what} (format {manifest.get('format')!r}); {remedy}",
        )
    return manifest
