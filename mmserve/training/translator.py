"""Train the bundled numbers translator: English number words -> German number words, with MultiMax.

Recipe (a scaled-down Transformer-base): pre-norm encoder-decoder, BPE vocabulary shared by both
sides with all embeddings tied, AdamW, linear warm-up then cosine decay, label smoothing, dropout,
large batches built by length bucketing (batches of similar lengths, shuffled), teacher forcing.
The dev split is decoded greedily now and then for the progress bar only (no model selection); the
test split is decoded once, at the end, greedily and with beam search: exact match and chrF.

Reproducible: one seed drives the split, the initialisation, dropout and the data order; with a fixed
`steps` (the default) a rerun on the same machine, torch version and thread count gives the same
model. `minutes` instead makes the schedule follow the wall clock (progress = elapsed / budget),
which guarantees the time but not bit-identical reruns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmserve.checkpoints import ModelDirConfig, save_model_dir
from mmserve.data.numbers import NumberPairs, dataset_config, make_splits
from mmserve.models.decoding import beam_search, greedy_search
from mmserve.models.seq2seq import MultiMaxTranslator, TranslatorConfig
from mmserve.tasks.translation import (
    TOKENIZER_NAME,
    GenerationConfig,
    TranslationTokenizer,
    decode_ids,
    encode_batch,
    encode_target,
    normalize_source,
    source_vocabulary,
    special_ids,
    train_tokenizer,
)
from mmserve.versions import package_version

from .common import configure_threads, cosine_to_floor, invoked_command, seed_everything, training_progress

__all__ = [
    "TranslatorTrainConfig",
    "TranslatorTrainResult",
    "train_translator",
    "evaluate_translations",
    "build_translator",
]


class TranslatorTrainConfig(BaseModel):
    """Hyper-parameters of `mmserve train translator` (recorded in config.json["source"]["training"])."""

    model_config = ConfigDict(extra="forbid")

    attention_fn: Literal["multimax", "softmax"] = "multimax"
    seed: int = 0
    threads: Optional[int] = Field(None, ge=1)
    # data
    train_size: int = Field(120_000, ge=1000)
    dev_size: int = Field(2000, ge=0)
    test_size: int = Field(2000, ge=1)
    vocab_size: int = Field(320, ge=40, description="BPE vocabulary shared by source and target")
    # model
    d_model: int = Field(128, ge=8)
    num_heads: int = Field(4, ge=1)
    encoder_layers: int = Field(3, ge=1)
    decoder_layers: int = Field(3, ge=1)
    ffn_dim: int = Field(512, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = Field(32, ge=8)
    # optimisation
    steps: Optional[int] = Field(600, ge=1, description="optimizer steps (None: use `minutes`)")
    minutes: Optional[float] = Field(None, gt=0, description="wall-clock budget of the training loop")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    min_lr_ratio: float = Field(0.02, ge=0, le=1)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    bucket_batches: int = Field(32, ge=1, description="batches per length-sorted chunk")
    # evaluation
    eval_every: int = Field(200, ge=0, description="greedy dev exact match every N steps (0: never)")
    dev_eval_size: int = Field(500, ge=0)
    beam_size: int = Field(4, ge=1)
    length_penalty: float = 0.6
    eval_batch_size: int = Field(500, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "TranslatorTrainConfig":
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by {self.num_heads} heads")
        if self.steps is None and self.minutes is None:
            raise ValueError("give steps or minutes")
        return self


@dataclass
class TranslatorTrainResult:
    """What a run produced: the model directory and its test-split figures."""

    directory: Path
    metrics: dict[str, Any]


def build_translator(cfg: TranslatorTrainConfig, vocab_size: int) -> MultiMaxTranslator:
    """The translator architecture of this recipe (shared vocabulary, all embeddings tied)."""
    arch = TranslatorConfig(
        src_vocab_size=vocab_size,
        tgt_vocab_size=vocab_size,
        d_model=cfg.d_model,
        num_heads=cfg.num_heads,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        ffn_dim=cfg.ffn_dim,
        dropout=cfg.dropout,
        positions=cfg.positions,
        max_positions=cfg.max_positions,
        tie_embeddings="all",
        attention_fn=cfg.attention_fn,
    )
    return MultiMaxTranslator(arch)


# ------------------------------------------------------------------------------------------- data


@dataclass
class EncodedPairs:
    """Right-padded id tensors of a split: src = tokens + EOS; tgt = BOS + tokens + EOS."""

    src: torch.Tensor
    src_len: torch.Tensor
    tgt: torch.Tensor
    tgt_len: torch.Tensor

    def batch(self, idx: torch.Tensor, pad_id: int):
        s_len, t_len = int(self.src_len[idx].max()), int(self.tgt_len[idx].max())
        src = self.src[idx, :s_len]
        tgt = self.tgt[idx, :t_len]
        return src, src == pad_id, tgt


def encode_pairs(tokenizer: TranslationTokenizer, pairs: NumberPairs) -> EncodedPairs:
    """Token ids of every (source, target) pair, checked against the model's position budget."""
    gen = tokenizer.generation
    src_ids, src_pad = encode_batch(tokenizer, pairs.sources)
    targets = [[gen.bos_id, *encode_target(tokenizer, t), gen.eos_id] for t in pairs.targets]
    longest = max(len(t) for t in targets)
    if longest - 1 > gen.max_length_limit:
        raise ValueError(f"a target needs {longest - 1} positions, more than max_positions allows")
    tgt = torch.full((len(targets), longest), gen.pad_id, dtype=torch.long)
    for i, ids in enumerate(targets):
        tgt[i, : len(ids)] = torch.tensor(ids)
    return EncodedPairs(
        src_ids, (~src_pad).sum(1), tgt, torch.tensor([len(t) for t in targets], dtype=torch.long)
    )


