"""Installed package versions, for manifests and model cards (what produced these bytes).

One lookup for every place that records versions, so a missing package reads the same everywhere.
"""

from __future__ import annotations

from importlib import metadata
from typing import Iterable

__all__ = ["package_version", "package_versions"]


def package_version(name: str, missing: str = "not installed") -> str:
    """The installed distribution's version, or `missing` when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return missing


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """{name: version} for each package ("not installed" where missing)."""
    return {name: package_version(name) for name in names}
