"""Recompute a digits model's card figures: accuracy per source and per digit, next to the recorded ones.

    python benchmarks/eval_digits.py [MODEL_DIR ...] [--per-digit N] [--check]

Sources (see mmserve/data/digit_sets.py): the scikit-learn test split, typed digits in the 22 held-out
DejaVu fonts (1,100 images) and pen digits from the held-out `brush` stroke model (2,000 images). The
images are generated from fixed seeds and go through the serving preprocessing, so the figures are the
same on every machine with the same torch, Pillow and fonts. Without MODEL_DIR: both bundled models.
`--check` exits 1 when a recomputed figure differs from the one in the model's config.json.
Accuracy is not a speed figure: a shared machine changes how long this takes, not what it prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--per-digit", type=int, default=None, help="held-out images per digit (default: all)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a figure differs from config.json")
    args = parser.parse_args()

    from mmserve.checkpoints import load_model_dir
    from mmserve.tasks.image_classification import ImagePreprocessing
    from mmserve.training.digits_eval import SOURCE_TITLES, evaluate_sources

    dirs = args.models or [REPO / "models" / "digits-vit", REPO / "models" / "digits-vit-softmax"]
    mismatches = 0
    print(f"{'model':<22} {'source':<44} {'accuracy':>18}  per digit 0..9 (%)   [recorded]")
    for directory in dirs:
        loaded = load_model_dir(directory)
        pre = ImagePreprocessing.model_validate(loaded.config.preprocessing)
        results = evaluate_sources(loaded.model, pre, loaded.config.dataset, per_digit=args.per_digit)
        recorded = loaded.config.metrics.get("sources", {})
        for source, fig in results.items():
            digits = " ".join(f"{100 * v:5.1f}" for v in fig["per_digit"])
            old = recorded.get(source)
            same = old is not None and old["correct"] == fig["correct"] and old["total"] == fig["total"]
            note = "same" if same else (f"recorded {old['correct']}/{old['total']}" if old else "not recorded")
            if not same and args.per_digit is None:
                mismatches += 1
            print(
                f"{loaded.config.name:<22} {SOURCE_TITLES[source]:<44} "
                f"{fig['correct']:>5}/{fig['total']:<5} {100 * fig['accuracy']:6.2f}%  {digits}   [{note}]"
            )
    if args.check and mismatches:
        print(f"{mismatches} figure(s) differ from the model cards", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
