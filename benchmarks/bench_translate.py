"""Translation decoding throughput: mmserve (onnxruntime, MultiMax) vs CTranslate2 (float32), side by side.

In ONE run, for the bundled numbers-en-de translator and an IWSLT-sized translator with random weights
(`transformer_iwslt_de_en` shape: 512 wide, 6+6 layers, 4 heads, FFN 1024, 10k shared vocabulary):

    ctranslate2        the model's SoftMax twin (same weights, softmax instead of MultiMax) converted
                       to CTranslate2 with its converter API (a `TransformerSpec` filled from our
                       weights: same layers, widths, heads, vocabulary, position table); N threads
                       = inter_threads N x intra_threads 1 (N batches at once), and a
                       "ctranslate2 1 loop" row with intra_threads N
    mmserve            the MultiMax model exported as `mmserve export` does, run by
                       `OnnxSeq2SeqStepper` + mmserve's greedy / beam search (what the server and
                       `mmserve translate` run), threads used as `thread_policy` says: N threads =
                       N batches decoded at once with one intra-op thread each
                       (`mmserve translate --threads N`, CTranslate2's inter_threads)
    mmserve softmax    the same SoftMax twin on mmserve: the same decisions as CTranslate2 when the
                       conversion is faithful, so it separates "MultiMax" from "the decoder"
    mmserve 1 loop     (N > 1 threads only) one batch at a time on N intra-op threads
                       (`mmserve translate --threads N --workers 1`), CTranslate2's intra_threads

All engines get the same sources as token ids (CTranslate2 as their token strings), sorted by length
and cut into batches of 32 (what CTranslate2's translate_batch does with max_batch_size). For each
decoding, every engine at every thread count runs once per round, rounds interleaved, medians
reported; both ratios (to CTranslate2 at the same threads, to the engine's own 1-thread run) are
paired per round, so a busy phase of a shared machine hits both sides of a ratio. Also printed: tokens
generated per sentence by each engine (the work done), the agreement of CTranslate2 with mmserve on the
SoftMax twin (checks the conversion), and where mmserve's 1-thread time goes (encoder, decoder
`session.run`, the search loop around them) next to CTranslate2's time to encode and take one step
(`max_decoding_length=1`), so the gap can be placed.

    pip install -e ".[bench]"     # ctranslate2
    python benchmarks/bench_translate.py [--models bundled,iwslt] [--sentences 2000] [--rounds 8]
                                         [--iwslt-sentences 128] [--threads 1,2] [--work build/bench-translate]

Exports and conversions are cached under --work (keyed by the weights' sha256 like the server's cache).
"""

from __future__ import annotations

import os

# CTranslate2's OpenMP workers spin-wait by default; on a busy 2-core machine that made its 2-thread
# runs collapse (greedy 61 sent/s vs 1,031 on 1 thread, load average 14-17), the same fight mmserve's
# thread policy avoids. Passive waiting is set before any OpenMP runtime starts, for a fair baseline;
# `OMP_WAIT_POLICY=ACTIVE python benchmarks/bench_translate.py` measures CTranslate2's default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _timing import compare, machine_info, paired_ratio  # noqa: E402

from exporters.onnx.runtime import OnnxSeq2SeqStepper, RuntimeOptions, apply_thread_policy, thread_policy  # noqa: E402
from mmserve.checkpoints import ModelDirConfig, load_model_dir, read_config, save_model_dir  # noqa: E402
from mmserve.models import MultiMaxTranslator, TranslatorConfig  # noqa: E402
from mmserve.models.decoding import beam_search, greedy_search  # noqa: E402
from mmserve.models.native import NativeTranslator  # noqa: E402
from mmserve.tasks.translation import pad_sources  # noqa: E402

BUNDLED = REPO / "models" / "numbers-en-de"
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


# ----------------------------------------------------------------------------------- the models


