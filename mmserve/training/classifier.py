"""Train the bundled digits classifier: a small MultiMax ViT (or its SoftMax twin) on sklearn digits
plus synthetic pen-drawn and typed digits (`mmserve.data.digit_sets`), so it reads what people draw,
photograph or type and not only the optdigits scans; held-out fonts and a held-out stroke model are
measured after training (`digits_eval`) and reported in the card (`digits_card`).

Recipe (DeiT-style, scaled down to 8x8 inputs): AdamW, linear warm-up then cosine decay, label
smoothing, stochastic depth, and augmentation that suits ink grids: a random small affine map
(rotation, scale, shear, shift) applied to the whole batch with `grid_sample`, plus, for a fraction of
the samples, the grid's "round trip" through the upload path (rendered as a dark-on-light image at a
random size and filter, then `image_to_ink`), so the served model has seen what uploads turn into.
The round-trip variants are computed once from the training split only.

Everything random draws from one seeded generator, so a run is reproducible on the same machine,
torch version and thread count.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmserve.checkpoints import ModelDirConfig, read_config, save_model_dir
from mmserve.data.digit_sets import synthetic_recipe, training_grids
from mmserve.data.digits import dataset_config, load_digits_split
from mmserve.models import MultiMaxViT, ViTConfig
from mmserve.tasks.image_classification import (
    ImagePreprocessing,
    attention_sparsity,
    grid_stroke_width,
    image_to_ink,
    ink_to_pixel_values,
)

from .common import configure_threads, invoked_command, seed_everything, training_progress, warmup_cosine
from .digits_card import model_card
from .digits_eval import SOURCES, evaluate_sources

__all__ = [
    "ClassifierTrainConfig",
    "TrainResult",
    "train_classifier",
    "evaluate",
    "render_ink",
    "DIGIT_LABELS",
]

DIGIT_LABELS = [str(i) for i in range(10)]


class ClassifierTrainConfig(BaseModel):
    """Hyper-parameters of `mmserve train classifier` (recorded in config.json["source"]["training"])."""

    model_config = ConfigDict(extra="forbid")

    attention_fn: Literal["multimax", "softmax"] = "multimax"
    seed: int = 0
    test_fraction: float = Field(0.2, gt=0, lt=1)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: int = Field(2, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    drop_path: float = Field(0.1, ge=0, lt=1)
    embed_dim: int = Field(96, ge=8)
    depth: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    patch_size: int = Field(2, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    augment: bool = True
    affine_prob: float = Field(0.8, ge=0, le=1)
    max_rotation_deg: float = Field(12.0, ge=0)
    max_scale: float = Field(0.1, ge=0, lt=1)
    max_shear: float = Field(0.15, ge=0)
    max_shift: float = Field(0.6, ge=0, description="in ink-grid pixels")
    roundtrip_prob: float = Field(
        0.3, ge=0, le=1, description="share of samples taken from the round-trip bank"
    )
    roundtrip_variants: int = Field(2, ge=0, description="round-trip renderings per training image")
    sklearn_repeats: int = Field(
        8, ge=1, description="passes over the scikit-learn training split per epoch (it keeps its weight "
        "next to the synthetic digits)"
    )
    pen_samples: int = Field(2500, ge=0, description="synthetic pen-drawn digits (stroke model 'pen')")
    typed_samples: int = Field(1500, ge=0, description="synthetic typed digits (training fonts)")
    max_train_samples: Optional[int] = Field(None, ge=1, description="subsample for smoke tests")
    heldout_per_digit: Optional[int] = Field(
        None, ge=0, description="held-out images per digit measured after training (None: all, 0: none)"
    )
    threads: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "ClassifierTrainConfig":
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by {self.num_heads} heads")
        if 8 % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} does not divide the 8x8 digits")
        return self


@dataclass
class TrainResult:
    """What a run produced: the model directory and its held-out figures."""

    directory: Path
    test_accuracy: float
    test_correct: int
    test_total: int
    train_time_s: float
    params: int


# ------------------------------------------------------------------------------------- augmentation


def render_ink(ink: np.ndarray, size: int, resample: Image.Resampling | None = None, margin: float = 0.0):
    """Draw an ink grid as a dark-on-light grayscale image of `size` pixels (plus a white margin)."""
    gray = (255.0 * (1.0 - np.clip(ink, 0, 16) / 16.0)).round().astype(np.uint8)
    image = Image.fromarray(gray, mode="L").resize(
        (size, size), resample=resample or Image.Resampling.NEAREST
    )
    pad = int(round(margin * size))
    if pad:
        canvas = Image.new("L", (size + 2 * pad, size + 2 * pad), 255)
        canvas.paste(image, (pad, pad))
        image = canvas
    return image


def roundtrip_bank(
    ink: np.ndarray, variants: int, pre: ImagePreprocessing, rng: np.random.Generator
) -> np.ndarray:
    """[n * variants, 8, 8]: each grid drawn at a random size/filter/margin, then read back as an upload."""
    filters = [Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC]
    out = np.empty((len(ink) * variants, *ink.shape[1:]), dtype=np.float32)
    for v in range(variants):
        for i, grid in enumerate(ink):
            size = int(rng.choice([24, 32, 64, 96, 128]))
            image = render_ink(
                grid, size, filters[int(rng.integers(len(filters)))], float(rng.uniform(0, 0.3))
            )
            out[v * len(ink) + i] = image_to_ink(image, pre)
    return out


def random_affine(ink: torch.Tensor, cfg: ClassifierTrainConfig, generator: torch.Generator) -> torch.Tensor:
    """A random small affine map per grid (rotation, anisotropic scale, shear, shift), bilinear, zero fill."""
    n, size = ink.shape[0], ink.shape[-1]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-1, 1) * math.radians(cfg.max_rotation_deg)
    sx = 1 + uniform(-cfg.max_scale, cfg.max_scale)
    sy = 1 + uniform(-cfg.max_scale, cfg.max_scale)
    shear = uniform(-cfg.max_shear, cfg.max_shear)
    # affine_grid works in [-1, 1] coordinates: a shift of one grid pixel is 2 / size.
    tx = uniform(-cfg.max_shift, cfg.max_shift) * 2 / size
    ty = uniform(-cfg.max_shift, cfg.max_shift) * 2 / size
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos / sx, (-sin + shear) / sx, tx], dim=1),
            torch.stack([sin / sy, cos / sy, ty], dim=1),
        ],
        dim=1,
    )
    apply = torch.rand(n, generator=generator) < cfg.affine_prob
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
    theta = torch.where(apply.view(n, 1, 1), theta, identity)
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    out = F.grid_sample(ink.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(1).clamp(0, 16)


# ----------------------------------------------------------------------------------------- training


def build_classifier(cfg: ClassifierTrainConfig) -> MultiMaxViT:
    """The digits ViT: 8x8 single-channel input, `patch_size` patches, 10 classes."""
    arch = ViTConfig(
        img_size=8,
        patch_size=cfg.patch_size,
        in_chans=1,
        num_classes=10,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        attention_fn=cfg.attention_fn,
        drop_path_rate=cfg.drop_path,
    )
    return MultiMaxViT(arch)


@torch.no_grad()
def evaluate(model: MultiMaxViT, pixel_values: torch.Tensor, labels: torch.Tensor, batch_size: int = 256):
    """(correct, total, mean attention sparsity < 1e-3, mean exact-zero fraction) in eval mode."""
    was_training = model.training
    model.eval()
    correct, sparse, zeros = 0, 0.0, 0.0
    for start in range(0, len(labels), batch_size):
        x = pixel_values[start : start + batch_size]
        probs, _ = model.classify(x)
        correct += int((probs.argmax(dim=1) == labels[start : start + batch_size]).sum())
        _, weights = model.forward_with_attention(x)
        sparse += float(attention_sparsity(weights, 1e-3).sum())
        zeros += float(attention_sparsity(weights, 0.0).sum())
    model.train(was_training)
    total = len(labels)
    return correct, total, sparse / total, zeros / total


def _preprocessing(train_ink: np.ndarray) -> ImagePreprocessing:
    """Input statistics and the stroke-width range of uploads, both from the training split."""
    scaled = train_ink / 16.0
    pre = ImagePreprocessing(
        mean=[round(float(scaled.mean()), 6)], std=[round(float(scaled.std()), 6)], flatten_background=True
    )
    widths = [grid_stroke_width(grid, pre) for grid in train_ink]
    low, high = np.percentile(widths, [10, 90])
    return ImagePreprocessing.model_validate(
        {**pre.model_dump(), "stroke_range": (round(float(low), 3), round(float(high), 3))}
    )


def train_classifier(
    cfg: ClassifierTrainConfig,
    out_dir: Path | str,
    name: Optional[str] = None,
    compare_to: Optional[Path | str] = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train, evaluate on the held-out split, and write the model directory with its card."""
    previous_threads = torch.get_num_threads()
    try:
        return _train(cfg, out_dir, name, compare_to, show_progress, log)
    finally:
        torch.set_num_threads(previous_threads)  # callers (tests, notebooks) keep their setting


