"""`mmserve translate`: one line in, one line out, in input order; the same translations as
`decoding.translate` on the lines in their own order (so sorting by length and batching change
nothing); every untranslatable line reported with its number; stdin/stdout; clear file errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from exporters.onnx.runtime import OnnxSeq2SeqStepper
from mmserve.checkpoints import read_config
from mmserve.cli import app
from mmserve.data.numbers import heldout_texts
from mmserve.errors import UserError
from mmserve.models.decoding import translate
from mmserve.tasks.batch_translation import check_lines, translate_lines
from mmserve.tasks.translation import SourceTextError, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
NUMBERS = REPO / "models" / "numbers-en-de"


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    previous = torch.get_num_threads()  # the command sets torch's threads for its process
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def heldout() -> list[tuple[str, str]]:
    if not (NUMBERS / "model.safetensors").is_file():
        pytest.skip("bundled numbers-en-de is not in this checkout (make train-bundled)")
    return heldout_texts(read_config(NUMBERS), 150)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, heldout) -> Path:
    """The ONNX cache after one `mmserve translate` of the model DIRECTORY (exported on the way, like the
    server does); returns the cache, whose single export the other tests use directly."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    src = tmp_path_factory.mktemp("io") / "in.txt"
    src.write_text("forty-two\n")
    out = src.with_suffix(".out")
    result = CliRunner().invoke(app, ["translate", str(NUMBERS), "-i", str(src), "-o", str(out), "--backend",
                                      "onnxruntime", "--onnx-cache-dir", str(cache), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert out.read_text() == "zweiundvierzig\n"
    return cache


@pytest.fixture(scope="module")
def export_dir(cache) -> Path:
    (export,) = [p for p in cache.iterdir() if p.is_dir()]
    return export


def _run(*args: str) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(app, ["translate", *args, "--no-progress"])


@pytest.mark.parametrize("beam_size", [1, 4])
def test_file_translation_matches_the_search_in_input_order(export_dir, heldout, tmp_path, beam_size) -> None:
    sources = [s for s, _ in heldout]
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("\n".join(sources) + "\n")
    result = _run(str(export_dir), "-i", str(src), "-o", str(out), "--beam-size", str(beam_size),
                  "--batch-size", "16")
    assert result.exit_code == 0, result.output
    got = out.read_text().split("\n")
    assert got[-1] == "" and len(got) == len(sources) + 1
    # What the search gives the lines in their own order and batches, without the command's sorting.
    stepper = OnnxSeq2SeqStepper(export_dir)
    expected = [text for text, _ in translate(stepper, load_tokenizer(export_dir), sources, beam_size=beam_size)]
    assert got[:-1] == expected
    assert got[:-1] == [target for _, target in heldout]  # the bundled model gets all of these right


def test_parallel_workers_and_torch_backend_give_the_same_lines(export_dir, heldout, tmp_path) -> None:
    sources = [s for s, _ in heldout[:40]]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(sources) + "\n")
    outputs = []
    for args in (["--workers", "2", "--batch-size", "8"], ["--backend", "torch", "--threads", "1"]):
        out = tmp_path / f"out{len(outputs)}.txt"
        model = NUMBERS if "torch" in args else export_dir
        result = _run(str(model), "-i", str(src), "-o", str(out), *args)
        assert result.exit_code == 0, result.output
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] == "".join(t + "\n" for _, t in heldout[:40])