def softmax_twin_dir(model_dir: Path, out: Path) -> Path:
    """The same weights with SoftMax attention and a SoftMax output layer, as an mmserve model dir."""
    loaded = load_model_dir(model_dir)
    arch = loaded.config.architecture | {"attention_fn": "softmax", "output_fn": "softmax"}
    twin = MultiMaxTranslator(TranslatorConfig(**arch)).eval()
    missing, unexpected = twin.load_state_dict(loaded.model.state_dict(), strict=False)
    assert not missing and all(k.endswith(("ranges", "ts")) for k in unexpected), (missing, unexpected)
    config = loaded.config.model_copy(update={"name": loaded.config.name + "-softmax", "architecture": arch})
    tokenizer = model_dir / "tokenizer.json"
    side = {"tokenizer.json": tokenizer} if tokenizer.is_file() else None
    return save_model_dir(out, twin, config, side_files=side)


def iwslt_dir(out: Path, max_length: int) -> Path:
    """A `transformer_iwslt_de_en`-sized MultiMax translator with random weights (seeded)."""
    torch.manual_seed(0)
    arch = TranslatorConfig(src_vocab_size=10_000, tgt_vocab_size=10_000, d_model=512, num_heads=4,
                            encoder_layers=6, decoder_layers=6, ffn_dim=1024, max_positions=64,
                            tie_embeddings="decoder", dropout=0.0)
    model = MultiMaxTranslator(arch).eval()
    generation = {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3, "max_source_tokens": 64,
                  "max_length": max_length, "max_length_limit": 64, "beam_size": 4, "length_penalty": 0.6}
    config = ModelDirConfig(name="iwslt-random", task="translation", architecture=arch.model_dump(),
                            generation=generation)
    return save_model_dir(out, model, config)


def vocabulary(model_dir: Path, size: int) -> list[str]:
    """Token strings by id: the model's tokenizer.json, or synthetic names for a random model."""
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        return [tok.id_to_token(i) for i in range(size)]
    return SPECIALS + [f"t{i}" for i in range(len(SPECIALS), size)]


def ctranslate2_dir(twin_dir: Path, out: Path) -> Path:
    """Convert the SoftMax twin with CTranslate2's converter API (its TransformerSpec, our weights)."""
    import ctranslate2
    from ctranslate2.specs import common_spec, transformer_spec

    loaded = load_model_dir(twin_dir)
    model, cfg = loaded.model, loaded.architecture
    numpy = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.num_heads, pre_norm=True,
        activation=common_spec.Activation.RELU)
    spec.config.layer_norm_epsilon = cfg.layer_norm_eps

    def linear(target, *prefixes: str) -> None:  # one or several of our Linears, fused in order
        target.weight = np.concatenate([numpy[f"{p}.weight"] for p in prefixes])
        if f"{prefixes[0]}.bias" in numpy:
            target.bias = np.concatenate([numpy[f"{p}.bias"] for p in prefixes])

    def norm(target, prefix: str) -> None:
        target.gamma, target.beta = numpy[f"{prefix}.weight"], numpy[f"{prefix}.bias"]

    def ffn(target, prefix: str) -> None:
        norm(target.layer_norm, f"{prefix}.ffn_norm")
        linear(target.linear_0, f"{prefix}.ffn.fc1")
        linear(target.linear_1, f"{prefix}.ffn.fc2")

    positions = model.encoder.embed.sinusoid.numpy()
    assert cfg.positions == "sinusoidal" and cfg.scale_embedding
    spec.encoder.embeddings[0].weight = numpy["encoder.embed.embed_tokens.weight"]
    spec.encoder.position_encodings.encodings = positions
    norm(spec.encoder.layer_norm, "encoder.norm")
    for i, layer in enumerate(spec.encoder.layer):
        p = f"encoder.layers.{i}"
        norm(layer.self_attention.layer_norm, f"{p}.self_attn_norm")
        linear(layer.self_attention.linear[0], *(f"{p}.self_attn.{x}_proj" for x in "qkv"))
        linear(layer.self_attention.linear[1], f"{p}.self_attn.out_proj")
        ffn(layer.ffn, p)
    spec.decoder.embeddings.weight = numpy["decoder.embed.embed_tokens.weight"]
    spec.decoder.position_encodings.encodings = positions
    spec.decoder.projection.weight = numpy["output_projection.weight"]
    norm(spec.decoder.layer_norm, "decoder.norm")
    for i, layer in enumerate(spec.decoder.layer):
        p = f"decoder.layers.{i}"
        norm(layer.self_attention.layer_norm, f"{p}.self_attn_norm")
        linear(layer.self_attention.linear[0], *(f"{p}.self_attn.{x}_proj" for x in "qkv"))
        linear(layer.self_attention.linear[1], f"{p}.self_attn.out_proj")
        norm(layer.attention.layer_norm, f"{p}.cross_attn_norm")
        linear(layer.attention.linear[0], f"{p}.cross_attn.q_proj")
        linear(layer.attention.linear[1], f"{p}.cross_attn.k_proj", f"{p}.cross_attn.v_proj")
        linear(layer.attention.linear[2], f"{p}.cross_attn.out_proj")
        ffn(layer.ffn, p)
    spec.register_source_vocabulary(vocabulary(twin_dir, cfg.src_vocab_size))
    spec.register_target_vocabulary(vocabulary(twin_dir, cfg.tgt_vocab_size))
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = "<unk>", "<bos>", "<eos>"
    spec.config.decoder_start_token = "<bos>"
    spec.validate()
    spec.optimize(quantization=None)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    assert ctranslate2.contains_model(str(out))
    return out


