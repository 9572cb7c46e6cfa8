"""`mmserve import official-fairseq` on checkpoints built as fairseq 0.12 saves them, checked against an
independent float64 re-implementation of fairseq + the official MultiMax code (tests/fairseq_reference.py).

Three checkpoints (transformer_iwslt_de_en shrunk): post-norm + fairseq sinusoids + shared decoder
embeddings (MultiMax); pre-norm + learned positions + share_all_embeddings + GELU + layernorm_embedding
+ decoder sized differently (MultiMax); a SoftMax one without ranges/ts. Forward outputs match the
reference to float64 rounding; greedy outputs are token-identical to the reference's fairseq-generate
loop; a checkpoint that pickles any other class is refused without running anything.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import torch
from fairseq_reference import (
    EOS,
    PAD,
    ReferenceTranslator,
    iwslt_args,
    make_state_dict,
    save_fairseq_checkpoint,
    write_dictionary,
)

from mmserve.checkpoints import CheckpointError, load_model_dir, read_config
from mmserve.checkpoints.fairseq import PLACEMENTS, import_official_fairseq
from mmserve.models.decoding import beam_search, greedy_search, search_rules
from mmserve.tasks.translation import load_tokenizer, pad_sources

SRC_WORDS = [f"s{i}" for i in range(20)]
TGT_WORDS = [f"t{i}" for i in range(28)]
JOINT_WORDS = [f"w{i}" for i in range(30)]
MAX_LEN_B = 9  # fairseq max_len: 9 tokens + the forced EOS

CASES = {
    "postnorm-sinusoidal-sharedec": dict(args=iwslt_args(), joint=False, multimax=True, seed=1),
    "prenorm-learned-shareall": dict(
        args=iwslt_args(
            encoder_normalize_before=True, decoder_normalize_before=True, encoder_learned_pos=True,
            decoder_learned_pos=True, share_all_embeddings=True, share_decoder_input_output_embed=True,
            activation_fn="gelu", layernorm_embedding=True, decoder_layers=1, decoder_ffn_embed_dim=20,
            encoder_layers=3, max_source_positions=40, max_target_positions=40,
        ),
        joint=True, multimax=True, seed=2,
    ),
    "softmax": dict(args=iwslt_args(share_decoder_input_output_embed=False), joint=False, multimax=False, seed=3),
}


def _build(tmp: Path, case: str, placement: str = "training", omegaconf_style: bool = False, **kwargs):
    spec = CASES[case]
    args = spec["args"]
    src_words, tgt_words = (JOINT_WORDS, JOINT_WORDS) if spec["joint"] else (SRC_WORDS, TGT_WORDS)
    tmp.mkdir(parents=True, exist_ok=True)
    src_dict = write_dictionary(tmp / "dict.de.txt", src_words)
    tgt_dict = write_dictionary(tmp / "dict.en.txt", tgt_words)
    sd = make_state_dict(args, len(src_words) + 4, len(tgt_words) + 4, spec["seed"], multimax=spec["multimax"])
    ckpt = save_fairseq_checkpoint(tmp / "checkpoint_best.pt", args, sd, omegaconf_style=omegaconf_style)
    out = import_official_fairseq(ckpt, tmp / f"model-{placement}", src_dict, tgt_dict, placement=placement,
                                  max_len_b=MAX_LEN_B, **kwargs)
    return out, sd, args


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    cache = {}

    def get(case: str, placement: str = "training"):
        if (case, placement) not in cache:
            cache[case, placement] = _build(tmp_path_factory.mktemp(case), case, placement)
        return cache[case, placement]

    return get


def _sources(vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=g).tolist() + [EOS] for n in (1, 3, 7, 5, 11, 2)]


def _reference(sd, args, placement: str) -> ReferenceTranslator:
    multimax = "decoder.ranges" in sd
    return ReferenceTranslator(sd, args, {k: v and multimax for k, v in PLACEMENTS[placement].items()})


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_fairseq_reference_in_float64(imported, case: str) -> None:
    model_dir, sd, args = imported(case)
    model = load_model_dir(model_dir).model.double()
    ref = _reference(sd, args, "training")
    vocab = model.config.src_vocab_size
    g = torch.Generator().manual_seed(5)
    for src in _sources(vocab):
        prefix = [EOS] + torch.randint(4, model.config.tgt_vocab_size, (6,), generator=g).tolist()
        ids, pad = pad_sources([src], PAD)
        got = model(ids, pad, torch.tensor([prefix]))[0]
        want = ref.decoder_logits(prefix, ref.encode(src))
        # Sinusoid tables are stored in float32 (~6e-8): that is the only difference from float64.
        assert torch.allclose(got, want, atol=2e-6, rtol=0), float((got - want).abs().max())


def test_placement_is_what_the_reference_says(imported) -> None:
    """Each placement matches the reference run with that placement and no other (the check can fail)."""
    src = _sources(24)[4]
    prefix = [EOS, 5, 9, 11, 4]
    outputs = {}
    for placement in PLACEMENTS:
        model_dir, sd, args = imported("postnorm-sinusoidal-sharedec", placement)
        model = load_model_dir(model_dir).model.double()
        ids, pad = pad_sources([src], PAD)
        outputs[placement] = model(ids, pad, torch.tensor([prefix]))[0]
        config = read_config(model_dir)
        assert config.source["multimax_placement"] == placement
    for placement, got in outputs.items():
        for other in PLACEMENTS:
            want = _reference(sd, args, other)
            want = want.decoder_logits(prefix, want.encode(src))
            close = torch.allclose(got, want, atol=2e-6, rtol=0)
            assert close == (other == placement), (placement, other, float((got - want).abs().max()))


def _greedy_mmserve(stepper, model_dir: Path, sources: list[list[int]]) -> list[list[int]]:
    gen = load_tokenizer(model_dir).generation
    ids, pad = pad_sources(sources, gen.pad_id)
    hyps = greedy_search(stepper, ids, pad, gen.bos_id, gen.eos_id, gen.pad_id, gen.max_length_for(ids.shape[1]),
                         alpha=gen.length_penalty, rules=search_rules(gen))
    return [h.tokens for h in hyps]


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_is_token_identical_to_fairseq_generate(imported, case: str) -> None:
    model_dir, sd, args = imported(case)
    model = load_model_dir(model_dir).model
    ref = _reference(sd, args, "training")
    sources = _sources(model.config.src_vocab_size, seed=1)
    want = [ref.greedy(src, max_len_b=MAX_LEN_B) for src in sources]
    assert _greedy_mmserve(model, model_dir, sources) == want  # one padded batch
    assert all(len(w) <= MAX_LEN_B + 1 and w[-1] == EOS for w in want)


def test_generation_defaults_are_fairseqs(imported) -> None:
    model_dir, _, _ = imported("softmax")
    gen = load_tokenizer(model_dir).generation
    assert (gen.beam_size, gen.length_penalty, gen.min_length, gen.unk_penalty) == (5, 1.0, 1, 0.0)
    assert (gen.bos_id, gen.pad_id, gen.eos_id, gen.unk_id) == (2, 1, 2, 3)  # decoder starts from </s>
    assert gen.search == "fairseq" and gen.max_length == MAX_LEN_B + 1


def test_beam_one_equals_greedy_and_beam_ends_with_eos(imported) -> None:
    model_dir, _, _ = imported("postnorm-sinusoidal-sharedec")
    model = load_model_dir(model_dir).model
    gen = load_tokenizer(model_dir).generation
    sources = _sources(24, seed=2)
    ids, pad = pad_sources(sources, gen.pad_id)
    args = (gen.bos_id, gen.eos_id, gen.pad_id, gen.max_length)
    rules = search_rules(gen)
    greedy = greedy_search(model, ids, pad, *args, alpha=1.0, rules=rules)
    beam1 = beam_search(model, ids, pad, *args, beam_size=1, alpha=1.0, rules=rules)
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam1]
    assert [h.score for h in greedy] == pytest.approx([b[0].score for b in beam1], abs=1e-5)
    for hyps in beam_search(model, ids, pad, *args, beam_size=5, alpha=1.0, rules=rules):
        assert hyps and hyps[0].tokens[-1] == gen.eos_id and len(hyps[0].tokens) <= gen.max_length


def test_omegaconf_style_config_imports_the_same_model(tmp_path, imported) -> None:
    namespace_dir, _, _ = imported("prenorm-learned-shareall")
    dict_dir, _, _ = _build(tmp_path, "prenorm-learned-shareall", omegaconf_style=True)
    a, b = read_config(namespace_dir), read_config(dict_dir)
    assert a.architecture == b.architecture
    sa, sb = load_model_dir(namespace_dir).model.state_dict(), load_model_dir(dict_dir).model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------ refusals


class _Payload:
    """Pickles as a call to builtins.open(marker, "w"): creates the marker file if anything runs it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_with_a_foreign_pickled_object_is_refused_and_nothing_runs(tmp_path) -> None:
    args = iwslt_args()
    write_dictionary(tmp_path / "d.txt", SRC_WORDS)
    sd = make_state_dict(args, 24, 24, seed=0)
    path = tmp_path / "checkpoint_best.pt"
    marker = tmp_path / "pwned"
    torch.save({"args": None, "cfg": {"model": args}, "model": sd, "extra_state": {"x": _Payload(marker)}}, path)
    with pytest.raises(CheckpointError) as err:
        import_official_fairseq(path, tmp_path / "out", tmp_path / "d.txt", tmp_path / "d.txt")
    assert str(path) in str(err.value) and "io.open" in str(err.value)  # builtins.open pickles as io.open
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_legacy_pickle_with_another_class_is_refused(tmp_path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "args": PurePosixPath("data-bin")}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="PurePosixPath"):
        import_official_fairseq(path, tmp_path / "out", path, path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(arch="lstm"), "not fairseq's encoder-decoder 'transformer'"),
        (dict(adaptive_softmax_cutoff="1000,2000"), "adaptive softmax"),
        (dict(activation_fn="tanh"), "activation_fn='tanh'"),
        (dict(decoder_attention_heads=2), "attention heads differ"),
    ],
)
def test_unsupported_settings_are_refused_by_name(tmp_path, overrides, message) -> None:
    args = iwslt_args(**overrides)
    sd = make_state_dict(iwslt_args(), 24, 32, seed=0)
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", args, sd)
    src, tgt = write_dictionary(tmp_path / "s.txt", SRC_WORDS), write_dictionary(tmp_path / "t.txt", TGT_WORDS)
    with pytest.raises(CheckpointError, match=message):
        import_official_fairseq(ckpt, tmp_path / "out", src, tgt)


