"""`mmserve import official-fairseq` (the CLI) -> `mmserve serve --translator` on POST /translate, on the
torch and onnxruntime backends: batched and concurrent requests give what each text gives alone
(`decoding.translate` with fairseq-generate's rules), greedy answers equal the independent fairseq
reference, and bad input is a 4xx."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch
from conftest import ServerProcess
from fairseq_reference import EOS, ReferenceTranslator, iwslt_args, make_state_dict, save_fairseq_checkpoint, write_dictionary
from typer.testing import CliRunner

from mmserve.checkpoints import load_model_dir
from mmserve.checkpoints.fairseq import PLACEMENTS
from mmserve.cli import app
from mmserve.models.decoding import translate
from mmserve.tasks.translation import load_tokenizer

SRC = [f"s{i}" for i in range(20)]
TGT = [f"t{i}" for i in range(28)]
TEXTS = ["s1 s2 s3", "s4", "s5 s6 s7 s8 s9 s10 s11", "s0 s19", "s12 s13 s14 s15", "s7 s7 s7 s7 s7 s7", "s3 s2", "s18 s1 s16"]
MAX_LEN_B = 8


@pytest.fixture(scope="module")
def fairseq_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fairseq-serve")
    args = iwslt_args()
    sd = make_state_dict(args, len(SRC) + 4, len(TGT) + 4, seed=11)
    ckpt = save_fairseq_checkpoint(tmp / "checkpoint_best.pt", args, sd)
    src, tgt = write_dictionary(tmp / "dict.de.txt", SRC), write_dictionary(tmp / "dict.en.txt", TGT)
    out = tmp / "imported"
    result = CliRunner().invoke(app, ["import", "official-fairseq", str(ckpt), str(out), "--source-dict", str(src),
                                      "--target-dict", str(tgt), "--max-len-b", str(MAX_LEN_B), "--beam", "3"])
    assert result.exit_code == 0, result.output
    assert "MultiMax placement training" in result.output
    ref = ReferenceTranslator(sd, args, PLACEMENTS["training"])
    return out, ref


@pytest.fixture(scope="module")
def alone(fairseq_model):
    model_dir, _ = fairseq_model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    stepper, tokenizer = load_model_dir(model_dir).model, load_tokenizer(model_dir)
    yield lambda text, beam: translate(stepper, tokenizer, [text], beam_size=beam)[0]
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["torch", "onnxruntime", "native"])
def server(request, fairseq_model, tmp_path_factory):
    model_dir, _ = fairseq_model
    target = model_dir
    if request.param == "onnxruntime":
        from exporters.onnx import export_onnx

        target = tmp_path_factory.mktemp("fairseq-onnx") / "export"
        export_onnx(model_dir, target)
    srv = ServerProcess(["--translator", str(target), "--backend", request.param, "--max-batch-size", "16",
                         "--max-queue-delay-ms", "2"],
                        env={"MMSERVE_LIMIT_MAX_TEXTS": "8", "MMSERVE_LIMIT_MAX_TEXT_CHARS": "200"})
    yield srv
    assert srv.stop(), srv.output()


@pytest.mark.parametrize("beam", [1, 3])
def test_native_translator_search_equals_the_python_search(fairseq_model, beam: int) -> None:
    """The imported fairseq translator (post-norm, fairseq positions, fairseq-generate's rules) decoded
    in one native call per batch gives the torch model's translations and scores."""
    from mmserve.models.native import NativeTranslator

    model_dir, _ = fairseq_model
    model, tokenizer = load_model_dir(model_dir).model.eval(), load_tokenizer(model_dir)
    texts = [" ".join(SRC[(i * 7 + j) % len(SRC)] for j in range(1 + i % 6)) for i in range(24)]
    want = translate(model, tokenizer, texts, beam_size=beam, batch_size=8)
    got = translate(NativeTranslator(model), tokenizer, texts, beam_size=beam, batch_size=8)
    assert [text for text, _ in got] == [text for text, _ in want]
    assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-4)


def _ref_text(ref: ReferenceTranslator, text: str) -> str:
    src = [SRC.index(w) + 4 for w in text.split()] + [EOS]
    tokens = ref.greedy(src, max_len_b=MAX_LEN_B)
    return " ".join(TGT[t - 4] if t >= 4 else "<unk>" for t in tokens if t != EOS)


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 3])
def test_batched_and_concurrent_requests_equal_one_at_a_time(server, fairseq_model, alone, beam: int) -> None:
    _, ref = fairseq_model
    with httpx.Client(base_url=server.url, timeout=120) as client:
        r = client.post("/translate", json={"texts": TEXTS, "beam_size": beam})
        assert r.status_code == 200, r.text
        batched = [t["text"] for t in r.json()["translations"]]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as ac:
            return await asyncio.gather(*(ac.post("/translate", json={"texts": [t], "beam_size": beam})
                                          for t in TEXTS * 2))

    concurrent = [resp.json()["translations"][0]["text"] for resp in asyncio.run(run())]
    expected = [alone(t, beam)[0] for t in TEXTS]
    assert batched == expected and concurrent == expected * 2
    if beam == 1:
        assert expected == [_ref_text(ref, t) for t in TEXTS]  # fairseq-generate's greedy output


@pytest.mark.slow
def test_defaults_and_bad_input(server, alone) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post("/translate", json={"texts": ["s1 s2"]})
        assert r.status_code == 200 and r.json()["translations"][0]["text"] == alone("s1 s2", 3)[0]  # beam 3 default
        for body, code in (({"texts": ["   "]}, 422), ({"texts": ["s1 " * 100]}, 422), ({"texts": []}, 422)):
            r = client.post("/translate", json=body)
            assert r.status_code == code, r.text
        unknown = client.post("/translate", json={"texts": ["s1 zebra"]})  # unknown piece -> <unk>, like fairseq
        assert unknown.status_code == 200, unknown.text