def conversion_gap(twin_dir: Path, translator, vocab: list[str], rows: list[list[int]], gen: dict, n: int = 8) -> float:
    """Largest |log p| difference, over CTranslate2's greedy outputs for the first `n` sources, between
    CTranslate2's own scoring (`score_batch`, EOS included) and the SoftMax twin in torch (teacher
    forced, float64 log-softmax). Whole-sentence agreement alone cannot tell a faulty conversion from
    near-ties (a random model's log-probs are nearly flat); this can: a faithful conversion differs
    by float32 rounding only."""
    model = load_model_dir(twin_dir).model.eval()
    index = {t: i for i, t in enumerate(vocab)}
    source = [[vocab[i] for i in row] for row in rows[:n]]
    found = translator.translate_batch(source, beam_size=1, max_decoding_length=gen["max_length"])
    targets = [r.hypotheses[0] for r in found]
    worst = 0.0
    for row, target, scored in zip(rows[:n], targets, translator.score_batch(source, targets)):
        ids = [index[t] for t in target]
        with torch.no_grad():
            logits = model(torch.tensor([row]), torch.zeros(1, len(row), dtype=torch.bool),
                           torch.tensor([[gen["bos_id"], *ids]]))
        logp = torch.log_softmax(logits[0].double(), dim=-1)
        ours = [float(logp[i, t]) for i, t in enumerate([*ids, gen["eos_id"]])]
        assert len(ours) == len(scored.log_probs), (len(ours), len(scored.log_probs))
        worst = max(worst, max(abs(a - b) for a, b in zip(ours, scored.log_probs)))
    return worst


def cached(work: Path, model_dir: Path, kind: str, build: Callable[[Path], Path]) -> Path:
    """`build(target)` once per weights (sha256 in the name), like the server's ONNX cache."""
    sha = json.loads((model_dir / "manifest.json").read_text())["files"]["model.safetensors"][:16]
    target = work / f"{model_dir.name}-{sha}-{kind}"
    if not (target / ".done").is_file():
        build(target)
        (target / ".done").write_text("")
    return target


def onnx_export(work: Path, model_dir: Path) -> Path:
    from exporters.onnx import export_onnx

    return cached(work, model_dir, "onnx", lambda t: export_onnx(model_dir, t).out_dir)


# ----------------------------------------------------------------------------------- the engines