def test_wrong_dictionary_and_missing_key_are_refused(tmp_path) -> None:
    args = iwslt_args()
    sd = make_state_dict(args, 24, 32, seed=0)
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", args, sd)
    src, tgt = write_dictionary(tmp_path / "s.txt", SRC_WORDS), write_dictionary(tmp_path / "t.txt", TGT_WORDS)
    short = write_dictionary(tmp_path / "short.txt", SRC_WORDS[:-1])
    with pytest.raises(CheckpointError, match="23 symbols .* 24 rows"):
        import_official_fairseq(ckpt, tmp_path / "out", short, tgt)
    del sd["decoder.layers.1.fc2.bias"]
    save_fairseq_checkpoint(tmp_path / "c.pt", args, sd)
    with pytest.raises(CheckpointError, match="decoder.layers.1.ffn.fc2.bias"):
        import_official_fairseq(ckpt, tmp_path / "out", src, tgt)


# ------------------------------------------------------------------------- ONNX export + parity


@pytest.fixture(scope="module")
def exported(imported, tmp_path_factory):
    from exporters.onnx import export_onnx

    cache = {}

    def get(case: str):
        if case not in cache:
            model_dir, _, _ = imported(case)
            out = tmp_path_factory.mktemp("onnx") / case
            export_onnx(model_dir, out)
            cache[case] = out
        return cache[case]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("case", ["postnorm-sinusoidal-sharedec", "prenorm-learned-shareall"])
