"""`mmserve import`: turn checkpoints trained elsewhere into mmserve model directories."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="Import checkpoints trained elsewhere (the authors' official MultiMax ViT).", no_args_is_help=True
)


@app.command("official-vit")
def official_vit(
    src: Path = typer.Argument(
        ..., help="official checkpoint (.pth): a state dict or {'model': state_dict, ...}"
    ),
    out_dir: Path = typer.Argument(..., help="model directory to write"),
    heads: int = typer.Option(..., "--heads", help="attention heads (not visible in any tensor shape)"),
    layer_norm_eps: float = typer.Option(1e-6, "--layer-norm-eps", help="LayerNorm eps (DeiT models: 1e-6)"),
    num_classes: Optional[int] = typer.Option(
        None, "--num-classes", help="check the head has this many classes"
    ),
    labels: Optional[Path] = typer.Option(None, "--labels", help="class names: one per line, or a JSON list"),
    name: Optional[str] = typer.Option(
        None, "--name", help="model name (default: the output directory's name)"
    ),
) -> None:
    """Import an official MultiMax VisionTransformer checkpoint (torch.load(weights_only=True) only)."""
    from mmserve.checkpoints import read_config
    from mmserve.checkpoints.official import import_official_vit

    directory = import_official_vit(src, out_dir, heads, layer_norm_eps, num_classes, labels, name)
    arch = read_config(directory).architecture
    typer.echo(
        f"wrote {directory}: embed {arch['embed_dim']}, depth {arch['depth']}, heads {arch['num_heads']}, "
        f"patch {arch['patch_size']}, image {arch['img_size']}, classes {arch['num_classes']}, "
        f"attention {arch['attention_fn']}"
    )
