"""MultiMaxTranslator: config, layout, the step API (KV cache == teacher forcing, per-row padding and
positions, batch independence), tied weights through a model directory, gradients to MultiMax scalars."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from mmserve.checkpoints import ModelDirConfig, load_model_dir, save_model_dir
from mmserve.models import MultiMaxTranslator, TranslatorConfig, build_model, parse_architecture
from mmserve.ops import multimax, seglu

ATOL = 1e-5


def tiny(**overrides) -> TranslatorConfig:
    base = dict(
        src_vocab_size=13, tgt_vocab_size=11, d_model=16, num_heads=2, encoder_layers=2, decoder_layers=2,
        ffn_dim=32, dropout=0.0, max_positions=24,
    )
    return TranslatorConfig(**{**base, **overrides})


def model_for(cfg: TranslatorConfig, seed: int = 0) -> MultiMaxTranslator:
    torch.manual_seed(seed)
    model = MultiMaxTranslator(cfg).eval()
    # Fresh MultiMax scalars are ~N(0, .02): push them to values where the modulator matters, so a
    # test would notice a path that skipped it.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ranges") or name.endswith("ts"):
                values = torch.tensor([-1.0, 1.0, -2.0, 2.0, -3.0, 3.0])[: p.numel()]
                p.copy_(values * (0.5 if name.endswith("ts") else 1.0) / torch.arange(1, p.numel() + 1))
    return model


def batch(cfg: TranslatorConfig, src_lengths: list[int], tgt_len: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    width = max(src_lengths)
    src = torch.randint(4, cfg.src_vocab_size, (len(src_lengths), width), generator=g)
    src_pad = torch.arange(width).unsqueeze(0) >= torch.tensor(src_lengths).unsqueeze(1)
    src = src.masked_fill(src_pad, 0)
    tgt = torch.randint(3, cfg.tgt_vocab_size, (len(src_lengths), tgt_len), generator=g)
    tgt[:, 0] = 1
    return src, src_pad, tgt


CONFIGS = {
    "multimax-sinusoidal": tiny(),
    "multimax-learned": tiny(positions="learned"),
    "softmax": tiny(attention_fn="softmax"),
    "multimax-attn-softmax-head": tiny(output_fn="softmax"),
    "order3-untied": tiny(multimax_order=3, tie_embeddings="none"),
}


# ------------------------------------------------------------------------------------------- config


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="not divisible"):
        tiny(d_model=18, num_heads=4)
    with pytest.raises(ValidationError, match="shared vocabulary"):
        tiny(tie_embeddings="all")
    with pytest.raises(ValidationError):
        tiny(unknown_field=1)
    with pytest.raises(ValidationError):
        tiny(positions="rotary")
    cfg = tiny(attention_fn="softmax")
    assert cfg.head_fn == "softmax" and tiny(output_fn="softmax").head_fn == "softmax"
    assert parse_architecture(cfg.model_dump()) == cfg
    assert isinstance(build_model(cfg), MultiMaxTranslator)


def test_multimax_parameters_layout() -> None:
    model = MultiMaxTranslator(tiny(encoder_layers=1, decoder_layers=2))
    names = {n for n, _ in model.named_parameters()}
    expected = {"ranges", "ts", "encoder.layers.0.self_attn.ranges", "encoder.layers.0.self_attn.ts"}
    for i in range(2):
        for part in ("self_attn", "cross_attn"):
            expected |= {f"decoder.layers.{i}.{part}.ranges", f"decoder.layers.{i}.{part}.ts"}
    assert expected <= names
    assert {n for n in names if n.endswith(("ranges", "ts"))} == expected
    softmax = MultiMaxTranslator(tiny(attention_fn="softmax"))
    assert not any(n.endswith(("ranges", "ts")) for n, _ in softmax.named_parameters())
    # Tied by default: the decoder embedding is the output projection.
    assert model.output_projection.weight is model.decoder.embed.embed_tokens.weight


def test_output_layer_is_multimax() -> None:
    model = model_for(tiny())
    h = torch.randn(3, 5, 16)
    scores = model.output_projection(h)
    logits = model.logits(h)
    assert torch.allclose(logits, seglu(scores, model.ranges, model.ts), atol=1e-6)
    probs = multimax(scores, model.ranges, model.ts, dim=-1)
    assert torch.allclose(torch.softmax(logits, -1), probs, atol=1e-6)
    assert not torch.allclose(torch.softmax(scores, -1), probs, atol=1e-3)  # the modulator matters


# ------------------------------------------------------------------------------------------ step API


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_incremental_equals_teacher_forcing(cfg: TranslatorConfig) -> None:
    model = model_for(cfg)
    src, src_pad, tgt = batch(cfg, [7, 4, 6], 9)
    full = model(src, src_pad, tgt)
    assert full.shape == (3, 9, cfg.tgt_vocab_size)
    memory = model.encode(src, src_pad)
    assert memory.shape == (3, 7, cfg.d_model)
    cross = model.cross_kv(memory)
    assert len(cross) == cfg.decoder_layers and cross[0][0].shape == (3, cfg.num_heads, 7, cfg.head_dim)
    kv, steps = None, []
    for t in range(9):
        no_pad = torch.zeros(3, t + 1, dtype=torch.bool)
        logits, kv = model.decode_step(tgt[:, t : t + 1], torch.full((3, 1), t), kv, no_pad, cross, src_pad)
        steps.append(logits)
        assert kv[0][0].shape == (3, cfg.num_heads, t + 1, cfg.head_dim)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=0)
    # Several new tokens on top of a cache (the server's prefill of a resumed row) also agree.
    _, kv4 = model.decode_step(tgt[:, :4], torch.arange(4).expand(3, 4), None,
                               torch.zeros(3, 4, dtype=torch.bool), cross, src_pad)
    rest, _ = model.decode_step(tgt[:, 4:], torch.arange(4, 9).expand(3, 5), kv4,
                                torch.zeros(3, 9, dtype=torch.bool), cross, src_pad)
    torch.testing.assert_close(rest, full[:, 4:], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "cfg",
    [CONFIGS["multimax-sinusoidal"], CONFIGS["multimax-learned"], CONFIGS["softmax"]],
    ids=["sinusoidal", "learned", "softmax"],
)
def test_rows_with_different_history_share_a_batch(cfg: TranslatorConfig) -> None:
    """Row 0 has 3 tokens of history, row 1 has 6: row 0's cache is left-padded with 3 junk slots that
    self_pad_mask hides, positions are per row, and both rows match their own teacher-forced run."""
    model = model_for(cfg)
    src, src_pad, tgt = batch(cfg, [5, 8], 8)
    full = model(src, src_pad, tgt)
    cross = model.cross_kv(model.encode(src, src_pad))
    # Each row's own cache, built alone.
    caches = []
    for row, hist in ((0, 3), (1, 6)):
        one = torch.tensor([row])
        no_pad = torch.zeros(1, hist, dtype=torch.bool)
        _, kv = model.decode_step(tgt[one, :hist], torch.arange(hist).unsqueeze(0), None, no_pad,
                                  model.reorder_kv(cross, one), src_pad[one])
        caches.append(kv)
    # Left-pad row 0's cache to 6 slots with junk (large values: leaking them would show).
    merged = []
    for (k0, v0), (k1, v1) in zip(*caches):
        junk = torch.full((1, cfg.num_heads, 3, cfg.head_dim), 50.0)
        merged.append((torch.cat([torch.cat([junk, k0], 2), k1]), torch.cat([torch.cat([junk, v0], 2), v1])))
    pad = torch.zeros(2, 6 + 2, dtype=torch.bool)
    pad[0, :3] = True
    tokens = torch.stack([tgt[0, 3:5], tgt[1, 6:8]])
    positions = torch.tensor([[3, 4], [6, 7]])
    logits, new_kv = model.decode_step(tokens, positions, merged, pad, cross, src_pad)
    assert new_kv[0][0].shape == (2, cfg.num_heads, 8, cfg.head_dim)
    torch.testing.assert_close(logits[0], full[0, 3:5], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[1], full[1, 6:8], atol=ATOL, rtol=0)


def test_rows_do_not_depend_on_each_other() -> None:
    cfg = tiny()
    model = model_for(cfg)
    src, src_pad, tgt = batch(cfg, [6, 3, 9, 1], 7)
    together = model(src, src_pad, tgt)
    for row in range(4):
        length = int((~src_pad[row]).sum())
        alone = model(src[row : row + 1, :length], src_pad[row : row + 1, :length], tgt[row : row + 1])
        torch.testing.assert_close(together[row : row + 1], alone, atol=ATOL, rtol=0)
    # Changing another row's source or target leaves this row untouched.
    src2, tgt2 = src.clone(), tgt.clone()
    src2[1:, 0] = (src2[1:, 0] + 1) % cfg.src_vocab_size
    tgt2[1:, 2:] = 3
    torch.testing.assert_close(model(src2, src_pad, tgt2)[0], together[0], atol=0, rtol=0)


def test_padding_never_gives_nan_and_reorder() -> None:
    cfg = tiny()
    model = model_for(cfg)
    src, src_pad, tgt = batch(cfg, [4, 2], 3)
    cross = model.cross_kv(model.encode(src, src_pad))
    # A row whose new token is itself padding (a finished row riding along) attends to nothing: zeros.
    pad = torch.tensor([[False, False, True], [False, False, False]])
    _, kv = model.decode_step(tgt[:, :2], torch.arange(2).expand(2, 2), None, pad[:, :2], cross, src_pad)
    logits, _ = model.decode_step(tgt[:, 2:], torch.full((2, 1), 2), kv, pad, cross, src_pad)
    assert torch.isfinite(logits).all()
    index = torch.tensor([1, 1, 0])
    moved = model.reorder_kv(kv, index)
    assert torch.equal(moved[1][0], kv[1][0][index]) and torch.equal(moved[0][1], kv[0][1][index])


def test_gradients_reach_every_multimax_scalar() -> None:
    cfg = tiny()
    model = model_for(cfg).train()
    src, src_pad, tgt = batch(cfg, [5, 3], 6)
    logits = model(src, src_pad, tgt[:, :-1], tgt[:, :-1] == 0)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.tgt_vocab_size), tgt[:, 1:].reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        if name.endswith(("ranges", "ts")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("tie", ["decoder", "all", "none"])
def test_model_dir_round_trip_keeps_ties(tmp_path: Path, tie: str) -> None:
    cfg = tiny(src_vocab_size=11, tie_embeddings=tie, positions="learned")
    model = model_for(cfg)
    config = ModelDirConfig(
        name="t", task="translation", architecture=cfg.model_dump(), tokenizer="tokenizer.json"
    )
    save_model_dir(tmp_path / "t", model, config)
    loaded = load_model_dir(tmp_path / "t").model
    src, src_pad, tgt = batch(cfg, [4, 6], 5)
    torch.testing.assert_close(loaded(src, src_pad, tgt), model(src, src_pad, tgt), atol=0, rtol=0)
    tied = loaded.output_projection.weight is loaded.decoder.embed.embed_tokens.weight
    assert tied == (tie != "none")
    shared = loaded.encoder.embed.embed_tokens.weight is loaded.decoder.embed.embed_tokens.weight
    assert shared == (tie == "all")