def test_onnxruntime_greedy_is_token_identical_and_beam_matches_torch(imported, exported, case: str) -> None:
    import onnx

    from exporters.onnx import OnnxSeq2SeqStepper

    model_dir, sd, args = imported(case)
    export_dir = exported(case)
    nodes = [n for n in onnx.load(export_dir / "encoder.onnx").graph.node if n.domain == "mmserve"]
    assert [n.op_type for n in nodes] == ["MultiMax"] * args.encoder_layers  # training placement: encoder modulated
    stepper = OnnxSeq2SeqStepper(export_dir)
    ref = _reference(sd, args, "training")
    sources = _sources(load_model_dir(model_dir).model.config.src_vocab_size, seed=3)
    assert _greedy_mmserve(stepper, export_dir, sources) == [ref.greedy(s, max_len_b=MAX_LEN_B) for s in sources]
    gen = load_tokenizer(export_dir).generation
    ids, pad = pad_sources(sources, gen.pad_id)
    common = (gen.bos_id, gen.eos_id, gen.pad_id, gen.max_length)
    kwargs = dict(beam_size=5, alpha=gen.length_penalty, rules=search_rules(gen))
    torch_beam = beam_search(load_model_dir(model_dir).model, ids, pad, *common, **kwargs)
    onnx_beam = beam_search(stepper, ids, pad, *common, **kwargs)
    assert [b[0].tokens for b in torch_beam] == [b[0].tokens for b in onnx_beam]


