"""ONNX export: one mmserve.MultiMax node per MultiMax, function bodies, onnxruntime == torch.

Random models with non-trivial modulators (ranges/ts drawn with std 0.5, so every relu term is active
somewhere) are exported once per module; onnxruntime must reproduce torch to tight tolerances with
dynamic batch and sequence lengths, padding masks, fully masked rows and left-padded KV caches, and
the onnxruntime stepper must decode exactly like the torch model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from exporters.onnx import ExportOptions, OnnxClassifier, OnnxSeq2SeqStepper, export_onnx
from exporters.onnx.convert import multimax_nodes
from exporters.onnx.functions import build_multimax_function
from exporters.onnx.manifest import is_current
from exporters.onnx.op import DOMAIN, MASKED_OVERLOAD, OP_TYPE, OP_VERSION, register_schema
from exporters.onnx.runtime import create_session
from exporters.onnx.validate import modulator_ops_feeding_multimax
from mmserve.checkpoints import CheckpointError, ModelDirConfig, load_model_dir, save_model_dir
from mmserve.cli import app
from mmserve.errors import UserError
from mmserve.models import TranslatorConfig, ViTConfig, build_model
from mmserve.models.decoding import beam_search, greedy_search
from mmserve.ops import multimax

# Tight float32 tolerances: the graphs compute what torch computes, op for op.
ATOL_PROBS = 2e-6
ATOL_LOGITS = 2e-5

VIT = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=4)
TRANSLATOR = TranslatorConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, num_heads=4, encoder_layers=2,
                              decoder_layers=2, ffn_dim=64, dropout=0.0, max_positions=48, tie_embeddings="none")
GENERATION = dict(pad_id=0, bos_id=1, eos_id=2, unk_id=3, max_source_tokens=16, max_length=12, max_length_limit=40,
                  beam_size=3, length_penalty=0.6)


def _nontrivial_modulators(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ranges", "ts")):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(VIT)
    _nontrivial_modulators(model, 1)
    config = ModelDirConfig(name="tiny-vit", task="image-classification", architecture=VIT.model_dump(),
                            labels=[f"class-{i}" for i in range(10)])
    return save_model_dir(tmp_path_factory.mktemp("models") / "tiny-vit", model, config)


@pytest.fixture(scope="module")
def vit_export(vit_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny-vit"
    export_onnx(vit_dir, out)
    return out


@pytest.fixture(scope="module")
def translator_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(TRANSLATOR)
    _nontrivial_modulators(model, 2)
    with torch.no_grad():  # sharper output distribution: greedy/beam outputs vary with the source
        model.output_projection.weight.mul_(4.0)
        model.decoder.embed.embed_tokens.weight[GENERATION["eos_id"]] *= 3.0
    config = ModelDirConfig(name="tiny-translator", task="translation", architecture=TRANSLATOR.model_dump(),
                            generation=GENERATION)
    return save_model_dir(tmp_path_factory.mktemp("models") / "tiny-translator", model, config)


@pytest.fixture(scope="module")
def translator_export(translator_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny-translator"
    export_onnx(translator_dir, out)
    return out


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _src_batch(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded sources of varied lengths ending in EOS (like `encode_batch` makes them)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, length + 1, (batch,), generator=generator)
    lengths[0] = length
    ids = torch.randint(4, TRANSLATOR.src_vocab_size, (batch, length), generator=generator)
    cols = torch.arange(length)[None, :]
    ids = torch.where(cols == (lengths - 1)[:, None], torch.full_like(ids, GENERATION["eos_id"]), ids)
    pad = cols >= lengths[:, None]
    return ids.masked_fill(pad, GENERATION["pad_id"]), pad


# ------------------------------------------------------------------------------ graph structure


@pytest.mark.slow
def test_classifier_graphs_hold_one_multimax_node_per_multimax(vit_dir, vit_export):
    model = load_model_dir(vit_dir).model
    expected = {f"blocks.{i}.attn": model.blocks[i].attn for i in range(VIT.depth)}
    for filename in ("model.onnx", "explain.onnx"):
        proto = onnx.load(str(vit_export / filename))
        nodes = multimax_nodes(proto)
        assert len(nodes) == VIT.depth + 1  # attention modules + the output layer
        assert {(o.domain, o.version) for o in proto.opset_import} >= {(DOMAIN, OP_VERSION), ("", 18)}
        assert proto.ir_version >= 10
        # The trained constants are the attributes, in float32, of the right module.
        attention = [n for n in nodes if _attrs(n)["axis"] == -1]
        constants = sorted((tuple(_attrs(n)["ranges"]), tuple(_attrs(n)["ts"])) for n in attention)
        wanted = sorted(
            (tuple(m.ranges.detach().tolist()), tuple(m.ts.detach().tolist()))
            for m in [*expected.values(), model]
        )
        np.testing.assert_allclose(np.array(constants), np.array(wanted), rtol=1e-6)
        assert all(len(_attrs(n)["ranges"]) == 2 * VIT.multimax_order for n in nodes)
        assert all(n.overload == "" and len(n.input) == 1 for n in nodes)  # the ViT has no masks
        # No modulator chain around the nodes: the only Relus are the standalone `logits` modulator.
        assert modulator_ops_feeding_multimax(proto) == []
        relus = sum(1 for n in proto.graph.node if n.op_type == "Relu")
        assert relus == 2 * VIT.multimax_order
        logits_producers = {n.op_type for n in proto.graph.node if "logits" in n.output}
        assert logits_producers == {"Add"}  # seglu(scores) = ... + t*relu(..)^2, standard ops
        functions = {(f.domain, f.name, f.overload) for f in proto.functions}
        assert functions == {(DOMAIN, OP_TYPE, "")}
        onnx.checker.check_model(proto, full_check=True)
    dims = onnx.load(str(vit_export / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 8, 8]


@pytest.mark.slow
def test_translator_graphs_use_the_masked_overload(translator_export):
    counts = {}
    for filename in ("encoder.onnx", "cross_kv.onnx", "decoder.onnx"):
        proto = onnx.load(str(translator_export / filename))
        nodes = multimax_nodes(proto)
        counts[filename] = len(nodes)
        assert all(n.overload == MASKED_OVERLOAD and len(n.input) == 2 for n in nodes)
        assert modulator_ops_feeding_multimax(proto) == []
        if nodes:
            assert {(f.name, f.overload) for f in proto.functions} == {(OP_TYPE, MASKED_OVERLOAD)}
        else:
            assert not proto.functions
        onnx.checker.check_model(proto, full_check=True)
    # encoder self-attention per layer; decoder self + cross attention per layer; no output MultiMax
    # node in the decoder (it returns the modulated logits, as decode_step does).
    assert counts == {"encoder.onnx": 2, "cross_kv.onnx": 0, "decoder.onnx": 4}
    decoder = onnx.load(str(translator_export / "decoder.onnx"))
    names = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in decoder.graph.input}
    assert names["past_key_0"] == ["batch", 4, "past", 8]
    assert names["tokens"] == ["batch", "tokens"] and names["cross_key_1"] == ["batch", 4, "src", 8]


@pytest.mark.slow
def test_no_function_body_export_has_nodes_but_no_functions(vit_dir, tmp_path):
    out = tmp_path / "nobody"
    result = CliRunner().invoke(app, ["export", str(vit_dir), "--format", "onnx", "--out", str(out),
                                      "--no-function-body"])
    assert result.exit_code == 0, result.output
    register_schema()
    for filename in ("model.onnx", "explain.onnx"):
        proto = onnx.load(str(out / filename))
        assert len(multimax_nodes(proto)) == VIT.depth + 1
        assert not proto.functions
        onnx.checker.check_model(proto, full_check=True)  # the registered schema types the outputs
    assert json.loads((out / "manifest.json").read_text())["options"]["function_body"] is False
    # The portable copies are inlined from the bodies before they are dropped: they still run anywhere.
    portable = create_session(out / "portable" / "model.onnx")
    assert not onnx.load(str(out / "portable" / "model.onnx")).functions
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want_probs, _ = load_model_dir(vit_dir).model.classify(torch.from_numpy(x))
    np.testing.assert_allclose(portable.run(["probs"], {"pixel_values": x})[0], want_probs.numpy(), atol=ATOL_PROBS)
    # Stock onnxruntime has no kernel for the node: it must refuse, and our runner says why.
    with pytest.raises(Exception, match="MultiMax"):
        create_session(out / "model.onnx")
    with pytest.raises(UserError, match="no-function-body"):
        OnnxClassifier(out)


# ----------------------------------------------------------------------------- function bodies


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_function_body_matches_the_reference(order, masked):
    """The FunctionProto alone, on a graph with one node: masks broadcast, fully masked rows are 0."""
    register_schema()
    generator = torch.Generator().manual_seed(order)
    ranges = (torch.randn(2 * order, generator=generator) * 0.5).tolist()
    ts = (torch.randn(2 * order, generator=generator) * 0.5).tolist()
    import onnx_ir as ir

    fn = ir.to_proto(build_multimax_function(order, masked, 18))
    h, TP = onnx.helper, onnx.TensorProto
    inputs = ["X", "M"] if masked else ["X"]
    node = h.make_node(OP_TYPE, inputs, ["Y"], domain=DOMAIN, ranges=ranges, ts=ts, axis=1)
    node.overload = MASKED_OVERLOAD if masked else ""
    graph_inputs = [h.make_tensor_value_info("X", TP.FLOAT, ["b", 6, 3])]
    if masked:
        graph_inputs.append(h.make_tensor_value_info("M", TP.BOOL, ["b", 6, 1]))
    graph = h.make_graph([node], "g", graph_inputs, [h.make_tensor_value_info("Y", TP.FLOAT, ["b", 6, 3])])
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 18), h.make_opsetid(DOMAIN, 1)],
                         functions=[fn], ir_version=10)
    onnx.checker.check_model(proto, full_check=True)
    x = torch.randn(3, 6, 3, generator=generator) * 3
    mask = torch.zeros(3, 6, 1, dtype=torch.bool)
    mask[0, 4:] = True
    mask[1] = True  # a fully masked slice along the axis
    feeds = {"X": x.numpy(), "M": mask.numpy()} if masked else {"X": x.numpy()}
    got = create_session(proto.SerializeToString()).run(None, feeds)[0]
    want = multimax(x.double(), torch.tensor(ranges).double(), torch.tensor(ts).double(), dim=1,
                    mask=mask if masked else None, impl="reference").numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=2e-6)
    if masked:
        assert (got[1] == 0).all() and (got[0, 4:] == 0).all()


def test_function_declares_axis_default():
    fn = build_multimax_function(2, False, 18)
    import onnx_ir as ir

    proto = ir.to_proto(fn)
    defaults = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute_proto}
    assert defaults == {"axis": -1} and list(proto.attribute) == ["ranges", "ts"]


# ------------------------------------------------------------------------- onnxruntime == torch


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 5])
def test_classifier_onnxruntime_matches_torch(vit_dir, vit_export, batch):
    model = load_model_dir(vit_dir).model
    runner = OnnxClassifier(vit_export)
    x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch)) * 2
    probs, logits = runner.run(x)
    with torch.no_grad():
        want_probs, want_logits = model.classify(x)
        _, want_weights = model.forward_with_attention(x)
    np.testing.assert_allclose(probs, want_probs.numpy(), atol=ATOL_PROBS)
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=ATOL_LOGITS)
    e_probs, e_logits, weights = runner.explain(x)
    np.testing.assert_allclose(e_probs, want_probs.numpy(), atol=ATOL_PROBS)
    np.testing.assert_allclose(e_logits, want_logits.numpy(), atol=ATOL_LOGITS)
    assert len(weights) == VIT.depth
    for got, want in zip(weights, want_weights):
        assert got.shape == (batch, VIT.num_heads, VIT.num_patches, VIT.num_patches)
        np.testing.assert_allclose(got, want.numpy(), atol=ATOL_PROBS)


@pytest.mark.slow
def test_translator_steps_match_torch(translator_dir, translator_export):
    """encode with padding, cross_kv, a T>1 first step, then steps on caches with left padding (rows
    with different history lengths in one batch), at batch sizes and lengths other than the traced."""
    model = load_model_dir(translator_dir).model
    stepper = OnnxSeq2SeqStepper(translator_export)
    for batch, src_len, new, past in [(1, 3, 1, 0), (3, 9, 4, 0), (4, 6, 1, 5), (2, 7, 2, 3)]:
        ids, pad = _src_batch(batch, src_len, seed=batch * 10 + src_len)
        with torch.no_grad():
            memory = model.encode(ids, pad)
            cross = model.cross_kv(memory)
        got_memory = stepper.encode(ids, pad)
        np.testing.assert_allclose(got_memory.numpy(), memory.numpy(), atol=ATOL_LOGITS)
        got_cross = stepper.cross_kv(memory)
        for (k, v), (gk, gv) in zip(cross, got_cross):
            np.testing.assert_allclose(gk.numpy(), k.numpy(), atol=ATOL_LOGITS)
            np.testing.assert_allclose(gv.numpy(), v.numpy(), atol=ATOL_LOGITS)
        generator = torch.Generator().manual_seed(past)
        # Row i has min(i, past) padded cache slots on the left; its positions start after its real history.
        pad_slots = torch.tensor([min(i, past) for i in range(batch)])
        self_pad = torch.arange(past + new)[None, :] < pad_slots[:, None]
        positions = torch.arange(past, past + new)[None, :] - pad_slots[:, None]
        tokens = torch.randint(4, TRANSLATOR.tgt_vocab_size, (batch, new), generator=generator)
        if past:
            heads, dh = TRANSLATOR.num_heads, TRANSLATOR.d_model // TRANSLATOR.num_heads
            cache = [(torch.randn(batch, heads, past, dh, generator=generator),
                      torch.randn(batch, heads, past, dh, generator=generator)) for _ in range(2)]
        else:
            cache = None
        with torch.no_grad():
            logits, present = model.decode_step(tokens, positions, cache, self_pad, cross, pad)
        got_logits, got_present = stepper.decode_step(tokens, positions, cache, self_pad, cross, pad)
        np.testing.assert_allclose(got_logits.numpy(), logits.numpy(), atol=ATOL_LOGITS, rtol=1e-5)
        for (k, v), (gk, gv) in zip(present, got_present):
            assert gk.shape == (batch, TRANSLATOR.num_heads, past + new, TRANSLATOR.d_model // TRANSLATOR.num_heads)
            np.testing.assert_allclose(gk.numpy(), k.numpy(), atol=ATOL_LOGITS)
            np.testing.assert_allclose(gv.numpy(), v.numpy(), atol=ATOL_LOGITS)


@pytest.mark.slow
def test_onnx_stepper_decodes_like_torch(translator_dir, translator_export):
    model = load_model_dir(translator_dir).model
    stepper = OnnxSeq2SeqStepper(translator_export)
    ids, pad = _src_batch(6, 8, seed=3)
    args = (GENERATION["bos_id"], GENERATION["eos_id"], GENERATION["pad_id"], GENERATION["max_length"])
    want = greedy_search(model, ids, pad, *args, alpha=0.6)
    got = greedy_search(stepper, ids, pad, *args, alpha=0.6)
    assert [h.tokens for h in got] == [h.tokens for h in want]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-4)
    assert len({tuple(h.tokens) for h in want}) > 1  # the outputs depend on the source (not a constant)
    want_beam = beam_search(model, ids, pad, *args, beam_size=3, alpha=0.6, n_best=2)
    got_beam = beam_search(stepper, ids, pad, *args, beam_size=3, alpha=0.6, n_best=2)
    assert [[h.tokens for h in row] for row in got_beam] == [[h.tokens for h in row] for row in want_beam]
    np.testing.assert_allclose([h.score for row in got_beam for h in row],
                               [h.score for row in want_beam for h in row], atol=1e-4)


# --------------------------------------------------------------------- manifest, skip, errors


@pytest.mark.slow
def test_manifest_records_versions_hashes_and_source(vit_dir, vit_export):
    manifest = json.loads((vit_export / "manifest.json").read_text())
    source_manifest = json.loads((vit_dir / "manifest.json").read_text())
    assert manifest["format"] == "mmserve-onnx" and manifest["opset"] == 18 and manifest["ir_version"] >= 10
    assert set(manifest["exporter"]) >= {"torch", "onnx", "onnxscript", "onnxruntime"}
    assert manifest["source"]["weights_sha256"] == source_manifest["files"]["model.safetensors"]
    assert set(manifest["files"]) == {"model.onnx", "explain.onnx", "portable/model.onnx", "portable/explain.onnx",
                                      "config.json", "labels.txt"}
    assert manifest["graphs"]["model.onnx"]["portable"] == "portable/model.onnx"
    assert set(manifest["graphs"]) == {"model.onnx", "explain.onnx"}  # portable copies are not extra graphs
    assert (vit_export / "labels.txt").read_text().splitlines() == [f"class-{i}" for i in range(10)]
    assert manifest["graphs"]["model.onnx"]["multimax_nodes"] == VIT.depth + 1
    assert json.loads((vit_export / "config.json").read_text()) == json.loads((vit_dir / "config.json").read_text())


@pytest.mark.slow
def test_skip_if_current(vit_dir, vit_export, tmp_path):
    before = (vit_export / "model.onnx").stat().st_mtime_ns
    result = export_onnx(vit_dir, vit_export, skip_if_current=True)
    assert result.skipped and (vit_export / "model.onnx").stat().st_mtime_ns == before
    manifest = json.loads((vit_export / "manifest.json").read_text())
    options = manifest["options"]
    assert not is_current(vit_export, manifest["source"], {**options, "opset": 20})[0]
    assert not is_current(vit_export, {**manifest["source"], "weights_sha256": "0" * 64}, options)[0]
    # A tampered export does not verify, so it is not current either.
    copy = tmp_path / "copy"
    shutil.copytree(vit_export, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    current, why = is_current(copy, manifest["source"], options)
    assert not current and "does not verify" in why
    assert not is_current(tmp_path / "nothing", manifest["source"], options)[0]


@pytest.mark.slow
def test_bad_model_dirs_give_clear_errors(tmp_path, vit_export):
    runner = CliRunner()
    missing = runner.invoke(app, ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert missing.exit_code != 0
    with pytest.raises(CheckpointError, match="not a directory"):
        export_onnx(tmp_path / "missing", tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        export_onnx(empty, tmp_path / "o")
    # An ONNX export is not a model directory (no weights), and a model directory is not an export.
    with pytest.raises(CheckpointError):
        export_onnx(vit_export, tmp_path / "o")
    with pytest.raises(ValueError, match="opset"):
        ExportOptions(opset=17)
    with pytest.raises(CheckpointError):
        OnnxClassifier(empty)
    assert not (tmp_path / "o").exists()


def test_cli_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(  # the real entry point: UserError -> one line on stderr, exit 2
        [sys.executable, "-c", "from mmserve.cli import main; main()", "export", str(tmp_path / "nope"),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a directory" in proc.stderr


# ------------------------------------------------- portable graphs and runtimes other than onnxruntime


def _graph_inputs(model_dir: Path, task: str) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per graph file: feeds at every validation shape (other than the traced ones)."""
    from exporters.onnx.configs import onnx_configs_for

    loaded = load_model_dir(model_dir)
    generator = torch.Generator().manual_seed(7)
    feeds = {}
    for config in onnx_configs_for(task, loaded.model, loaded.architecture):
        names = [n for n, _ in config.inputs]
        feeds[config.filename] = [
            {n: t.numpy() for n, t in zip(names, config.generate_dummy_inputs(dims, generator))}
            for dims in config.validation_shapes
        ]
    return feeds


