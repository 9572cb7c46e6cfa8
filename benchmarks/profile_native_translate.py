"""Time the native translator alone on the bundled translator's 2,000 test sources, for `perf`.

The bench_translate.py table compares engines; this script runs only the native search (and its encoder
alone), so a profiler's samples are the native translator's, with nothing else interleaved:

    python benchmarks/profile_native_translate.py --beam 4 --passes 8
    perf record -o native.perf python benchmarks/profile_native_translate.py --beam 4 --passes 8
    perf report -i native.perf --no-children --sort dso,symbol      # oneDNN's GEMMs show as [JIT]

Batches are the benchmark's: sources as token ids sorted by length, 32 per batch, 1 thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_translate import batches_by_length, sources  # noqa: E402
from mmserve.checkpoints import load_model_dir, read_config  # noqa: E402
from mmserve.models.decoding import SearchRules  # noqa: E402
from mmserve.models.native import NativeTranslator  # noqa: E402
from mmserve.tasks.translation import pad_sources  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "numbers-en-de")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    native = NativeTranslator(load_model_dir(args.model).model.eval())
    gen = read_config(args.model).generation
    rows = sources(args.model, args.sentences)
    batches = [pad_sources([rows[i] for i in batch], gen["pad_id"]) for batch in batches_by_length(rows, 32)]
    settings = (gen["bos_id"], gen["eos_id"], gen["pad_id"], gen["max_length"], args.beam, gen["length_penalty"], 1,
                SearchRules())
    for _ in range(args.passes):
        start = time.perf_counter()
        for ids, mask in batches:
            native.search(ids, mask, *settings)
        middle = time.perf_counter()
        for ids, mask in batches:
            native.encode(ids, mask)
        end = time.perf_counter()
        print(f"beam {args.beam}: {len(rows) / (middle - start):.0f} sentences/s ({middle - start:.3f} s), "
              f"of which the encoder alone takes {end - middle:.3f} s")


if __name__ == "__main__":
    main()