@pytest.mark.slow
def test_parity_cli_passes_on_an_imported_model(imported, exported) -> None:
    from typer.testing import CliRunner

    from mmserve.cli import app

    model_dir, _, _ = imported("postnorm-sinusoidal-sharedec")
    result = CliRunner().invoke(app, ["parity", str(model_dir), "--onnx", str(exported("postnorm-sinusoidal-sharedec")),
                                      "--batch-sizes", "1,3"])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output


@pytest.mark.parametrize("case", list(CASES))
def test_beam_search_equals_fairseq_beam_search(imported, case: str) -> None:
    model_dir, sd, args = imported(case)
    model = load_model_dir(model_dir).model
    gen = load_tokenizer(model_dir).generation
    ref = _reference(sd, args, "training")
    sources = _sources(model.config.src_vocab_size, seed=4)
    ids, pad = pad_sources(sources, gen.pad_id)
    got = beam_search(model, ids, pad, gen.bos_id, gen.eos_id, gen.pad_id, gen.max_length, beam_size=5,
                      alpha=gen.length_penalty, rules=search_rules(gen))
    for src, hyps in zip(sources, got):
        tokens, score = ref.beam(src, beam_size=5, lenpen=1.0, max_len_b=MAX_LEN_B)
        assert hyps[0].tokens == tokens
        assert hyps[0].score == pytest.approx(score, abs=1e-4)


def test_share_all_embeddings_needs_one_joined_dictionary(tmp_path) -> None:
    args = CASES["prenorm-learned-shareall"]["args"]
    sd = make_state_dict(args, 34, 34, seed=0)
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", args, sd)
    joint = write_dictionary(tmp_path / "joint.txt", JOINT_WORDS)
    other = write_dictionary(tmp_path / "other.txt", list(reversed(JOINT_WORDS)))
    with pytest.raises(CheckpointError, match="joined dictionary"):
        import_official_fairseq(ckpt, tmp_path / "out", joint, other)
