"""Import a checkpoint of the authors' MultiMax `VisionTransformer` (github.com/ZhouYuxuanYX/MultiMax).

The official file is a PyTorch pickle: a bare state dict, or DeiT's training checkpoint
`{"model": state_dict, "optimizer": ..., "args": Namespace(...), ...}`, possibly saved from a
DistributedDataParallel model (keys prefixed with `module.`). It is read with
`torch.load(weights_only=True)` only; the one non-tensor class allowed is `argparse.Namespace`
(DeiT stores its command-line arguments under "args"), which holds plain values.

The architecture is inferred from the tensor shapes (embed dim, depth, patch size, channels, image
size from the number of patches, MLP ratio, classes, MultiMax order from the length of `ranges`,
whether `qkv` has a bias, and SoftMax vs MultiMax per attention and per output layer from whether
`ranges`/`ts` exist); the number of heads is not visible in any shape and must be given. Every key
and shape is then checked against the model that config builds before any weight is copied.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from mmserve.models import MultiMaxViT, ViTConfig

from .errors import CheckpointError
from .manifest import sha256_file
from .model_dir import ModelDirConfig, save_model_dir
from .safe_load import check_state_dict, safe_torch_load

__all__ = [
    "load_official_state_dict",
    "infer_official_vit_config",
    "import_official_vit",
    "official_preprocessing",
]

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
_HINTS = {
    "cls_token": (
        "a class token: this is a timm/DeiT ViT, not the official MultiMax ViT (no class token, mean pooling)"
    ),
    "dist_token": "a distillation token (DeiT distilled): not supported",
    "head_dist": "a distillation head (DeiT distilled): not supported",
    "fc_norm": "timm's fc_norm: not part of the official MultiMax ViT",
}


def load_official_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Read an official .pth safely and return its model state dict (unwrapped, `module.` stripped)."""
    path = Path(path)
    obj = safe_torch_load(
        path, [argparse.Namespace], "an official MultiMax ViT checkpoint, .pth"
    )
    return _extract_state_dict(path, obj)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _extract_state_dict(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise CheckpointError(
            path, f"not a state dict: the file holds a {type(obj).__name__}, not a dict of tensors"
        )
    if not _is_state_dict(obj):
        for key in _WRAPPER_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                obj = obj[key]
                break
        else:
            keys = ", ".join(repr(k) for k in list(obj)[:8])
            raise CheckpointError(
                path,
                "not a state dict: expected a dict of tensors or {'model': state_dict, ...}; "
                f"top-level keys are {keys or '(none)'}",
            )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _need(path: Path, state: dict[str, torch.Tensor], key: str, dims: int) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(path, f"missing key {key!r}: not an official MultiMax ViT state dict")
    tensor = state[key]
    if tensor.dim() != dims:
        raise CheckpointError(
            path, f"key {key!r} has shape {tuple(tensor.shape)}, expected a {dims}-D tensor"
        )
    return tensor


def _order_of(path: Path, state: dict[str, torch.Tensor], prefix: str) -> Optional[int]:
    """MultiMax order from `{prefix}ranges`/`{prefix}ts` (None when absent: SoftMax)."""
    ranges, ts = state.get(f"{prefix}ranges"), state.get(f"{prefix}ts")
    if ranges is None and ts is None:
        return None
    for key, tensor in ((f"{prefix}ranges", ranges), (f"{prefix}ts", ts)):
        if tensor is None:
            other = "ts" if key.endswith("ranges") else "ranges"
            raise CheckpointError(path, f"missing key {key!r} (its partner {prefix}{other} is present)")
        if tensor.dim() != 1 or tensor.numel() % 2:
            raise CheckpointError(
                path,
                f"key {key!r} has shape {tuple(tensor.shape)}: MultiMax parameters hold 2N scalars (1-D)",
            )
    if ranges.numel() != ts.numel():
        raise CheckpointError(
            path, f"{prefix}ranges has {ranges.numel()} values but {prefix}ts has {ts.numel()}"
        )
    return ranges.numel() // 2


def infer_official_vit_config(
    path: Path | str,
    state: dict[str, torch.Tensor],
    num_heads: int,
    layer_norm_eps: float = 1e-6,
    num_classes: Optional[int] = None,
) -> ViTConfig:
    """The ViTConfig that the state dict's shapes imply (heads given, since no shape reveals them)."""
    path = Path(path)
    for key, hint in _HINTS.items():
        if key in state:
            raise CheckpointError(path, f"unexpected key {key!r}: the checkpoint has {hint}")
    proj = _need(path, state, "patch_embed.proj.weight", 4)
    embed_dim, in_chans, ph, pw = proj.shape
    if ph != pw:
        raise CheckpointError(path, f"key 'patch_embed.proj.weight' has non-square {ph}x{pw} patches")
    pos = _need(path, state, "pos_embed", 3)
    if pos.shape[0] != 1 or pos.shape[2] != embed_dim:
        raise CheckpointError(
            path, f"key 'pos_embed' has shape {tuple(pos.shape)}, expected [1, num_patches, {embed_dim}]"
        )
    num_patches = pos.shape[1]
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise CheckpointError(
            path,
            f"key 'pos_embed' has {num_patches} positions: not a square patch grid (no class token expected)",
        )
    block_ids = sorted({int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))})
    if not block_ids:
        raise CheckpointError(path, "no 'blocks.{i}.*' keys: not an official MultiMax ViT state dict")
    if block_ids != list(range(len(block_ids))):
        missing = sorted(set(range(max(block_ids) + 1)) - set(block_ids))
        raise CheckpointError(path, f"blocks are not numbered 0..{max(block_ids)}: missing blocks {missing}")
    fc1 = _need(path, state, "blocks.0.mlp.fc1.weight", 2)
    hidden = fc1.shape[0]
    head = _need(path, state, "head.weight", 2)
    classes = head.shape[0]
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(
            path, f"key 'head.weight' has {classes} classes, but --num-classes says {num_classes}"
        )
    if num_heads < 1 or embed_dim % num_heads:
        raise CheckpointError(
            path,
            f"embed dim {embed_dim} (from 'patch_embed.proj.weight') is not divisible by {num_heads} heads",
        )
    attn_orders = {i: _order_of(path, state, f"blocks.{i}.attn.") for i in block_ids}
    if len(set(attn_orders.values())) > 1:
        raise CheckpointError(path, f"blocks disagree on MultiMax attention (order per block: {attn_orders})")
    attn_order = attn_orders[0]
    head_order = _order_of(path, state, "")
    if attn_order is not None and head_order is not None and attn_order != head_order:
        raise CheckpointError(
            path, f"attention MultiMax order {attn_order} differs from the output layer's order {head_order}"
        )
    order = attn_order if attn_order is not None else (head_order if head_order is not None else 2)
    attention_fn = "multimax" if attn_order is not None else "softmax"
    output_fn = "multimax" if head_order is not None else "softmax"
    try:
        return ViTConfig(
            img_size=grid * ph,
            patch_size=ph,
            in_chans=in_chans,
            num_classes=classes,
            embed_dim=embed_dim,
            depth=len(block_ids),
            num_heads=num_heads,
            mlp_ratio=hidden / embed_dim,
            qkv_bias="blocks.0.attn.qkv.bias" in state,
            layer_norm_eps=layer_norm_eps,
            attention_fn=attention_fn,
            output_fn=None if output_fn == attention_fn else output_fn,
            multimax_order=order,
        )
    except ValueError as exc:
        raise CheckpointError(path, f"inferred an invalid architecture: {exc}") from exc


