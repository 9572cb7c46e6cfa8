"""Build (once, cached) and load the fused MultiMax C++ kernel.

The kernel is compiled on the machine that runs it, on first use, with `torch.utils.cpp_extension`
(ninja). The build directory is keyed by a hash of everything that changes the binary (source, torch
version, compiler, flags, CPU model and ISA flags, Python), so a cache shared between machines or
torch upgrades never loads a stale or illegal-instruction binary:

    $MMSERVE_KERNEL_CACHE or $XDG_CACHE_HOME/mmserve/kernels or ~/.cache/mmserve/kernels
        /<key>/mmserve_multimax_cpu_<key>.so   (+ build.ninja, objects, build.json once it succeeded)

A finished build (build.json present) is loaded directly with `torch.ops.load_library`: no compiler
or ninja is needed to *reuse* it.

Threading: `at::parallel_for` is an inline OpenMP construct when torch is built with OpenMP, so the
kernel is compiled with -fopenmp and linked against the very OpenMP runtime torch already loaded
(found in /proc/self/maps or torch/lib). Linking the system libgomp instead could start a second
thread pool that fights torch's for the cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

__all__ = ["BuildInfo", "cache_root", "build", "load", "SOURCE", "SOURCES", "HEADERS"]

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
SOURCES = [_HERE / "multimax_cpu.cpp", _HERE / "attention_cpu.cpp", _HERE / "translator_cpu.cpp"]
HEADERS = [_HERE / "multimax_row.h", _HERE / "native_linear.h"]
SOURCE = SOURCES[0]
_NAMESPACE = "mmserve_cpu"
_lock = threading.Lock()
_loaded: Optional["BuildInfo"] = None


@dataclass
class BuildInfo:
    """Where the kernel lives and how it was built (printed by `mmserve kernels build`)."""

    library: str
    directory: str
    key: str
    compiled_now: bool
    seconds: float
    compiler: str
    cflags: list[str] = field(default_factory=list)
    ldflags: list[str] = field(default_factory=list)
    openmp_runtime: Optional[str] = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def cache_root() -> Path:
    """The kernel cache directory (not created here)."""
    explicit = os.environ.get("MMSERVE_KERNEL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmserve" / "kernels"


def _compiler() -> str:
    from torch.utils.cpp_extension import get_cxx_compiler

    cxx = get_cxx_compiler()
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler found ({cxx!r}; set CXX to use another one)")
    return cxx


def _compiler_version(cxx: str) -> str:
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.splitlines()[0] if out.stdout else cxx


def _accepts(cxx: str, flags: list[str]) -> bool:
    """Whether the compiler accepts these flags (compiles an empty translation unit)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text("int mmserve_probe() { return 0; }\n")
        cmd = [cxx, *flags, "-c", str(src), "-o", str(Path(tmp) / "probe.o")]
        try:
            return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def _openmp_runtime() -> Optional[str]:
    """Path of the OpenMP runtime torch itself uses, or None when torch is not built with OpenMP."""
    if not torch.backends.openmp.is_available():
        return None
    pattern = re.compile(r"/(libgomp|libiomp5|libomp)[^/]*\.so[^/]*$")
    try:  # already mapped into this process by libtorch_cpu
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip() if len(line.split()) >= 6 else ""
                if pattern.search(path) and os.path.exists(path):
                    return path
    except OSError:
        pass
    torch_lib = Path(torch.__file__).parent / "lib"
    for candidate in sorted(torch_lib.glob("lib*omp*.so*")):
        if pattern.search(str(candidate)):
            return str(candidate)
    return None