def _exports(vit_dir, vit_export, translator_dir, translator_export):
    return [(vit_export, _graph_inputs(vit_dir, "image-classification")),
            (translator_export, _graph_inputs(translator_dir, "translation"))]


def _assert_close_to_onnxruntime(export_dir: Path, filename: str, feeds, make_session) -> None:
    want = create_session(export_dir / filename)
    got = make_session()
    for feed in feeds:
        for expected, actual in zip(want.run(None, feed), got.run(None, feed)):
            assert actual.shape == expected.shape
            np.testing.assert_allclose(actual, expected, atol=2e-6, rtol=1e-5)


@pytest.mark.slow
def test_portable_graphs_hold_standard_ops_only(vit_export, translator_export):
    from exporters.onnx.portable import portable_filename

    for export_dir, graphs in ((vit_export, ["model.onnx", "explain.onnx"]),
                               (translator_export, ["encoder.onnx", "cross_kv.onnx", "decoder.onnx"])):
        manifest = json.loads((export_dir / "manifest.json").read_text())
        for filename in graphs:
            portable = portable_filename(filename)
            assert manifest["graphs"][filename]["portable"] == portable and portable in manifest["files"]
            assert set(manifest["graphs"][filename]["validation"]) == {filename, portable}
            proto = onnx.load(str(export_dir / portable))
            assert not proto.functions and {o.domain for o in proto.opset_import} == {""}
            assert all(n.domain == "" for n in proto.graph.node)
            onnx.checker.check_model(proto, full_check=True)
            custom = onnx.load(str(export_dir / filename))
            assert [i.name for i in proto.graph.input] == [i.name for i in custom.graph.input]
            assert [o.name for o in proto.graph.output] == [o.name for o in custom.graph.output]