def test_bad_lines_are_reported_with_numbers_and_stop_the_run(export_dir, tmp_path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("forty-two\nhello world\n\nninety-nine\ntwo ### three\n")
    result = _run(str(export_dir), "-i", str(src), "-o", str(out))
    assert result.exit_code != 0 and isinstance(result.exception, UserError)
    message = str(result.exception)
    assert str(src) in message and "2 untranslatable" in message
    assert "line 2 ('hello world')" in message and "line 5 ('two ### three')" in message
    assert not out.exists()  # nothing written: no output that looks complete


def test_on_error_empty_keeps_every_line_in_place(export_dir, tmp_path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("forty-two\r\nhello world\r\n\r\nninety-nine\n")
    result = _run(str(export_dir), "-i", str(src), "-o", str(out), "--on-error", "empty")
    assert result.exit_code == 0, result.output
    assert out.read_text() == "zweiundvierzig\n\n\nneunundneunzig\n"
    assert "line 2 ('hello world')" in result.output and "1 of 4 lines could not be translated" in result.output


def test_translate_lines_reports_every_bad_line(export_dir) -> None:
    tokenizer = load_tokenizer(export_dir)
    lengths, errors = check_lines(tokenizer, ["one", "", "x" * 2000, "zwei", "two"])
    assert sorted(lengths) == [0, 4] and [e.line for e in errors] == [3, 4]
    with pytest.raises(SourceTextError, match="line 3: has 2000 characters"):
        translate_lines(OnnxSeq2SeqStepper(export_dir), tokenizer, ["one", "", "x" * 2000, "zwei"])


def test_file_and_flag_errors_name_the_problem(export_dir, tmp_path) -> None:
    missing = _run(str(export_dir), "-i", str(tmp_path / "nope.txt"), "-o", "-")
    assert isinstance(missing.exception, UserError) and "nope.txt: input file not found" in str(missing.exception)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("one\ntwo\nf\xfcnf\n".encode("latin-1"))
    bad = _run(str(export_dir), "-i", str(latin1), "-o", "-")
    assert isinstance(bad.exception, UserError) and "latin1.txt: line 3 is not valid UTF-8" in str(bad.exception)
    src = tmp_path / "in.txt"
    src.write_text("one\n")
    too_long = _run(str(export_dir), "-i", str(src), "-o", "-", "--max-length", "1000")
    assert isinstance(too_long.exception, UserError) and "--max-length" in str(too_long.exception)
    no_model = _run(str(tmp_path), "-i", str(src), "-o", "-")
    assert isinstance(no_model.exception, UserError) and "no config.json" in str(no_model.exception)
    policy = _run(str(export_dir), "-i", str(src), "-o", "-", "--on-error", "skip")
    assert isinstance(policy.exception, UserError) and "--on-error" in str(policy.exception)


def test_stdin_to_stdout_and_exit_status_2(export_dir) -> None:
    """The real console script: a pipe in, a pipe out, the progress bar on stderr, exit 2 on bad input."""
    command = [sys.executable, "-c", "from mmserve.cli import main; main()", "translate", str(export_dir),
               "-i", "-", "-o", "-"]
    ok = subprocess.run(command, input="forty-two\nninety-nine\n", capture_output=True, text=True, timeout=120,
                        env=os.environ.copy(), cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "zweiundvierzig\nneunundneunzig\n"
    bad = subprocess.run(command, input="forty-two\nbonjour\n", capture_output=True, text=True, timeout=120,
                         env=os.environ.copy(), cwd=REPO)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "<stdin>" in bad.stderr and "line 2 ('bonjour')" in bad.stderr


@pytest.mark.parametrize(("args", "workers", "intra_op"), [
    (["--threads", "2"], 2, 1),                  # the default policy: two batches at once, one thread each
    (["--threads", "2", "--workers", "1"], 1, 2),  # one batch at a time on two intra-op threads
    (["--backend", "torch", "--threads", "2"], 1, 2),  # torch runs the model itself on both threads
])
def test_threads_become_workers_and_intra_op_threads_by_the_policy(export_dir, tmp_path, monkeypatch,
                                                                  args, workers, intra_op) -> None:
    """What `--threads` means is the thread policy's split, observed where the command hands it on:
    the sessions' intra-op threads (the backend loader's options) and the batches decoded at once."""
    import mmserve.tasks.batch_translation as batch_translation
    import server.backends as backends

    seen: dict[str, int] = {}
    load, run = backends.load_backend, batch_translation.translate_lines

    def recording_load(backend, directory, task, options):
        seen["intra_op"] = options.intra_op_threads
        return load(backend, directory, task, options)

    def recording_run(*a, **kw):
        seen["workers"] = kw["workers"]
        return run(*a, **kw)

    monkeypatch.setattr(backends, "load_backend", recording_load)
    monkeypatch.setattr(batch_translation, "translate_lines", recording_run)
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("forty-two\nseven hundred\n")
    model = NUMBERS if "torch" in args else export_dir
    result = _run(str(model), "-i", str(src), "-o", str(out), *args)
    assert result.exit_code == 0, result.output
    assert seen == {"workers": workers, "intra_op": intra_op}
    assert out.read_text() == "zweiundvierzig\nsiebenhundert\n"