def bucketed_batches(data: EncodedPairs, batch_size: int, chunk_batches: int, generator: torch.Generator):
    """One epoch of index batches: shuffle, sort chunks of `chunk_batches` batches by length, cut, shuffle.

    Similar lengths in a batch mean little padding; shuffling the batches keeps the order random.
    """
    order = torch.randperm(len(data.src_len), generator=generator)
    key = data.tgt_len * 1000 + data.src_len
    batches = []
    chunk = batch_size * chunk_batches
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[torch.sort(key[part], stable=True).indices]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


# ------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_translations(
    stepper,
    tokenizer: TranslationTokenizer,
    sources: Sequence[str],
    references: Sequence[str],
    beam_size: int = 1,
    alpha: float = 0.6,
    batch_size: int = 500,
    max_length: Optional[int] = None,
) -> dict[str, Any]:
    """Exact match and chrF (sacrebleu) of the stepper's translations of `sources`.

    Goes through the serving path (normalise, tokenise, search, detokenise), so what is measured is
    what is served. Returns counts, rates, chrF, the hypotheses and the wall time.
    """
    from sacrebleu.metrics import CHRF

    gen = tokenizer.generation
    max_length = max_length or gen.max_length
    started = time.perf_counter()
    hypotheses: list[str] = []
    for start in range(0, len(sources), batch_size):
        src_ids, src_pad = encode_batch(tokenizer, sources[start : start + batch_size])
        args = (gen.bos_id, gen.eos_id, gen.pad_id, max_length)
        if beam_size == 1:
            hyps = greedy_search(stepper, src_ids, src_pad, *args, alpha=alpha)
        else:
            beams = beam_search(stepper, src_ids, src_pad, *args, beam_size=beam_size, alpha=alpha)
            hyps = [h[0] for h in beams]
        hypotheses.extend(decode_ids(tokenizer, h.tokens) for h in hyps)
    elapsed = time.perf_counter() - started
    correct = sum(h == r for h, r in zip(hypotheses, references))
    chrf = CHRF().corpus_score(hypotheses, [list(references)]).score
    return {
        "correct": correct,
        "total": len(references),
        "exact_match": correct / max(1, len(references)),
        "chrf": chrf,
        "hypotheses": hypotheses,
        "seconds": elapsed,
    }


# --------------------------------------------------------------------------------------- training


def _lr_factor(progress: float, warmup: float, floor: float) -> float:
    """Linear warm-up over the first `warmup` fraction, then cosine decay to `floor`."""
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    return cosine_to_floor((progress - warmup) / max(1e-9, 1.0 - warmup), floor)