def _train(
    cfg: ClassifierTrainConfig,
    out_dir: Path | str,
    name: Optional[str],
    compare_to: Optional[Path | str],
    show_progress: bool,
    log: Callable[[str], None],
) -> TrainResult:
    started = time.perf_counter()
    threads = configure_threads(cfg.threads)
    generator = seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    train, test = load_digits_split(cfg.seed, cfg.test_fraction)
    train_ink, train_labels = train.ink, train.labels
    if cfg.max_train_samples is not None:
        train_ink, train_labels = train_ink[: cfg.max_train_samples], train_labels[: cfg.max_train_samples]
    pre = _preprocessing(train_ink)

    bank = None  # [variants * n, 8, 8]: row v * n + i is a round trip of training image i
    if cfg.augment and cfg.roundtrip_prob > 0 and cfg.roundtrip_variants > 0:
        bank = torch.from_numpy(roundtrip_bank(train_ink, cfg.roundtrip_variants, pre, rng))

    synthetic_started = time.perf_counter()
    pen, typed = (cfg.pen_samples, cfg.typed_samples) if cfg.augment else (0, 0)
    x_synthetic, y_synthetic = training_grids(pen, typed, cfg.seed, pre)
    synthetic_time = time.perf_counter() - synthetic_started
    log(f"synthetic digits: {len(y_synthetic)} grids in {synthetic_time:.1f} s")

    n_sklearn = len(train_labels)
    x_train = torch.from_numpy(np.concatenate([train_ink, x_synthetic]))
    y_train = torch.from_numpy(np.concatenate([train_labels, y_synthetic]))
    # One epoch: the scikit-learn split `sklearn_repeats` times, then every synthetic digit once.
    epoch_indices = torch.cat(
        [torch.arange(n_sklearn).repeat(cfg.sklearn_repeats), torch.arange(n_sklearn, len(y_train))]
    )
    x_test = ink_to_pixel_values(test.ink, pre)
    y_test = torch.from_numpy(test.labels)

    model = build_classifier(cfg)
    params = sum(p.numel() for p in model.parameters())
    decay, no_decay = [], []
    for pname, p in model.named_parameters():
        # Biases, norms, position embeddings and the MultiMax scalars are not decayed (DeiT/timm rule).
        (no_decay if p.dim() <= 1 or pname.endswith("pos_embed") else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    steps_per_epoch = math.ceil(len(epoch_indices) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = warmup_cosine(
        optimizer, cfg.warmup_epochs * steps_per_epoch, total_steps, floor=cfg.min_lr_ratio
    )

    loop_started = time.perf_counter()
    model.train()
    with training_progress(enabled=show_progress) as progress:
        task = progress.add_task(f"digits-vit ({cfg.attention_fn})", total=cfg.epochs, status="")
        for epoch in range(cfg.epochs):
            order = epoch_indices[torch.randperm(len(epoch_indices), generator=generator)]
            running, hits, seen = 0.0, 0, 0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                ink, labels = x_train[idx], y_train[idx]
                if bank is not None:  # only scikit-learn grids have round-trip variants
                    use_bank = (torch.rand(len(idx), generator=generator) < cfg.roundtrip_prob) & (idx < n_sklearn)
                    variant = torch.randint(cfg.roundtrip_variants, (len(idx),), generator=generator)
                    alt = bank[variant * n_sklearn + idx.clamp(max=n_sklearn - 1)]
                    ink = torch.where(use_bank.view(-1, 1, 1), alt, ink)
                if cfg.augment:
                    ink = random_affine(ink, cfg, generator)
                logits = model(ink_to_pixel_values(ink, pre))
                loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += float(loss.detach()) * len(idx)
                hits += int((logits.detach().argmax(1) == labels).sum())
                seen += len(idx)
            # Training-batch figures only: the test split is looked at once, after training.
            status = f"loss {running / seen:.4f}  train acc (augmented) {hits / seen:.4f}"
            progress.update(task, advance=1, status=status)
            if not show_progress or not progress.console.is_terminal:  # logs and CI see progress too
                log(f"epoch {epoch + 1}/{cfg.epochs}: {status}, {time.perf_counter() - loop_started:.0f} s")
    train_time = time.perf_counter() - loop_started

    model.eval()
    correct, total, sparsity, zero_fraction = evaluate(model, x_test, y_test)
    accuracy = correct / total
    dataset = dataset_config(cfg.seed, cfg.test_fraction, len(train_labels), total)
    dataset["synthetic"] = synthetic_recipe(pen, typed, cfg.seed)
    measured = SOURCES if cfg.heldout_per_digit != 0 else ("sklearn-test",)
    sources = evaluate_sources(model, pre, dataset, measured, cfg.heldout_per_digit)
    for source, figures in sources.items():
        log(f"{source}: {figures['correct']}/{figures['total']} = {figures['accuracy']:.4f}")
    total_time = time.perf_counter() - started
    log(
        f"test accuracy {correct}/{total} = {accuracy:.6f}; "
        f"training loop {train_time:.1f} s ({threads} threads)"
    )

    name = name or Path(out_dir).name
    metrics = {
        "test_accuracy": accuracy,
        "test_correct": correct,
        "test_total": total,
        "attention_sparsity_lt_1e-3": round(sparsity, 6),
        "attention_exact_zero_fraction": round(zero_fraction, 6),
        "sources": sources,
        "synthetic_train_samples": len(y_synthetic),
        "synthetic_data_time_s": round(synthetic_time, 1),
        "train_time_s": round(train_time, 1),
        "total_time_s": round(total_time, 1),
        "threads": threads,
        "params": params,
        "torch_version": torch.__version__,
    }
    config = ModelDirConfig(
        name=name,
        task="image-classification",
        architecture=model.config.model_dump(),
        labels=DIGIT_LABELS,
        preprocessing=pre.model_dump(),
        dataset=dataset,
        metrics=metrics,
        source={"kind": "trained", "command": invoked_command(), "training": cfg.model_dump()},
    )
    comparison = read_config(compare_to) if compare_to is not None else None
    directory = save_model_dir(out_dir, model, config, card=model_card(config, comparison))
    return TrainResult(Path(directory), accuracy, correct, total, train_time, params)