def sources(model_dir: Path, n: int) -> list[list[int]]:
    """Source id lists with EOS: the held-out test split (bundled) or seeded random ids of 8-30 tokens."""
    config = read_config(model_dir)
    if config.dataset:
        from mmserve.data.numbers import heldout_texts
        from mmserve.tasks.translation import encode_sources, load_tokenizer

        texts = [src for src, _ in heldout_texts(config, n)]
        return encode_sources(load_tokenizer(model_dir), texts)
    rng = np.random.default_rng(0)
    vocab = config.model_architecture().src_vocab_size
    return [rng.integers(4, vocab, size=int(rng.integers(8, 31))).tolist() + [2] for _ in range(n)]


def batches_by_length(rows: list[list[int]], size: int) -> list[list[int]]:
    """Indices sorted by source length, cut into batches (CTranslate2's translate_batch does the same)."""
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    return [order[i : i + size] for i in range(0, len(order), size)]


def mmserve_engine(stepper, rows, batches, beam: int, gen: dict, threads: int, workers: int = 1,
                   backend: str = "onnxruntime"):
    """A callable decoding every batch, `workers` batches at once (threads share the stepper: the
    sessions are stateless between runs); returns generated ids per sentence (input order)."""
    tensors = [pad_sources([rows[i] for i in batch], gen["pad_id"]) for batch in batches]
    args = (gen["bos_id"], gen["eos_id"], gen["pad_id"], gen["max_length"])

    def one(item):
        batch, (ids, mask) = item
        if beam == 1:
            hyps = greedy_search(stepper, ids, mask, *args, alpha=gen["length_penalty"])
        else:
            hyps = [h[0] for h in beam_search(stepper, ids, mask, *args, beam_size=beam, alpha=gen["length_penalty"])]
        return batch, [h.tokens for h in hyps]

    pool = None
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(workers)

    def run() -> list[list[int]]:
        apply_thread_policy(backend, threads, workers)
        out: list[list[int]] = [[] for _ in rows]
        items = list(zip(batches, tensors))
        for batch, tokens in (pool.map(one, items) if pool else map(one, items)):
            for i, t in zip(batch, tokens):
                out[i] = t
        return out

    return run


def ctranslate2_engine(translator, vocab, rows, beam: int, gen: dict):
    tokens = [[vocab[i] for i in row] for row in rows]
    index = {t: i for i, t in enumerate(vocab)}

    def run() -> list[list[int]]:
        results = translator.translate_batch(
            tokens, beam_size=beam, max_batch_size=32, max_decoding_length=gen["max_length"],
            length_penalty=gen["length_penalty"], return_end_token=True)
        return [[index[t] for t in r.hypotheses[0]] for r in results]

    return run


# ----------------------------------------------------------------------------------- the table