@pytest.mark.slow
def test_graphs_run_on_the_onnx_reference_evaluator(vit_dir, vit_export, translator_dir, translator_export):
    """Portable graphs as they are; custom-node graphs through their function bodies (with the Softmax
    correction of exporters/onnx/reference.py for the evaluator's linked-attribute limitation)."""
    from exporters.onnx.portable import portable_filename
    from exporters.onnx.reference import ReferenceSession

    for export_dir, inputs in _exports(vit_dir, vit_export, translator_dir, translator_export):
        for filename, feeds in inputs.items():
            for graph in (portable_filename(filename), filename):
                _assert_close_to_onnxruntime(export_dir, filename, feeds, lambda: ReferenceSession(export_dir / graph))


@pytest.mark.slow
def test_portable_graphs_run_on_openvino(vit_dir, vit_export, translator_dir, translator_export):
    pytest.importorskip("openvino", reason="OpenVINO is in the dev extra; without it this check cannot run")
    from exporters.onnx.openvino_session import OpenVINOSession
    from exporters.onnx.portable import portable_filename

    for export_dir, inputs in _exports(vit_dir, vit_export, translator_dir, translator_export):
        for filename, feeds in inputs.items():
            graph = export_dir / portable_filename(filename)
            _assert_close_to_onnxruntime(export_dir, filename, feeds, lambda: OpenVINOSession(graph))


@pytest.mark.slow
def test_no_portable_export_writes_the_custom_node_graphs_only(vit_dir, tmp_path):
    export_onnx(vit_dir, tmp_path / "lean", ExportOptions(portable=False))
    manifest = json.loads((tmp_path / "lean" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "explain.onnx", "config.json", "labels.txt"}
    assert manifest["options"]["portable"] is False and manifest["graphs"]["model.onnx"]["portable"] is None
