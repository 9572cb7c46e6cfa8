"""`mmserve parity` on the BUNDLED models (what makes CI fail when export or runtime drifts), its failure
when an exported graph is perturbed, SKIPPED (never passed) for backends that cannot run here, and
its input errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from exporters.onnx import export_onnx
from exporters.onnx.convert import multimax_nodes
from exporters.parity import DEFAULT_TOLERANCES, Tolerance, parse_tolerances
from mmserve.checkpoints import write_manifest
from mmserve.cli import app
from mmserve.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "models" / "digits-vit"
DIGITS_SOFTMAX = REPO / "models" / "digits-vit-softmax"
NUMBERS = REPO / "models" / "numbers-en-de"


def _bundled(path: Path) -> Path:
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"bundled model {path.name} is not in this checkout (train it with `make train-bundled`)")
    return path


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "digits-vit"
    export_onnx(_bundled(DIGITS), out)
    return out


def _parity(args: list[str], tmp_path: Path) -> tuple[int, dict, str]:
    report = tmp_path / "report.json"
    # One thread: this machine is shared, and torch's second thread only adds contention here.
    result = CliRunner().invoke(app, ["parity", *args, "--threads", "1", "--json", str(report)])
    data = json.loads(report.read_text()) if report.is_file() else {}
    return result.exit_code, data, result.output


def _perturbed_copy(src: Path, dst: Path, graph: str, mutate) -> Path:
    """A copy of an export whose `graph` was changed by `mutate`, with a manifest rewritten to match:
    a graph that verifies but computes something else, like a buggy exporter would write."""
    shutil.copytree(src, dst)
    proto = onnx.load(str(dst / graph))
    mutate(proto)
    onnx.save_model(proto, str(dst / graph))
    manifest = json.loads((dst / "manifest.json").read_text())
    write_manifest(dst, {k: v for k, v in manifest.items() if k != "files"})
    return dst


@pytest.mark.slow
def test_parity_digits_passes(digits_export, tmp_path):
    code, report, output = _parity(
        [str(DIGITS), "--onnx", str(digits_export), "--backends", "torch,onnxruntime", "--batch-sizes", "1,4,16",
         "--samples", "32"], tmp_path)
    assert code == 0, output
    assert report["passed"] and not report["skipped"]
    kinds = {(p["batch_size"], p["inputs"]) for p in report["pairs"]}
    assert kinds == {(b, k) for b in (1, 4, 16) for k in ("held-out", "random")}
    for row in report["pairs"]:
        assert row["pair"] == ["torch", "onnxruntime"]
        assert row["metrics"]["logits_max_abs"] < 1e-4 and row["metrics"]["probs_max_abs"] < 1e-5
        assert 0 < row["metrics"]["logits_float32_error"] < 1e-4  # torch float32 vs float64, well conditioned
        assert row["metrics"]["top1_agreement"] == 1.0
    accuracies = {(r["backend"], r["batch_size"]): r["metrics"]["accuracy"] for r in report["references"]}
    assert len(set(accuracies.values())) == 1 and next(iter(accuracies.values())) > 0.9
    assert "PASSED" in output


@pytest.mark.slow
def test_parity_numbers_passes(numbers_export, tmp_path):
    code, report, output = _parity(
        [str(NUMBERS), "--onnx", str(numbers_export), "--backends", "torch,onnxruntime", "--batch-sizes", "1,4,16"],
        tmp_path)
    assert code == 0, output
    assert report["passed"]
    assert {p["inputs"] for p in report["pairs"]} == {"held-out", "random"}
    for row in report["pairs"]:
        assert row["metrics"]["logits_max_abs"] < 1e-3
        if row["inputs"] == "held-out":
            assert row["metrics"]["greedy_exact_match"] == 1.0 and row["metrics"]["beam_exact_match"] == 1.0
    refs = [r for r in report["references"] if r["backend"] == "onnxruntime"]
    assert refs and all(r["metrics"]["greedy_exact_match"] > 0.5 for r in refs)


@pytest.mark.slow
def test_parity_on_the_reference_evaluator_and_openvino(digits_export, tmp_path):
    """The custom-node graphs on onnx.reference (function bodies) and the portable graphs on OpenVINO
    agree with torch and onnxruntime on held-out and random digits."""
    pytest.importorskip("openvino", reason="OpenVINO is in the dev extra; without it this check cannot run")
    code, report, output = _parity(
        [str(DIGITS), "--onnx", str(digits_export), "--backends", "torch,onnxruntime,onnx-reference,openvino",
         "--batch-sizes", "4", "--samples", "8", "--require-all"], tmp_path)
    assert code == 0, output
    assert set(report["backends"]) == {"torch", "onnxruntime", "onnx-reference", "openvino"}
    assert len(report["pairs"]) == 2 * 6  # held-out and random, every pair of the four
    for row in report["pairs"]:
        assert row["metrics"]["probs_max_abs"] < 1e-5 and row["metrics"]["top1_agreement"] == 1.0


@pytest.mark.slow
def test_parity_fails_when_the_graph_weights_drift(digits_export, tmp_path):
    def drift(proto: onnx.ModelProto) -> None:
        # 1% multiplicative noise on the largest weight matrix: a silent export bug, not a crash.
        init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        weights = numpy_helper.to_array(init)
        noise = 1 + 0.01 * np.random.default_rng(0).standard_normal(weights.shape)
        init.CopyFrom(numpy_helper.from_array((weights * noise).astype(weights.dtype), init.name))

    broken = _perturbed_copy(digits_export, tmp_path / "drifted", "model.onnx", drift)
    code, report, output = _parity([str(DIGITS), "--onnx", str(broken), "--batch-sizes", "4"], tmp_path)
    assert code == 1, output
    assert not report["passed"]
    assert all(any("outside atol" in f for f in p["failures"]) for p in report["pairs"])
    assert "FAILED" in output


@pytest.mark.slow
def test_parity_fails_when_a_multimax_constant_drifts(digits_export, tmp_path):
    def nudge_ts(proto: onnx.ModelProto) -> None:
        node = multimax_nodes(proto)[0]
        ts = next(a for a in node.attribute if a.name == "ts")
        ts.floats[1] += 0.05

    broken = _perturbed_copy(digits_export, tmp_path / "nudged", "model.onnx", nudge_ts)
    code, report, _ = _parity([str(DIGITS), "--onnx", str(broken), "--batch-sizes", "16"], tmp_path)
    assert code == 1 and not report["passed"]


@pytest.mark.slow
def test_parity_fails_when_the_decoder_drifts(numbers_export, tmp_path):
    def drift(proto: onnx.ModelProto) -> None:
        init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        weights = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array((weights * 1.01).astype(weights.dtype), init.name))

    broken = _perturbed_copy(numbers_export, tmp_path / "drifted", "decoder.onnx", drift)
    code, report, output = _parity([str(NUMBERS), "--onnx", str(broken), "--batch-sizes", "16", "--samples", "16"],
                                   tmp_path)
    assert code == 1, output
    assert any("step logits" in f for p in report["pairs"] for f in p["failures"])


@pytest.mark.slow
def test_unavailable_backend_is_skipped_not_passed(digits_export, tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is importable here; this test is about machines without it")
    args = [str(DIGITS), "--onnx", str(digits_export), "--backends", "torch,onnxruntime,tensorrt",
            "--batch-sizes", "2", "--samples", "4"]
    code, report, output = _parity(args, tmp_path)
    assert code == 0, output
    assert "tensorrt" in report["skipped"] and "tensorrt" not in report["backends"]
    assert all("tensorrt" not in p["pair"] for p in report["pairs"])
    assert "SKIPPED" in output and "not counted as passed" in output
    code, report, _ = _parity([*args, "--require-all"], tmp_path)
    assert code == 1


@pytest.mark.slow
def test_export_of_other_weights_is_refused(digits_export, tmp_path):
    result = CliRunner().invoke(app, ["parity", str(_bundled(DIGITS_SOFTMAX)), "--onnx", str(digits_export)])
    assert result.exit_code != 0
    assert isinstance(result.exception, UserError) and "other weights" in str(result.exception)


def test_parity_input_errors(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["parity", str(tmp_path / "missing")])
    assert isinstance(missing.exception, UserError) and "not a directory" in str(missing.exception)
    if (DIGITS / "model.safetensors").is_file():
        one = runner.invoke(app, ["parity", str(DIGITS), "--backends", "torch"])
        assert isinstance(one.exception, UserError) and "two backends" in str(one.exception)
        unknown = runner.invoke(app, ["parity", str(DIGITS), "--backends", "torch,nope"])
        assert isinstance(unknown.exception, UserError) and "unknown backend 'nope'" in str(unknown.exception)
        sizes = runner.invoke(app, ["parity", str(DIGITS), "--batch-sizes", "a,b"])
        assert isinstance(sizes.exception, UserError)


def test_pairs_are_allowed_float32s_own_error_and_no_more():
    """The rule behind every compared value: |a - b| <= atol + rtol*|b| + 4 * e32, e32 = torch float32's
    max error against float64 on the same inputs (sharp models: two correct float32 runs differ more
    than atol, by about e32)."""
    from exporters.parity import Errors

    tol = Tolerance(1e-4, 0.0)
    b = np.zeros(8)
    a = b + 3e-4
    strict, lenient, too_far = Errors(), Errors(), Errors()
    strict.update(a, b, tol)  # no float32 error measured: atol alone decides
    lenient.update(a, b, tol, float32_error=1e-4)  # 3e-4 <= 1e-4 + 4 * 1e-4
    too_far.update(a + 3e-4, b, tol, float32_error=1e-4)  # 6e-4 > 5e-4
    assert (strict.violations, lenient.violations, too_far.violations) == (8, 0, 8)
    nan = Errors()
    nan.update(np.array([np.nan]), np.array([0.0]), tol, float32_error=1.0)  # NaN on one side never passes
    assert nan.violations == 1


def test_tolerances_parse_per_dtype():
    assert parse_tolerances(None, None) == DEFAULT_TOLERANCES
    table = parse_tolerances("2e-4,float16=3e-2", "float16=5e-2")
    assert table["float32"] == Tolerance(2e-4, DEFAULT_TOLERANCES["float32"].rtol)
    assert table["float16"] == Tolerance(3e-2, 5e-2)
    with pytest.raises(UserError, match="unknown dtype"):
        parse_tolerances("int8=1", None)
    with pytest.raises(UserError, match="not a number"):
        parse_tolerances("float32=abc", None)


@pytest.mark.slow
def test_imported_official_checkpoint_exports_and_passes(tmp_path):
    """The other way models arrive: an official {'model': state_dict} checkpoint, imported, exported
    through the CLI, compared on random inputs (its config names no dataset)."""
    import torch

    from mmserve.models import ViTConfig, build_model

    torch.manual_seed(0)
    model = build_model(ViTConfig(img_size=32, patch_size=8, in_chans=3, num_classes=7, embed_dim=48, depth=1,
                                  num_heads=3))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ranges", "ts")):
                p.normal_(0, 0.5)
    torch.save({"model": model.state_dict(), "epoch": 1}, tmp_path / "checkpoint.pth")
    runner = CliRunner()
    imported = runner.invoke(app, ["import", "official-vit", str(tmp_path / "checkpoint.pth"), str(tmp_path / "model"),
                                   "--heads", "3"])
    assert imported.exit_code == 0, imported.output
    exported = runner.invoke(app, ["export", str(tmp_path / "model"), "--out", str(tmp_path / "onnx")])
    assert exported.exit_code == 0, exported.output
    assert "2 mmserve.MultiMax nodes" in exported.output
    code, report, output = _parity([str(tmp_path / "model"), "--onnx", str(tmp_path / "onnx"), "--batch-sizes", "1,8"],
                                   tmp_path)
    assert code == 0, output
    assert {p["inputs"] for p in report["pairs"]} == {"random"} and not report["references"]
