"""The model card (README.md) of a trained digits classifier, written from its config.json alone.

Everything in the card comes from the config (architecture, data recipe, training options, measured
figures, the command), so the card cannot drift from what the directory holds.
"""

from __future__ import annotations

from typing import Any, Optional

from mmserve.checkpoints import ModelDirConfig

from .digits_eval import SOURCE_TITLES

__all__ = ["model_card", "per_digit_table"]


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def per_digit_table(configs: list[ModelDirConfig]) -> str:
    """One row per (model, source): overall accuracy and the accuracy of each digit, in %."""
    lines = [
        "| model | source | accuracy | " + " | ".join(str(d) for d in range(10)) + " |",
        "|---|---|---|" + "---|" * 10,
    ]
    for config in configs:
        for source, fig in config.metrics.get("sources", {}).items():
            title = SOURCE_TITLES.get(source, source)
            lines.append(
                f"| `{config.name}` | {title} | **{fig['correct']}/{fig['total']} = {100 * fig['accuracy']:.2f}%** | "
                + " | ".join(_pct(v) for v in fig["per_digit"])
                + " |"
            )
    return "\n".join(lines)


def _fonts(names: str) -> str:
    fonts = [n for n in names.split(", ") if n and n != "-"]
    liberation = sum(n.startswith("Liberation") for n in fonts)
    rest = [n for n in fonts if not n.startswith("Liberation")]
    parts = [f"{liberation} Liberation fonts (Sans, Sans Narrow, Serif, Mono; 4 styles each)"] if liberation else []
    parts += ["Pillow's bundled font" if n == "pillow-default" else n for n in rest]
    return " and ".join(parts) if parts else "no fonts"


def _row(config: ModelDirConfig) -> str:
    m = config.metrics
    fn = config.architecture.get("attention_fn")
    return (
        f"| `{config.name}` | {fn} | {m['test_correct']}/{m['test_total']} = {100 * m['test_accuracy']:.2f}% "
        f"| {100 * m['attention_sparsity_lt_1e-3']:.1f}% | {100 * m['attention_exact_zero_fraction']:.4f}% "
        f"| {m['train_time_s']} s + {m.get('synthetic_data_time_s', 0)} s data ({m['threads']} threads) |"
    )


def model_card(config: ModelDirConfig, comparison: Optional[ModelDirConfig]) -> str:
    """README.md of the model directory: what it is, the data, the figures, the command that made it."""
    m, d, a = config.metrics, config.dataset, config.architecture
    cfg: dict[str, Any] = config.source["training"]
    syn = d.get("synthetic", {})
    models = [config] + ([comparison] if comparison is not None else [])
    fn = a["attention_fn"]
    title = "MultiMax" if fn == "multimax" else "SoftMax"
    head = " and a MultiMax output layer" if fn == "multimax" else ""
    patch, tokens = a["patch_size"], (a["img_size"] // a["patch_size"]) ** 2
    pre = config.preprocessing
    shape_row = f"| {a['embed_dim']} | {a['depth']} | {a['num_heads']} | {patch}x{patch} | {tokens} "
    shape_row += f"| {a['mlp_ratio']} | {m['params']:,} |"
    stroke = list(pre["stroke_range"]) if pre.get("stroke_range") else "(not adjusted)"
    return f"""# {config.name}

A {a["depth"]}-block Vision Transformer with **{title}** attention{head}
(MultiMax = softmax(seglu(x)), Zhou, Fritz & Keuper, ICML 2024) that classifies digits 0-9 as people
give them: drawn on a canvas, photographed, or typed. Official MultiMax ViT layout: no class token,
mean pooling, pre-norm blocks, `qkv` without bias.

## Data

- scikit-learn's `load_digits` (the UCI optdigits test set bundled with scikit-learn {d["sklearn_version"]}):
  1,797 grids of 8x8 ink amounts 0..16. Stratified split `train_test_split(test_size={d["test_fraction"]},
  random_state={d["seed"]}, stratify=labels)`: {d["train_size"]} training and {d["test_size"]} test images,
  the training split seen {cfg.get("sklearn_repeats", 1)}x per epoch.
- Synthetic, generated from the seed (`mmserve/data/digit_sets.py`), every image read through the
  serving preprocessing: {syn.get("pen_samples", 0):,} pen-drawn digits (`mmserve/data/digit_strokes.py`,
  stroke model `pen`: 2-4 allographs per digit, random affine, smooth random deformation, constant-width
  pen) and {syn.get("typed_samples", 0):,} typed digits in {_fonts(syn.get("training_fonts", ""))},
  random size, position, weight and tilt; half of them on a random "page" (`digit_pages.py`: paper tone,
  uneven light, noise, blur, 25% light-on-dark).
- Held out, never used in training (no model selection on them either): the test split; typed digits
  in the **22 DejaVu fonts** (5 per digit and font, random size and position); pen digits from a
  **different stroke model** (`brush`: strokes displaced one by one, shaky hand, tapering pressure,
  anti-aliased; fixed seed, 200 per digit). Both synthetic stroke models share the allograph templates.

## Model

| embed dim | depth | heads | patch | tokens | MLP ratio | parameters |
|---|---|---|---|---|---|---|
{shape_row}

Input: one channel, the ink grid / 16 normalised with the scikit-learn training split's mean
{pre["mean"][0]} and std {pre["std"][0]} (`config.json["preprocessing"]`). Uploaded images go through
`mmserve.tasks.image_classification`: grayscale, ink polarity from the border, contrast normalisation,
crop to the ink, longest side scaled to fill the 32x32 canvas keeping the aspect ratio (as in optdigits:
every grid's ink spans all 8 rows), stroke width brought into {stroke} canvas pixels (the training
split's 10th-90th percentiles), 4x4 block means -> the same 8x8 grid of ink 0..16.

## Training

AdamW (lr {cfg["lr"]}, weight decay {cfg["weight_decay"]}), {cfg["warmup_epochs"]} warm-up epochs then
cosine decay, {cfg["epochs"]} epochs of batch {cfg["batch_size"]}, label smoothing {cfg["label_smoothing"]},
stochastic depth {cfg["drop_path"]}; random affine on the grids (rotation +-{cfg["max_rotation_deg"]} deg,
scale +-{cfg["max_scale"]}, shear +-{cfg["max_shear"]}, shift +-{cfg["max_shift"]} px) on
{cfg["affine_prob"]:.0%} of samples and, for {cfg["roundtrip_prob"]:.0%} of the scikit-learn grids, the
grid after a round trip through the upload preprocessing. Seed {cfg["seed"]}; torch {m["torch_version"]}.

Command:

    {config.source["command"]}

## Results

Accuracy per source and per digit (%). Recompute: `python benchmarks/eval_digits.py models/{config.name}`;
`pytest tests/test_image_classification.py -k bundled` rechecks the test split exactly and a prefix
of each held-out set.

{per_digit_table(models)}

Attention sparsity: fraction of attention weights below 1e-3 (and exactly 0), over all blocks, heads,
query rows and keys, averaged over the scikit-learn test images.

| model | attention | sklearn test accuracy | weights < 1e-3 | exact zeros | training time |
|---|---|---|---|---|---|
{chr(10).join(_row(c) for c in models)}

Training time is the wall time of the training loop (plus generating the synthetic digits) on a
2-core CPU shared with other jobs, so it is slower than the machine alone would be.
"""