def train_translator(
    cfg: TranslatorTrainConfig,
    out_dir: Path | str,
    name: Optional[str] = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> TranslatorTrainResult:
    """Generate the data, train the tokenizer and the model, evaluate on test, write the model dir."""
    previous_threads = torch.get_num_threads()
    try:
        return _train(cfg, Path(out_dir), name, show_progress, log)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    cfg: TranslatorTrainConfig,
    out_dir: Path,
    name: Optional[str],
    show_progress: bool,
    log: Callable[[str], None],
) -> TranslatorTrainResult:
    started = time.perf_counter()
    threads = configure_threads(cfg.threads)
    generator = seed_everything(cfg.seed)

    splits = make_splits(cfg.seed, cfg.dev_size, cfg.test_size, cfg.train_size)
    train_sources = [normalize_source(s) for s in splits.train.sources]
    tok = train_tokenizer(train_sources + splits.train.targets, cfg.vocab_size)
    ids = special_ids(tok)
    provisional = GenerationConfig(
        **ids, max_source_tokens=cfg.max_positions, max_length=cfg.max_positions,
        max_length_limit=cfg.max_positions, beam_size=cfg.beam_size, length_penalty=cfg.length_penalty,
        source_words=source_vocabulary(train_sources),
    )
    tokenizer = TranslationTokenizer(tok, provisional)
    train = encode_pairs(tokenizer, splits.train)
    # Default max_length: the longest training target (EOS included) plus slack, within the positions.
    max_length = min(cfg.max_positions, int(train.tgt_len.max()) - 1 + 4)
    generation = provisional.model_copy(update={"max_length": max_length})
    tokenizer = TranslationTokenizer(tok, generation)
    data_time = time.perf_counter() - started
    log(
        f"data: {len(splits.train):,} train / {len(splits.dev):,} dev / {len(splits.test):,} test pairs, "
        f"vocabulary {tok.get_vocab_size()}, longest source {int(train.src_len.max())} / target "
        f"{int(train.tgt_len.max())} tokens ({data_time:.1f} s)"
    )

    model = build_translator(cfg, tok.get_vocab_size())
    params = sum(p.numel() for p in model.parameters())
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)  # biases, norms, MultiMax scalars: no decay
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    budget_s = cfg.minutes * 60.0 if cfg.minutes is not None else None
    total_steps = cfg.steps
    # Steps mode: warm-up over `warmup_steps`; time mode: over the same share of an assumed 600 steps.
    warmup_fraction = cfg.warmup_steps / (total_steps or 600)

    dev_sources, dev_refs = splits.dev.sources[: cfg.dev_eval_size], splits.dev.targets[: cfg.dev_eval_size]
    pad_id = generation.pad_id
    step, epoch, dev_history = 0, 0, []
    loop_started = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - loop_started

    def progress_fraction() -> float:
        """Where the LR schedule is: by steps when `steps` is set, else by the wall clock."""
        if total_steps is not None:
            return step / total_steps
        return min(1.0, elapsed() / budget_s)

    def out_of_budget() -> bool:
        """`steps` reached, or (when given) the `minutes` budget spent."""
        if total_steps is not None and step >= total_steps:
            return True
        return budget_s is not None and elapsed() >= budget_s

    model.train()
    bar_total = total_steps if total_steps is not None else int(budget_s)
    with training_progress(enabled=show_progress) as progress:
        task = progress.add_task(f"numbers-en-de ({cfg.attention_fn})", total=bar_total, status="")
        running = None
        while not out_of_budget():
            epoch += 1
            for idx in bucketed_batches(train, cfg.batch_size, cfg.bucket_batches, generator):
                if out_of_budget():
                    break
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * _lr_factor(progress_fraction(), warmup_fraction, cfg.min_lr_ratio)
                src, src_pad, tgt = train.batch(idx, pad_id)
                tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
                logits = model(src, src_pad, tgt_in, tgt_in == pad_id)
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1),
                    ignore_index=pad_id, label_smoothing=cfg.label_smoothing,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                step += 1
                value = float(loss.detach())
                running = value if running is None else 0.98 * running + 0.02 * value
                status = f"epoch {epoch}  loss {running:.3f}"
                if cfg.eval_every and step % cfg.eval_every == 0 and dev_sources:
                    model.eval()
                    dev = evaluate_translations(
                        model, tokenizer, dev_sources, dev_refs, 1, cfg.length_penalty, cfg.eval_batch_size
                    )
                    model.train()
                    dev_history.append({"step": step, "dev_exact_match_greedy": round(dev["exact_match"], 4)})
                    status += f"  dev exact {dev['exact_match']:.3f}"
                    log(f"step {step}: loss {running:.3f}, greedy dev exact match "
                        f"{dev['correct']}/{dev['total']}")
                done = step if total_steps is not None else min(bar_total, int(elapsed()))
                progress.update(task, completed=done, status=status)
    train_time = time.perf_counter() - loop_started

    model.eval()
    test_sources, test_refs = splits.test.sources, splits.test.targets
    greedy = evaluate_translations(model, tokenizer, test_sources, test_refs, 1, cfg.length_penalty,
                                   cfg.eval_batch_size)
    beam = evaluate_translations(model, tokenizer, test_sources, test_refs, cfg.beam_size, cfg.length_penalty,
                                 cfg.eval_batch_size)
    total_time = time.perf_counter() - started
    log(
        f"test exact match: greedy {greedy['correct']}/{greedy['total']} = {greedy['exact_match']:.4f}, "
        f"beam {cfg.beam_size} {beam['correct']}/{beam['total']} = {beam['exact_match']:.4f}; "
        f"chrF greedy {greedy['chrf']:.2f}, beam {beam['chrf']:.2f}; {step} steps, training loop "
        f"{train_time:.1f} s, total {total_time:.1f} s ({threads} threads)"
    )
    errors = [
        {"source": s, "reference": r, "greedy": g}
        for s, r, g in zip(test_sources, test_refs, greedy["hypotheses"]) if g != r
    ]

    metrics = {
        "test_exact_match_greedy": greedy["exact_match"],
        "test_correct_greedy": greedy["correct"],
        "test_exact_match_beam": beam["exact_match"],
        "test_correct_beam": beam["correct"],
        "test_total": greedy["total"],
        "test_chrf_greedy": round(greedy["chrf"], 4),
        "test_chrf_beam": round(beam["chrf"], 4),
        "beam_size": cfg.beam_size,
        "length_penalty": cfg.length_penalty,
        "test_decode_s_greedy": round(greedy["seconds"], 2),
        "test_decode_s_beam": round(beam["seconds"], 2),
        "dev_history": dev_history,
        "steps": step,
        "epochs": epoch,
        "data_time_s": round(data_time, 1),
        "train_time_s": round(train_time, 1),
        "total_time_s": round(total_time, 1),
        "threads": threads,
        "params": params,
        "torch_version": torch.__version__,
        "sacrebleu_version": package_version("sacrebleu"),
        "sample_errors_greedy": errors[:10],
    }
    import tokenizers

    config = ModelDirConfig(
        name=name or out_dir.name,
        task="translation",
        architecture=model.config.model_dump(),
        tokenizer=TOKENIZER_NAME,
        generation=generation.model_dump(),
        dataset=dataset_config(cfg.seed, cfg.dev_size, cfg.test_size, cfg.train_size),
        metrics=metrics,
        source={
            "kind": "trained",
            "command": invoked_command(),
            "training": cfg.model_dump(),
            "tokenizers_version": tokenizers.__version__,
        },
    )
    directory = save_model_dir(
        out_dir, model, config, side_files={TOKENIZER_NAME: tokenizer.to_json()},
        card=model_card(config, cfg, tokenizer, splits.test, greedy["hypotheses"]),
    )
    return TranslatorTrainResult(Path(directory), metrics)