def _cpu_signature() -> str:
    """CPU model + ISA flags: -march=native binaries are only valid on the same kind of CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        return f"{model.group(1) if model else ''}|{flags.group(1) if flags else ''}"
    except OSError:
        return f"{platform.machine()}|{platform.processor()}"


def _flags(cxx: str) -> tuple[list[str], list[str], Optional[str]]:
    cflags = ["-O3", "-DNDEBUG"]
    march = os.environ.get("MMSERVE_CPU_KERNEL_MARCH", "native")
    if march and march != "none" and _accepts(cxx, [f"-march={march}"]):
        cflags.append(f"-march={march}")
    ldflags: list[str] = []
    runtime = _openmp_runtime()
    if runtime is not None and _accepts(cxx, ["-fopenmp"]):
        cflags.append("-fopenmp")
        ldflags += [runtime, f"-Wl,-rpath,{Path(runtime).parent}"]
    elif _accepts(cxx, ["-fopenmp-simd"]):
        cflags.append("-fopenmp-simd")  # vectorisation pragmas only; rows then run on one thread
        if torch.backends.openmp.is_available():
            log.warning("torch's OpenMP runtime was not found: the CPU kernel will run single-threaded")
    cflags += os.environ.get("MMSERVE_CPU_KERNEL_CFLAGS", "").split()
    return cflags, ldflags, runtime


def _key(cxx: str, cflags: list[str], ldflags: list[str]) -> str:
    h = hashlib.sha256()
    for part in (
        *(path.read_bytes() for path in SOURCES + HEADERS),
        torch.__version__.encode(),
        _compiler_version(cxx).encode(),
        json.dumps([cflags, ldflags]).encode(),
        _cpu_signature().encode(),
        sys.version.encode(),
        platform.platform().encode(),
    ):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def build(verbose: bool = False) -> BuildInfo:
    """Compile the kernel unless a finished build for this exact configuration is cached; load it."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        start = time.perf_counter()
        cxx = _compiler()
        cflags, ldflags, runtime = _flags(cxx)
        key = _key(cxx, cflags, ldflags)
        name = f"mmserve_multimax_cpu_{key}"
        directory = cache_root() / key
        library = directory / f"{name}.so"
        stamp = directory / "build.json"
        compiled_now = False
        if stamp.exists() and library.exists():
            torch.ops.load_library(str(library))
        else:
            from torch.utils.cpp_extension import load as load_extension

            directory.mkdir(parents=True, exist_ok=True)
            with _ninja_on_path():
                load_extension(
                    name=name,
                    sources=[str(path) for path in SOURCES],
                    extra_include_paths=[str(_HERE)],
                    extra_cflags=cflags,
                    extra_ldflags=ldflags,
                    build_directory=str(directory),
                    is_python_module=False,
                    verbose=verbose,
                )
            compiled_now = True
        info = BuildInfo(
            library=str(library),
            directory=str(directory),
            key=key,
            compiled_now=compiled_now,
            seconds=round(time.perf_counter() - start, 2),
            compiler=_compiler_version(cxx),
            cflags=cflags,
            ldflags=ldflags,
            openmp_runtime=runtime,
        )
        if compiled_now:
            stamp.write_text(json.dumps(info.to_dict(), indent=2))
        if not hasattr(torch.ops, _NAMESPACE) or not hasattr(getattr(torch.ops, _NAMESPACE), "multimax_forward"):
            raise RuntimeError(f"{library} loaded but did not register torch.ops.{_NAMESPACE}")
        _loaded = info
        return info


@contextlib.contextmanager
def _ninja_on_path():
    """cpp_extension runs `ninja` from PATH; the pip `ninja` package may sit in a venv that is not
    on PATH (venv python run directly), so add its directory for the duration of the build."""
    if shutil.which("ninja") is not None:
        yield
        return
    candidates = [Path(sys.executable).parent]
    try:
        import ninja  # type: ignore[import-not-found]

        candidates.insert(0, Path(ninja.BIN_DIR))
    except (ImportError, AttributeError):
        pass
    found = next((c for c in candidates if (c / "ninja").exists()), None)
    if found is None:
        raise RuntimeError("ninja is needed to build the CPU kernel (pip install ninja)")
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{found}{os.pathsep}{old}"
    try:
        yield
    finally:
        os.environ["PATH"] = old


def load() -> BuildInfo:
    """The loaded kernel's build info, building it first if needed (same as `build()`)."""
    return build()