def engines_at(native: NativeTranslator, threads: int) -> str:
    """The GEMM engines the native translator measured for this thread count (it prepares per count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return native.gemm_engines()
    finally:
        torch.set_num_threads(before)


def bench_model(name: str, model_dir: Path, work: Path, n: int, rounds: int, threads: list[int]) -> list[dict]:
    import ctranslate2

    twin = cached(work, model_dir, "softmax", lambda t: softmax_twin_dir(model_dir, t))
    exports = {"mmserve": onnx_export(work, model_dir), "mmserve softmax": onnx_export(work, twin)}
    ct2_dir = cached(work, twin, "ctranslate2", lambda t: ctranslate2_dir(twin, t))
    gen = read_config(model_dir).generation
    arch = read_config(model_dir).model_architecture()
    rows = sources(model_dir, n)
    batches = batches_by_length(rows, 32)
    vocab = vocabulary(twin, arch.tgt_vocab_size)
    gap = conversion_gap(twin, ctranslate2.Translator(str(ct2_dir), device="cpu"), vocab, rows, gen)
    print(f"\n== {name}: d_model {arch.d_model}, layers {arch.encoder_layers}+{arch.decoder_layers}, "
          f"FFN {arch.ffn_dim}, vocab {arch.tgt_vocab_size}; {len(rows)} sentences, batches of 32, "
          f"max_length {gen['max_length']}, {rounds} rounds")
    print(f"conversion check: CTranslate2's greedy outputs for 8 sources scored by CTranslate2 and by the SoftMax "
          f"twin in torch differ by at most {gap:.1e} in log-probability")
    native = NativeTranslator(load_model_dir(model_dir).model.eval())
    print(f"native translator's GEMM engines (small/large row counts), 1 thread: {engines_at(native, 1)}")
    results = []
    for beam in (1, 4):
        # Every engine at every thread count in ONE interleaved comparison, so both the ratio to
        # CTranslate2 and the 2-thread / 1-thread scaling are paired per round.
        engines, outputs = {}, {}
        for t in threads:
            # CTranslate2 uses N threads both ways too: N batches at once (inter_threads, its way to
            # throughput) as the baseline, and one batch on N threads (intra_threads) as a row.
            translator = ctranslate2.Translator(str(ct2_dir), device="cpu", inter_threads=t, intra_threads=1)
            engines[("ctranslate2", t)] = ctranslate2_engine(translator, vocab, rows, beam, gen)
            if t > 1:
                translator = ctranslate2.Translator(str(ct2_dir), device="cpu", inter_threads=1, intra_threads=t)
                engines[("ctranslate2 1 loop", t)] = ctranslate2_engine(translator, vocab, rows, beam, gen)
            policy = thread_policy("onnxruntime", t)  # what `mmserve translate --threads t` does
            for label, export in exports.items():
                stepper = OnnxSeq2SeqStepper(export, RuntimeOptions(intra_op_threads=policy.intra_op_threads))
                engines[(label, t)] = mmserve_engine(stepper, rows, batches, beam, gen, t, workers=policy.workers)
            if t > 1:
                stepper = OnnxSeq2SeqStepper(exports["mmserve"], RuntimeOptions(intra_op_threads=t))
                engines[("mmserve 1 loop", t)] = mmserve_engine(stepper, rows, batches, beam, gen, t, workers=1)
            # `mmserve translate --backend native --threads t`: the C++ translator, t batches at once
            native_policy = thread_policy("native", t)
            engines[("mmserve native", t)] = mmserve_engine(
                native, rows, batches, beam, gen, t, workers=native_policy.workers, backend="native")
        outputs = {key: fn() for key, fn in engines.items()}  # also the warm-up
        timings = compare({f"{label}|{t}": fn for (label, t), fn in engines.items()}, reps=rounds, warmup=0)
        agree = np.mean([a == b for a, b in zip(outputs[("ctranslate2", threads[0])],
                                                 outputs[("mmserve softmax", threads[0])])])
        native_same = np.mean([a == b for a, b in zip(outputs[("mmserve", threads[0])],
                                                       outputs[("mmserve native", threads[0])])])
        decoding = "greedy" if beam == 1 else f"beam {beam}"
        print(f"\n{decoding}   (CTranslate2 == mmserve on the SoftMax twin: {agree:.1%} of sentences; "
              f"mmserve native == mmserve onnxruntime: {native_same:.1%})")
        print(f"  {'engine':<22} {'threads':>7} {'sent/s':>9} {'x ctranslate2':>14} {'x own 1 thread':>15} {'tokens/sent':>12}")
        for (label, t) in engines:
            timing = timings[f"{label}|{t}"]
            speed = len(rows) / timing.median
            ratio = paired_ratio(timings[f"ctranslate2|{t}"], timing)
            base = label.removesuffix(" 1 loop")
            scaling = paired_ratio(timings[f"{base}|{threads[0]}"], timing)
            length = statistics.mean(len(o) for o in outputs[(label, t)])
            print(f"  {label:<22} {t:>7} {speed:>9.0f} {ratio:>13.2f}x {scaling:>14.2f}x {length:>12.2f}")
            results.append({"model": name, "decoding": decoding, "threads": t, "engine": label,
                            "sent_per_s": speed, "ratio_to_ctranslate2": ratio, "ratio_to_1_thread": scaling,
                            "tokens_per_sentence": length, "ctranslate2_agreement_softmax_twin": float(agree),
                            "native_agreement_onnxruntime": float(native_same),
                            "conversion_max_logprob_gap": gap})
        split = time_breakdown(exports["mmserve"], rows, batches, beam, gen)
        ct2_one = ctranslate2.Translator(str(ct2_dir), device="cpu", inter_threads=1, intra_threads=1)
        start = ctranslate2_start(ct2_one, vocab, rows, beam, gen)
        total = split["total"]
        print(f"  mmserve, 1 thread, one pass of {total:.2f} s: "
              + ", ".join(f"{name} {split[name] / total:.0%}" for name in ("encoder", "decoder runs", "search loop"))
              + f"; CTranslate2 encoding + one step: {start:.2f} s")
        results[-1]["breakdown_1_thread_s"] = split | {"ctranslate2_encode_and_one_step": start}
    return results


def time_breakdown(export: Path, rows, batches, beam: int, gen: dict) -> dict[str, float]:
    """One 1-thread pass with onnxruntime's runs timed per graph: seconds in the encoder (+ cross_kv),
    in decoder `session.run`, and the rest (the search loop, tensor conversions, cache reordering)."""
    stepper = OnnxSeq2SeqStepper(export, RuntimeOptions(intra_op_threads=1))
    spent = {"encoder.onnx": 0.0, "cross_kv.onnx": 0.0, "decoder.onnx": 0.0}
    open_session = stepper.session

    class Timed:  # stands in for an InferenceSession: the stepper only calls .run
        def __init__(self, name: str) -> None:
            self.name, self.session = name, open_session(name)

        def run(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return self.session.run(*args, **kwargs)
            finally:
                spent[self.name] += time.perf_counter() - start

    stepper.session = {name: Timed(name) for name in spent}.__getitem__
    run = mmserve_engine(stepper, rows, batches, beam, gen, 1)
    run()  # warm-up
    spent.update(dict.fromkeys(spent, 0.0))
    start = time.perf_counter()
    run()
    total = time.perf_counter() - start
    encoder = spent["encoder.onnx"] + spent["cross_kv.onnx"]
    return {"total": total, "encoder": encoder, "decoder runs": spent["decoder.onnx"],
            "search loop": total - encoder - spent["decoder.onnx"]}


def ctranslate2_start(translator, vocab, rows, beam: int, gen: dict) -> float:
    """Seconds CTranslate2 takes to encode every batch and decode one step (median of 3 passes)."""
    one_step = ctranslate2_engine(translator, vocab, rows, beam, gen | {"max_length": 1})
    one_step()
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        one_step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="bundled,iwslt")
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--iwslt-sentences", type=int, default=128)
    parser.add_argument("--iwslt-max-length", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "bench-translate")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    try:
        import ctranslate2
    except ImportError:
        sys.exit("ctranslate2 is not installed: pip install -e '.[bench]'")
    threads = [int(t) for t in args.threads.split(",")]
    print(machine_info())
    print(f"ctranslate2 {ctranslate2.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
          "this machine may be shared: compare ratios, not absolute speeds")
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models.split(","):
        if name == "bundled":
            if not (BUNDLED / "model.safetensors").is_file():
                print("bundled numbers-en-de missing (make train-bundled): skipped")
                continue
            results += bench_model(name, BUNDLED, args.work, args.sentences, args.rounds, threads)
        elif name == "iwslt":
            model = args.work / "iwslt-random"
            if not (model / "manifest.json").is_file():
                iwslt_dir(model, args.iwslt_max_length)
            results += bench_model(name, model, args.work, args.iwslt_sentences, args.rounds, threads)
        else:
            sys.exit(f"unknown model {name!r} (bundled, iwslt)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