# ------------------------------------------------------------------------------------------ the card


def model_card(
    config: ModelDirConfig,
    cfg: TranslatorTrainConfig,
    tokenizer: TranslationTokenizer,
    test: NumberPairs,
    greedy: list[str],
) -> str:
    """README.md of the model directory: what it is, data and split, figures, the command."""
    m, d, a, g = config.metrics, config.dataset, config.architecture, config.generation
    pieces = lambda text: " ".join(  # noqa: E731
        f'"{p}"' for p in tokenizer.tokenizer.encode(text, add_special_tokens=False).tokens
    )
    example_src = normalize_source(test.sources[0])
    dev_curve = ", ".join(f"{h['dev_exact_match_greedy']:.3f} at step {h['step']}" for h in m["dev_history"])
    shape_row = f"| {a['d_model']} | {a['num_heads']} | {a['encoder_layers']} / {a['decoder_layers']} "
    shape_row += f"| {a['ffn_dim']} | {a['positions']} | {m['params']:,} |"
    fn = a["attention_fn"]
    title = "MultiMax" if fn == "multimax" else "SoftMax"
    examples = "\n".join(
        f"| {n:,} | {s} | {t} | {h} |"
        for n, s, t, h in list(zip(test.numbers.tolist(), test.sources, test.targets, greedy))[:5]
    )
    total = m["test_total"]
    result_rows = "\n".join(
        f"| {label} | {m[f'test_correct_{kind}']}/{total} = {100 * m[f'test_exact_match_{kind}']:.2f}% "
        f"| {m[f'test_chrf_{kind}']:.2f} |"
        for label, kind in (
            ("greedy", "greedy"),
            (f"beam {m['beam_size']} (GNMT length penalty {m['length_penalty']})", "beam"),
        )
    )
    where = "everywhere: encoder self-attention, causal decoder self-attention, cross-attention and the " \
        "output layer" if fn == "multimax" else "nowhere (the SoftMax baseline)"
    return f"""# {config.name}

A small Transformer encoder-decoder with **{title}** (MultiMax = softmax(seglu(x)), Zhou, Fritz &
Keuper, ICML 2024; used {where}) that translates English number words into German number words:
"three hundred and forty-two" -> "dreihundertzweiundvierzig".

## Data

Generated locally with num2words {d["num2words_version"]}: `num2words(n, lang="en")` ->
`num2words(n, lang="de")` for integers 0..999,999. Split disjoint **by number** with seed {d["seed"]}:
all of 0..999 go to train (they are the words every other number is built from); the numbers
1,000..999,999 are permuted with `numpy.random.default_rng({d["seed"]})` (numpy {d["numpy_version"]}):
the first {d["dev_size"]:,} are dev, the next {d["test_size"]:,} test, the next {d["train_size"] - 1000:,}
join train ({d["train_size"]:,} training pairs in all). `config.json["dataset"]` holds the recipe and
a sha256 of the test numbers; `mmserve.data.numbers.heldout_texts(config, n)` regenerates them.

Sources are normalised (`mmserve.tasks.translation.normalize_source`: lowercase, dashes unified,
"twenty one" -> "twenty-one", commas dropped, whitespace collapsed) in training and serving alike.
Vocabulary: a {a["src_vocab_size"]}-piece BPE (`tokenizers`, Metaspace pieces; `tokenizer.json`)
trained on the training split of both languages and shared by source and target. German numbers become
short sequences of morpheme-like pieces instead of up to ~70 characters, e.g. the first test number:

    {example_src}
      -> {pieces(example_src)}
    {test.targets[0]}
      -> {pieces(test.targets[0])}

## Model

| d_model | heads | encoder / decoder layers | FFN | positions | parameters |
|---|---|---|---|---|---|
{shape_row}

Pre-norm layers; every attention module owns its MultiMax parameters (`ranges`, `ts`), the output
layer has the model-level pair (`logits = seglu(output_projection(h))`, probabilities = softmax of
them). All embeddings are tied to the output projection.

## Training

AdamW (lr {cfg.lr}, betas 0.9/0.98, weight decay {cfg.weight_decay}), {cfg.warmup_steps} warm-up steps
then cosine decay to {cfg.min_lr_ratio} x lr, {m["steps"]} steps of {cfg.batch_size} sentence pairs
(length-bucketed), label smoothing {cfg.label_smoothing}, dropout {cfg.dropout}, gradient clipping
{cfg.grad_clip}. Greedy exact match on the first {cfg.dev_eval_size} dev numbers (monitoring only, no
model selection): {dev_curve or "not measured"}. Seed {cfg.seed},
{m["threads"]} threads, torch {m["torch_version"]}. Training loop {m["train_time_s"]} s; the whole command
(data, tokenizer, training, test evaluation, writing) {m["total_time_s"]} s on a 2-core CPU shared with
other jobs.

Command:

    {config.source["command"]}

## Results (held-out test split, {m["test_total"]:,} numbers)

| decoding | exact match | chrF |
|---|---|---|
{result_rows}

chrF is sacrebleu's corpus chrF2 (sacrebleu {m["sacrebleu_version"]}) on the German outputs. Test
decoding took {m["test_decode_s_greedy"]} s (greedy) and {m["test_decode_s_beam"]} s (beam) for the
{m["test_total"]:,} numbers. Default decoding (`config.json["generation"]`): beam {g["beam_size"]},
max_length {g["max_length"]} tokens, length penalty {g["length_penalty"]}; sources of at most
{g["max_source_tokens"]} tokens (EOS included).

First test numbers (greedy):

| number | English | reference | model |
|---|---|---|---|
{examples}

Reproduce the exact-match figure on a sample: `pytest tests/test_numbers_model.py`.
"""
