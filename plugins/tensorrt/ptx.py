"""Compile a Triton kernel to PTX for TensorRT's AOT plugin path, and fit its parameter list.

`tensorrt.plugin.aot_impl` returns (kernel name, PTX, launch params, extra int32 args); TensorRT
embeds the PTX in the engine and launches the kernel itself with the argument list
(input pointers..., extra scalars..., output pointers...)
(https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/tensorrt.plugin/trt_plugin_aot_impl/index.html).

Triton >= 3.3 appends hidden parameters to every kernel it compiles (`global_scratch`, and from 3.5
`profile_scratch`: pointers to scratch memory its own launcher allocates). TensorRT does not know
about them and would launch the kernel with fewer arguments than the PTX entry declares. When the
kernel needs no scratch (`metadata.global_scratch_size == 0` and `profile_scratch_size == 0`, true
for the row kernel) those parameters are never read, so `trim_entry_params` removes them from the
`.entry` declaration after checking that the body never loads them; a kernel that does use scratch
is refused with an error instead of being launched with garbage pointers.

`compile_ptx` works without a GPU when given an explicit target (Triton lowers to PTX with its
bundled LLVM), which is how this project's CPU-only tests check the PTX TensorRT would receive;
`assemble` runs Triton's bundled `ptxas` on it for the same reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

__all__ = [
    "CompiledPTX",
    "PTXError",
    "compile_ptx",
    "entry_params",
    "trim_entry_params",
    "assemble",
    "ptxas_path",
    "target_from_env",
    "TARGET_ENV",
]

TARGET_ENV = "MMSERVE_TRT_PTX_TARGET"
"""e.g. "cuda:90": compile the AOT kernel for that architecture instead of the current GPU's (tests,
and building PTX on a machine whose GPU differs from the one TensorRT will JIT it for)."""


class PTXError(RuntimeError):
    """The compiled kernel cannot be launched the way TensorRT launches AOT plugin kernels."""


@dataclass(frozen=True)
class CompiledPTX:
    name: str
    ptx: str
    num_warps: int
    shared: int
    target: str  # e.g. "cuda:90"
    params: int  # number of parameters of the (trimmed) entry


_ENTRY = re.compile(r"\.entry\s+(?P<name>[\w$]+)\s*\((?P<params>[^)]*)\)", re.S)


def entry_params(ptx: str, name: Optional[str] = None) -> list[str]:
    """Parameter names of the kernel's `.entry` (the first one, or the one called `name`)."""
    for match in _ENTRY.finditer(ptx):
        if name is None or match.group("name") == name:
            params = [p.strip() for p in match.group("params").split(",") if p.strip()]
            return [p.split()[-1] for p in params]
    raise PTXError(f"no .entry {name or ''} in the PTX")


def trim_entry_params(ptx: str, name: str, keep: int) -> str:
    """Drop the `.entry`'s parameters after the first `keep`, refusing if the body reads one of them."""
    match = next((m for m in _ENTRY.finditer(ptx) if m.group("name") == name), None)
    if match is None:
        raise PTXError(f"no .entry {name} in the PTX")
    params = [p.strip() for p in match.group("params").split(",") if p.strip()]
    if len(params) < keep:
        raise PTXError(f"kernel {name} has {len(params)} parameters, fewer than the {keep} TensorRT passes")
    dropped = [p.split()[-1] for p in params[keep:]]
    body = ptx[match.end():]
    used = [p for p in dropped if re.search(r"\[\s*" + re.escape(p) + r"\s*[\]+]", body)]
    if used:
        raise PTXError(f"kernel {name} reads its trailing parameters {used} (Triton scratch memory), which "
                       "TensorRT's AOT launch does not provide")
    kept = ",\n\t".join(params[:keep])
    header = f".entry {name}(\n\t{kept}\n)"
    return ptx[: match.start()] + header + ptx[match.end():]


def compile_ptx(
    fn: Any,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any],
    *,
    num_warps: int = 4,
    target: Optional[tuple[str, int, int]] = None,
    trt_params: Optional[int] = None,
) -> CompiledPTX:
    """`triton.compile(ASTSource(fn, signature, constexprs))` to PTX, trimmed to `trt_params` params.

    signature: every kernel parameter in order, runtime ones typed ("*fp32", "i32") and compile-time
    ones marked "constexpr" (triton.compiler.ASTSource's format). target: (backend, arch, warp size),
    e.g. ("cuda", 90, 32); None compiles for the GPU of the current process.
    """
    import triton
    from triton.backends.compiler import GPUTarget

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's current default, stated explicitly
    src = triton.compiler.ASTSource(fn=fn, signature=dict(signature), constexprs=dict(constexprs))
    gpu = GPUTarget(*target) if target is not None else triton.runtime.driver.active.get_current_target()
    compiled = triton.compile(src, target=gpu, options={"num_warps": num_warps})
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise PTXError(f"{meta.name} needs Triton scratch memory, which TensorRT's AOT launch cannot provide")
    ptx = compiled.asm["ptx"]
    runtime_params = sum(1 for v in signature.values() if v != "constexpr")
    keep = runtime_params if trt_params is None else trt_params
    ptx = trim_entry_params(ptx, meta.name, keep)
    return CompiledPTX(
        name=meta.name,
        ptx=ptx,
        num_warps=int(meta.num_warps),
        shared=int(meta.shared),
        target=f"{gpu.backend}:{gpu.arch}",
        params=len(entry_params(ptx, meta.name)),
    )


def target_from_env() -> Optional[tuple[str, int, int]]:
    """(backend, arch, warp size) from $MMSERVE_TRT_PTX_TARGET, or None for the current GPU."""
    value = os.environ.get(TARGET_ENV, "").strip()
    if not value:
        return None
    backend, _, arch = value.partition(":")
    if backend != "cuda" or not arch.isdigit():
        raise PTXError(f"${TARGET_ENV} must look like 'cuda:90', got {value!r}")
    return ("cuda", int(arch), 32)


def ptxas_path() -> Optional[str]:
    """Triton's bundled ptxas (or one on PATH), for checking PTX without a GPU."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
        if bundled.is_file():
            return str(bundled)
    except ImportError:  # pragma: no cover
        pass
    return shutil.which("ptxas")


def assemble(ptx: str, arch: int) -> None:
    """Assemble PTX to a cubin with ptxas for sm_`arch`; raises PTXError with ptxas's message."""
    ptxas = ptxas_path()
    if ptxas is None:
        raise PTXError("ptxas not found (it ships with Triton's NVIDIA backend)")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        result = subprocess.run(
            [ptxas, f"-arch=sm_{arch}", str(src), "-o", str(Path(tmp) / "kernel.cubin")],
            capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            raise PTXError(f"ptxas rejected the PTX: {result.stderr.strip() or result.stdout.strip()}")