def official_preprocessing(config: ViTConfig) -> dict[str, Any]:
    """DeiT's evaluation transform (resize to img/0.875, centre crop, ImageNet mean/std)."""
    from mmserve.tasks.image_classification import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessing

    rgb = config.in_chans == 3
    return ImagePreprocessing(
        kind="resize-crop",
        image_size=config.img_size,
        channels=config.in_chans,
        mean=list(IMAGENET_MEAN) if rgb else [0.5] * config.in_chans,
        std=list(IMAGENET_STD) if rgb else [0.5] * config.in_chans,
        resize_size=math.floor(config.img_size / 0.875),
        interpolation="bicubic",
    ).model_dump()


def _read_labels(path: Path, count: int) -> list[str]:
    import json

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(path, f"cannot read the labels file: {exc}") from exc
    labels: Sequence[Any]
    if path.suffix.lower() == ".json":
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(path, f"not valid JSON ({exc})") from exc
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise CheckpointError(path, "expected a JSON list of label strings")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if len(labels) != count:
        raise CheckpointError(path, f"has {len(labels)} labels but the checkpoint's head has {count} classes")
    return list(labels)


def import_official_vit(
    src: Path | str,
    out_dir: Path | str,
    num_heads: int,
    layer_norm_eps: float = 1e-6,
    num_classes: Optional[int] = None,
    labels_file: Optional[Path | str] = None,
    name: Optional[str] = None,
) -> Path:
    """Convert an official MultiMax ViT checkpoint into an mmserve model directory."""
    src = Path(src)
    state = load_official_state_dict(src)
    arch = infer_official_vit_config(src, state, num_heads, layer_norm_eps, num_classes)
    model = MultiMaxViT(arch)
    check_state_dict(src, model, state, "the inferred architecture")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    model.eval()
    labels = (
        _read_labels(Path(labels_file), arch.num_classes)
        if labels_file
        else [str(i) for i in range(arch.num_classes)]
    )
    digest = sha256_file(src)
    out_dir = Path(out_dir)
    config = ModelDirConfig(
        name=name or out_dir.name,
        task="image-classification",
        architecture=arch.model_dump(),
        labels=labels,
        preprocessing=official_preprocessing(arch),
        source={"kind": "official-vit", "file": src.name, "sha256": digest},
    )
    card = f"""# {config.name}

Imported from the official MultiMax ViT checkpoint `{src.name}` (sha256 `{digest}`) with
`mmserve import official-vit`. Architecture inferred from the tensor shapes: embed dim {arch.embed_dim},
depth {arch.depth}, {arch.num_heads} heads (given), patch {arch.patch_size}, image {arch.img_size},
{arch.in_chans} channels, {arch.num_classes} classes, attention {arch.attention_fn},
output layer {arch.head_fn}, MultiMax order {arch.multimax_order}, LayerNorm eps {arch.layer_norm_eps}.

Preprocessing assumed: DeiT's evaluation transform (see config.json["preprocessing"]); change it there if
the checkpoint was trained differently.
"""
    return save_model_dir(out_dir, model, config, card=card)
