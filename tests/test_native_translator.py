"""The native C++ translator (`mmserve.models.native`, mmserve/ops/cpu_kernel/translator_cpu.cpp)
against the Python definitions it reproduces: the torch model's step API, and the greedy / beam loops
of `mmserve.models.decoding` with both rule sets, on model variants covering every architecture switch;
then the bundled translator on its test split against onnxruntime, and the `native` backend in the
CLI and the server.

No skip when the C++ build fails: `make test` builds the kernels first, and a native translator that
cannot build is a failure to see, not a pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from exporters.onnx.runtime import thread_policy
from mmserve.models.decoding import SearchRules, beam_search, greedy_search
from mmserve.models.native import NativeTranslator, NativeTranslatorError
from mmserve.models.seq2seq import MultiMaxTranslator, TranslatorConfig
from stepper_support import DelegatingStepper

REPO = Path(__file__).resolve().parents[1]
PAD, BOS, EOS, UNK = 0, 1, 2, 3
VOCAB = 40

# Every switch of TranslatorConfig the C++ side reads, across three variants.
VARIANTS = {
    "pre-norm multimax": dict(tie_embeddings="all", src_vocab_size=VOCAB),
    "fairseq-like post-norm": dict(
        encoder_norm="post", decoder_norm="post", activation="gelu", positions="fairseq-sinusoidal",
        position_offset=2, layernorm_embedding=True, scale_embedding=True, tie_embeddings="decoder",
        src_vocab_size=31, cross_attention_fn="softmax", decoder_ffn_dim=48, output_fn="softmax"),
    "learned positions, order 3, one head": dict(
        positions="learned", multimax_order=3, scale_embedding=False, tie_embeddings="none", src_vocab_size=29,
        encoder_attention_fn="softmax", num_heads=1),
}
# Head widths 8 (four heads) and 32 (one head): the C++ attention has a register-blocked path for widths
# of 1, 2, 4 or 8 vectors and a plain one for others; with 16-lane (AVX-512) or 8-lane (AVX2) vectors
# these two widths take both.


# Scale of the EOS output row per variant: random models end either at once or never; these give
# each variant a mix of lengths (checked by the search tests).
EOS_BOOST = {"pre-norm multimax": 2.0, "fairseq-like post-norm": 3.0, "learned positions, order 3, one head": 5.0}


def make_model(variant: str, seed: int = 0) -> MultiMaxTranslator:
    """A small random translator whose MultiMax parameters are far from zero (so a modulator the C++
    side skipped or misread would show), EOS made likely so sentences end at varied lengths."""
    torch.manual_seed(seed)
    settings = {"num_heads": 4, **VARIANTS[variant]}
    cfg = TranslatorConfig(tgt_vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, ffn_dim=64,
                           dropout=0.0, max_positions=24, **settings)
    model = MultiMaxTranslator(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ranges") or name.endswith("ts"):
                p.copy_(torch.randn_like(p) * 0.5)
        model.output_projection.weight[EOS] *= EOS_BOOST[variant]
    return model


def sources(model: MultiMaxTranslator, batch: int = 7, width: int = 9, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (batch,), generator=g)
    lengths[0] = width
    ids = torch.randint(4, model.config.src_vocab_size, (batch, width), generator=g)
    mask = torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)
    return ids.masked_fill(mask, PAD), mask


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 3e-5) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < tol * max(1.0, b.abs().max().item())


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request):
    model = make_model(request.param)
    return model, NativeTranslator(model)


@torch.no_grad()
def test_step_api_matches_the_torch_model(pair) -> None:
    """encode, cross_kv and three cached steps with left-padded caches (rows of different history,
    as the continuous batcher joins them), a reorder in between: the same numbers as the torch model."""
    model, native = pair
    ids, mask = sources(model)
    memory = model.encode(ids, mask)
    close(native.encode(ids, mask), memory)
    cross_t, cross_n = model.cross_kv(memory), native.cross_kv(memory)
    for (kt, vt), (kn, vn) in zip(cross_t, cross_n, strict=True):
        close(kn, kt)
        close(vn, vt)
    batch = ids.shape[0]
    history = torch.zeros(batch, 0, dtype=torch.bool)
    starts = torch.tensor([0, 0, 1, 2, 0, 1, 0])  # rows whose first slots are padding
    kv_t = kv_n = None
    tokens = torch.full((batch, 1), BOS)
    for step in range(3):
        pad = torch.cat([history, torch.zeros(batch, 1, dtype=torch.bool)], dim=1)
        if step == 0:
            pad[:, 0] = False
        positions = (torch.full((batch, 1), step) - starts.unsqueeze(1)).clamp(min=0)
        pad[:, :step] |= torch.arange(step).unsqueeze(0) < starts.unsqueeze(1)
        logits_t, kv_t = model.decode_step(tokens, positions, kv_t, pad, cross_t, mask)
        logits_n, kv_n = native.decode_step(tokens, positions, kv_n, pad, cross_n, mask)
        close(logits_n, logits_t)
        for (kt, vt), (kn, vn) in zip(kv_t, kv_n, strict=True):
            close(kn, kt)
            close(vn, vt)
        history = pad
        tokens = logits_t[:, -1].argmax(-1, keepdim=True)
        if step == 1:  # beam-style reorder: rows repeat and permute
            index = torch.tensor([6, 5, 5, 3, 2, 1, 0])
            kv_t, kv_n = model.reorder_kv(kv_t, index), native.reorder_kv(kv_n, index)
            cross_t, cross_n = model.reorder_kv(cross_t, index), native.reorder_kv(cross_n, index)
            tokens, history, mask, starts = tokens[index], history[index], mask[index], starts[index]


def _decode(stepper, ids, mask, beam: int, rules: SearchRules, max_length: int = 14, n_best: int = 1):
    if beam == 1:
        return [[h] for h in greedy_search(stepper, ids, mask, BOS, EOS, PAD, max_length, alpha=0.6, rules=rules)]
    return beam_search(stepper, ids, mask, BOS, EOS, PAD, max_length, beam_size=beam, alpha=0.6, n_best=n_best,
                       rules=rules)


RULES = {
    "mmserve": SearchRules(),
    "fairseq": SearchRules(style="fairseq", min_length=2, unk_id=UNK, unk_penalty=0.5),
}


@pytest.mark.parametrize("rules", list(RULES))
@pytest.mark.parametrize("beam", [1, 3])
def test_native_search_is_the_python_search(pair, beam: int, rules: str) -> None:
    """`search` (one C++ call) against decoding.py's loops driven through the same native steps (a
    wrapper hides `search`), so both see the same logits: tokens equal, scores equal to float rounding,
    all n-best lists too."""
    model, native = pair
    ids, mask = sources(model, batch=12, seed=3)
    n_best = beam
    got = _decode(native, ids, mask, beam, RULES[rules], n_best=n_best)
    want = _decode(DelegatingStepper(native), ids, mask, beam, RULES[rules], n_best=n_best)
    assert [[h.tokens for h in row] for row in got] == [[h.tokens for h in row] for row in want]
    for row_got, row_want in zip(got, want, strict=True):
        for g, w in zip(row_got, row_want, strict=True):
            assert g.score == pytest.approx(w.score, abs=1e-5)
    lengths = {len(row[0].tokens) for row in got}
    assert len(lengths) > 1, "every sentence has the same length: the test decodes nothing interesting"


@pytest.mark.parametrize("beam", [1, 3])
def test_native_search_matches_the_torch_model(pair, beam: int) -> None:
    """The whole chain against the torch reference (torch steps, Python loops): same tokens; scores
    within float32 rounding of two implementations."""
    model, native = pair
    ids, mask = sources(model, batch=12, seed=5)
    got = _decode(native, ids, mask, beam, SearchRules())
    want = _decode(model, ids, mask, beam, SearchRules())
    assert [row[0].tokens for row in got] == [row[0].tokens for row in want]
    assert [row[0].score for row in got] == pytest.approx([row[0].score for row in want], abs=1e-4)


ENGINES = {"sgemm": "sgemm", "packed": "mkl-packed", "onednn": "onednn"}
ENGINE_AVAILABLE = {"sgemm": True, "packed": torch.backends.mkl.is_available(),
                    "onednn": torch.backends.mkldnn.is_available()}


@pytest.mark.parametrize("mode", ["auto", *ENGINES])
def test_every_gemm_engine_gives_the_torch_models_search(mode: str, monkeypatch) -> None:
    """Each GEMM engine the native translator can pick (MMSERVE_NATIVE_GEMM forces one; `auto` measures
    them per weight shape) decodes like the torch model, greedy and beam; a forced engine is the one
    reported for every shape where this torch has it."""
    monkeypatch.setenv("MMSERVE_NATIVE_GEMM", mode)
    model = make_model("pre-norm multimax")
    native = NativeTranslator(model)
    engines = native.gemm_engines()
    shapes = dict(part.split(": ") for part in engines.split(", "))
    assert len(shapes) >= 5, engines  # qkv, o, fc1, fc2, output, cross k/v (o and q share a shape)
    if mode != "auto" and ENGINE_AVAILABLE[mode]:
        assert set(shapes.values()) == {f"{ENGINES[mode]}/{ENGINES[mode]}"}, engines
    ids, mask = sources(model, batch=12, seed=5)
    for beam in (1, 3):
        got = _decode(native, ids, mask, beam, SearchRules())
        want = _decode(model, ids, mask, beam, SearchRules())
        assert [row[0].tokens for row in got] == [row[0].tokens for row in want]
        assert [row[0].score for row in got] == pytest.approx([row[0].score for row in want], abs=1e-4)


def test_a_translator_prepared_at_one_thread_count_runs_at_another() -> None:
    """Packed weights and engine choices are made per torch thread count (MKL's packed layout depends
    on it): a translator created at 1 thread and then run at 2 prepares itself again and decodes the
    same tokens, with engines reported at both counts."""
    model = make_model("pre-norm multimax")
    ids, mask = sources(model, batch=12, seed=5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        native = NativeTranslator(model)
        one = _decode(native, ids, mask, 3, SearchRules())
        assert native.gemm_engines()
        torch.set_num_threads(2)
        two = _decode(native, ids, mask, 3, SearchRules())
        assert native.gemm_engines()
    finally:
        torch.set_num_threads(before)
    assert [row[0].tokens for row in one] == [row[0].tokens for row in two]
    assert [row[0].score for row in one] == pytest.approx([row[0].score for row in two], abs=1e-5)


def test_an_unknown_gemm_engine_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("MMSERVE_NATIVE_GEMM", "cublas")
    with pytest.raises(RuntimeError, match="MMSERVE_NATIVE_GEMM must be auto, sgemm, packed or onednn"):
        NativeTranslator(make_model("pre-norm multimax"))


def test_bundled_translator_equals_onnxruntime_on_the_test_split(numbers_export) -> None:
    """The bundled numbers-en-de translator, its first 600 test sources, greedy and beam 4: the native
    translator returns the onnxruntime backend's tokens (what the server and `mmserve translate` ran
    before), scores within 1e-4."""
    from exporters.onnx.runtime import OnnxSeq2SeqStepper, RuntimeOptions
    from mmserve.checkpoints import load_model_dir
    from mmserve.data.numbers import heldout_texts
    from mmserve.models.decoding import translate
    from mmserve.tasks.translation import load_tokenizer

    numbers = REPO / "models" / "numbers-en-de"
    loaded = load_model_dir(numbers)
    tokenizer = load_tokenizer(numbers)
    texts = [source for source, _ in heldout_texts(loaded.config, 600)]
    native = NativeTranslator(loaded.model.eval())
    onnx = OnnxSeq2SeqStepper(numbers_export, RuntimeOptions(intra_op_threads=1))
    for beam in (1, 4):
        got = translate(native, tokenizer, texts, beam_size=beam, batch_size=32)
        want = translate(onnx, tokenizer, texts, beam_size=beam, batch_size=32)
        assert [text for text, _ in got] == [text for text, _ in want]
        assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-4)


def test_refusals_name_the_problem() -> None:
    model = make_model("pre-norm multimax")
    with pytest.raises(NativeTranslatorError, match="eval"):
        NativeTranslator(model.train())
    native = NativeTranslator(model.eval())
    ids, mask = sources(model)
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        native.encode(ids.masked_fill(mask, 999), mask)
    with pytest.raises(RuntimeError, match="max_length"):
        native.search(ids, mask, BOS, EOS, PAD, 500, 1, 0.6, 1, SearchRules())


def test_native_backend_loads_classifiers_on_onnxruntime(tmp_path) -> None:
    """`--backend native` serves a mixed model set: a classifier runs on onnxruntime and says so."""
    from server.backends import LoadOptions, load_backend

    backend = load_backend("native", REPO / "models" / "digits-vit", "image-classification",
                           LoadOptions(device="cpu", onnx_cache_dir=tmp_path))
    try:
        assert backend.info.backend == "onnxruntime"
    finally:
        backend.close()


def test_thread_policy_gives_native_one_worker_per_thread() -> None:
    policy = thread_policy("native", 2)
    assert (policy.workers, policy.torch_threads) == (2, 1)
    policy = thread_policy("native", 2, workers=1)  # one loop: sgemm gets both threads
    assert (policy.workers, policy.torch_threads) == (1, 2)


def test_translate_cli_native_equals_onnxruntime(tmp_path) -> None:
    """`mmserve translate --backend native` writes what `--backend onnxruntime` writes, line for line."""
    from typer.testing import CliRunner

    from mmserve.cli import app

    lines = ["seven", "three hundred and twelve", "", "forty-two thousand five hundred", "nine hundred and one"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    outputs = {}
    for backend in ("native", "onnxruntime"):
        out = tmp_path / f"{backend}.txt"
        result = CliRunner().invoke(app, [
            "translate", str(REPO / "models" / "numbers-en-de"), "--input", str(tmp_path / "in.txt"),
            "--output", str(out), "--backend", backend, "--beam-size", "4", "--no-progress",
            "--onnx-cache-dir", str(tmp_path / "onnx-cache")])
        assert result.exit_code == 0, result.output
        outputs[backend] = out.read_text().splitlines()
    assert outputs["native"] == outputs["onnxruntime"]
    assert len(outputs["native"]) == len(lines) and outputs["native"][2] == ""


def test_server_on_the_native_backend(tiny_translator) -> None:
    """`--backend native` in the server, 2 decode lanes: 48 concurrent requests (greedy and beam,
    several lengths) through the continuous batcher, which joins sentences into running decodes with
    left-padded caches; every answer equals the torch model decoding that text alone."""
    import asyncio

    import httpx
    from conftest import ServerProcess
    from num2words import num2words

    from mmserve.checkpoints import load_model_dir
    from mmserve.tasks.translation import load_tokenizer

    model = load_model_dir(tiny_translator).model.eval()
    tokenizer = load_tokenizer(tiny_translator)
    texts = [num2words(n) for n in (0, 7, 42, 105, 999, 1234, 20_020, 345_678, 13, 88, 700_001, 5)]
    requests = [{"texts": [texts[i % len(texts)], texts[(3 * i + 1) % len(texts)]], "beam_size": 1 + i % 3,
                 "max_length": (8, 16, 30)[i % 3]} for i in range(48)]
    server = ServerProcess(["--translator", str(tiny_translator), "--backend", "native", "--threads", "2",
                            "--max-batch-size", "16", "--max-queue-delay-ms", "2"])
    try:
        info = httpx.get(f"{server.url}/v1/models", timeout=30).json()["models"][0]
        assert info["backend"] == "native" and info["extra"]["decode_lanes"] == 2

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                return await asyncio.gather(*(client.post("/translate", json=r) for r in requests))

        responses = asyncio.run(run())
    finally:
        assert server.stop(), server.output()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference runs: a tiny model is far slower on a busy thread pool
    try:
        check_answers(model, tokenizer, requests, responses)
    finally:
        torch.set_num_threads(threads)


def check_answers(model, tokenizer, requests, responses) -> None:
    from mmserve.models.decoding import translate

    for request, response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        want = translate(model, tokenizer, request["texts"], beam_size=request["beam_size"],
                         max_length=request["max_length"])
        got = response.json()["translations"]
        assert [t["text"] for t in got] == [text for text, _ in want]
        assert [t["score"] for t in got] == pytest.approx([score for _, score in want], abs=1e-4)


def test_translate_cli_auto_picks_native_for_a_model_directory(numbers_export) -> None:
    """`mmserve translate` defaults to `--backend auto`: the native translator for a model directory,
    onnxruntime for an export directory (no weights for the C++ side to read)."""
    from mmserve.cli.translate_cmd import choose_backend

    assert choose_backend(REPO / "models" / "numbers-en-de") == "native"
    assert choose_backend(numbers_export) == "onnxruntime"
