"""`mmserve translate`: offline batch translation of a text file, one line in, one line out.

The model is loaded through the server's backend registry (`server.backends.load_backend`), so a
model directory on `--backend onnxruntime` is exported once into the same sha256-keyed ONNX cache the
server uses, and an export directory is taken as it is. Threads follow the one policy of
`exporters.onnx.runtime.thread_policy`: `--threads N` (default: every CPU this process may use) on
onnxruntime decodes N batches at once with one intra-op thread each (CTranslate2's inter_threads);
`--workers 1 --threads N` runs one batch at a time on N intra-op threads (for a large model whose
matrix products scale). The line handling (checking, sorting, batching, order) is
`mmserve.tasks.batch_translation`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from mmserve.errors import UserError

__all__ = ["translate", "read_lines", "write_lines"]

_MAX_INPUT_BYTES = 1 << 30  # 1 GiB: every line is held in memory (sorting by length needs them all)


def read_lines(path: str) -> list[str]:
    """The lines of `path` ('-' = stdin) as text, without their line ends; a clear error for a missing,
    oversized or non-UTF-8 file (naming the file and the line)."""
    if path == "-":
        data = sys.stdin.buffer.read(_MAX_INPUT_BYTES + 1)
        name = "<stdin>"
    else:
        file = Path(path)
        if not file.is_file():
            raise UserError(f"{path}: input file not found" if not file.exists() else f"{path}: not a file")
        with open(file, "rb") as handle:
            data = handle.read(_MAX_INPUT_BYTES + 1)
        name = path
    if len(data) > _MAX_INPUT_BYTES:
        raise UserError(f"{name}: larger than {_MAX_INPUT_BYTES >> 20} MiB; split it into smaller files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{name}: line {line} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    # Split at "\n" only (and drop a "\r" before it): str.splitlines would also split at form feeds and
    # Unicode line separators inside a line, and the output would no longer line up with the input.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final line end, not an empty last line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def write_lines(path: str, lines: list[str]) -> None:
    """Write one line per output ('-' = stdout). A file is written beside the target and renamed into
    place, so an interrupted run never leaves a half-written output that looks complete."""
    body = "".join(line + "\n" for line in lines)
    if path == "-":
        sys.stdout.write(body)
        sys.stdout.flush()
        return
    target = Path(path)
    if not target.parent.is_dir():
        raise UserError(f"{path}: output directory {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def choose_backend(model_dir: Path) -> str:
    """`--backend auto`: the native translator for a model directory (weights in safetensors) when its
    C++ kernels build here; onnxruntime for an export directory or without a compiler."""
    from mmserve.checkpoints import WEIGHTS_NAME
    from mmserve.models.native import native_available

    if (model_dir / WEIGHTS_NAME).is_file() and native_available()[0]:
        return "native"
    return "onnxruntime"


def translate(
    model_dir: Path = typer.Argument(..., help="translator: model dir (config.json + model.safetensors) or ONNX export dir"),
    input_path: str = typer.Option(..., "--input", "-i", help="text file, one source per line ('-' = stdin)"),
    output_path: str = typer.Option(..., "--output", "-o", help="file to write, one translation per line ('-' = stdout)"),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", min=1, help="1 = greedy [model default]"),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=1, help="most target tokens [model default]"),
    batch_size: int = typer.Option(32, "--batch-size", min=1, max=4096, help="sentences per batch"),
    backend: str = typer.Option(
        "auto", "--backend",
        help="native (mmserve's C++ translator, the fastest on CPU) | onnxruntime | torch | auto: native for "
        "a model directory when its C++ kernels build here, else onnxruntime"),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=0, help="threads in all [the CPUs this process may use; 0 = the runtime's default]"),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, max=64,
        help="batches decoded at the same time, sharing --threads [onnxruntime: one per thread; torch: 1]"),
    on_error: str = typer.Option(
        "fail", "--on-error",
        help="fail: report every untranslatable line (with its number) and stop before translating (exit 2); "
        "empty: translate the rest, write an empty line for each bad one and report them on stderr",
    ),
    onnx_cache_dir: Optional[Path] = typer.Option(
        None, "--onnx-cache-dir", help="where a model dir is exported for onnxruntime [the server's cache]"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr"),
) -> None:
    """Translate INPUT line by line into OUTPUT, in order (blank lines stay blank)."""
    from rich.console import Console

    from exporters.onnx.runtime import apply_thread_policy
    from mmserve.tasks.batch_translation import translate_lines
    from mmserve.tasks.translation import SourceTextError
    from mmserve.training.common import training_progress
    from server.backends import LoadOptions, load_backend
    from server.settings import ServerSettings, available_cpus

    if on_error not in ("fail", "empty"):
        raise UserError(f"--on-error: expected 'fail' or 'empty', got {on_error!r}")
    if backend not in ("auto", "torch", "onnxruntime", "native"):
        raise UserError(f"--backend: expected 'auto', 'native', 'onnxruntime' or 'torch', got {backend!r}")
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model or export directory (no config.json)")
    if backend == "auto":
        backend = choose_backend(model_dir)
    lines = read_lines(input_path)
    console = Console(stderr=True)
    if onnx_cache_dir is None:
        onnx_cache_dir = ServerSettings.model_fields["onnx_cache_dir"].default
    if threads is None:
        threads = available_cpus()
    policy = apply_thread_policy(backend, threads, workers)
    loaded = load_backend(backend, model_dir, "translation", LoadOptions(
        device="cpu", intra_op_threads=policy.intra_op_threads, onnx_cache_dir=onnx_cache_dir))
    apply_thread_policy(backend, threads, workers)  # a loader may set torch's threads its own way
    limit = loaded.tokenizer.generation.max_length_limit
    if max_length is not None and max_length > limit:
        loaded.close()
        raise UserError(f"--max-length: this model's positions allow at most {limit}, got {max_length}")
    bar = training_progress(transient=False, enabled=progress and bool(lines), console=console)
    try:
        with bar:
            task = bar.add_task("translating", total=len(lines), status="")
            result = translate_lines(
                loaded.stepper, loaded.tokenizer, lines, beam_size=beam_size, max_length=max_length,
                batch_size=batch_size, workers=policy.workers, on_error=on_error,  # type: ignore[arg-type]
                progress=lambda n: bar.advance(task, n),
            )
    except SourceTextError as exc:
        raise UserError(f"{input_path if input_path != '-' else '<stdin>'}: {exc}") from None
    finally:
        loaded.close()
    write_lines(output_path, result.outputs)
    for error in result.errors:
        console.print(f"[yellow]untranslatable, written as an empty line:[/] {error}", highlight=False,
                      soft_wrap=True)
    if result.errors:
        console.print(f"{len(result.errors)} of {len(lines)} lines could not be translated", highlight=False)
