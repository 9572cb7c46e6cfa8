"""English number words -> German number words, generated locally with num2words (no network).

    42     "forty-two"                                   -> "zweiundvierzig"
    21342  "twenty-one thousand, three hundred and forty-two"
           -> "einundzwanzigtausenddreihundertzweiundvierzig"

The universe is the integers 0..999,999. The split is disjoint BY NUMBER and fixed by one seed:

- every number 0..999 is in the training split. They are the building blocks of all others
  ("seventeen" -> "siebzehn" is vocabulary to memorise, not something a model can infer), and a
  random split would put only ~4 of them in dev/test anyway;
- the numbers 1,000..999,999 are permuted with `numpy.random.default_rng(seed)`; the first `dev_size`
  form dev, the next `test_size` form test, and the next `train_size - 1000` join the training split.

So dev and test measure generalisation to unseen combinations of a thousands part and a units part
(the reordering the task is about: "...-two thousand" -> "zwei...tausend"). The recipe, the library
versions and a sha256 of the test numbers go into config.json["dataset"], so anyone can regenerate
exactly the held-out pairs a model's figures were measured on (`heldout_texts`, `split_from_config`).
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from mmserve.versions import package_version

__all__ = [
    "DATASET_NAME",
    "SMALL_NUMBERS",
    "UNIVERSE",
    "NumberPairs",
    "NumberSplits",
    "english",
    "german",
    "make_pairs",
    "make_splits",
    "dataset_config",
    "split_from_config",
    "heldout_texts",
]

DATASET_NAME = "num2words-en-de"
UNIVERSE = 1_000_000
"""Numbers 0..UNIVERSE-1."""
SMALL_NUMBERS = 1000
"""0..SMALL_NUMBERS-1 always go to the training split."""
DEFAULT_SEED = 0
DEFAULT_DEV_SIZE = 2000
DEFAULT_TEST_SIZE = 2000
DEFAULT_TRAIN_SIZE = 120_000


def _converters():
    from num2words import CONVERTER_CLASSES

    return CONVERTER_CLASSES["en"], CONVERTER_CLASSES["de"]


def english(number: int) -> str:
    """num2words(number, lang="en")."""
    return _converters()[0].to_cardinal(int(number))


def german(number: int) -> str:
    """num2words(number, lang="de")."""
    return _converters()[1].to_cardinal(int(number))


class NumberPairs(NamedTuple):
    """One split: the numbers and their English (source) and German (target) words, aligned."""

    numbers: np.ndarray
    sources: list[str]
    targets: list[str]

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.numbers)


class NumberSplits(NamedTuple):
    train: NumberPairs
    dev: NumberPairs
    test: NumberPairs


def make_pairs(numbers: Sequence[int] | np.ndarray) -> NumberPairs:
    """English and German words of each number (num2words, ~0.17 ms per pair)."""
    en, de = _converters()
    numbers = np.asarray(numbers, dtype=np.int64)
    return NumberPairs(
        numbers, [en.to_cardinal(int(n)) for n in numbers], [de.to_cardinal(int(n)) for n in numbers]
    )


def _split_numbers(seed: int, dev_size: int, test_size: int, train_size: int):
    large = UNIVERSE - SMALL_NUMBERS
    if dev_size < 0 or test_size < 0 or train_size < SMALL_NUMBERS:
        raise ValueError(
            f"sizes must be dev >= 0, test >= 0, train >= {SMALL_NUMBERS}; "
            f"got {dev_size}, {test_size}, {train_size}"
        )
    if dev_size + test_size + train_size - SMALL_NUMBERS > large:
        raise ValueError(f"dev + test + train exceed the {UNIVERSE:,} numbers available")
    perm = np.random.default_rng(seed).permutation(large) + SMALL_NUMBERS
    dev = perm[:dev_size]
    test = perm[dev_size : dev_size + test_size]
    rest = perm[dev_size + test_size : dev_size + test_size + train_size - SMALL_NUMBERS]
    train = np.concatenate([np.arange(SMALL_NUMBERS), rest])
    return train, dev, test


def numbers_sha256(numbers: np.ndarray) -> str:
    """Fingerprint of a split's numbers (int64 little-endian, in split order)."""
    return hashlib.sha256(np.asarray(numbers, dtype="<i8").tobytes()).hexdigest()


def make_splits(
    seed: int = DEFAULT_SEED,
    dev_size: int = DEFAULT_DEV_SIZE,
    test_size: int = DEFAULT_TEST_SIZE,
    train_size: int = DEFAULT_TRAIN_SIZE,
    with_train: bool = True,
) -> NumberSplits:
    """The disjoint (train, dev, test) splits of this recipe; `with_train=False` skips generating the
    (large) training text and returns an empty train split."""
    train, dev, test = _split_numbers(seed, dev_size, test_size, train_size)
    return NumberSplits(
        make_pairs(train if with_train else train[:0]), make_pairs(dev), make_pairs(test)
    )


def dataset_config(seed: int, dev_size: int, test_size: int, train_size: int) -> dict[str, Any]:
    """The config.json["dataset"] entry: enough to regenerate every split and check it is the same."""
    import num2words

    _, _, test = _split_numbers(seed, dev_size, test_size, train_size)
    return {
        "name": DATASET_NAME,
        "source": "num2words(n, lang='en') -> num2words(n, lang='de')",
        "universe": f"integers 0..{UNIVERSE - 1}",
        "split": (
            f"disjoint by number: 0..{SMALL_NUMBERS - 1} all in train; "
            f"numpy.random.default_rng(seed).permutation of {SMALL_NUMBERS}..{UNIVERSE - 1}: "
            "first dev_size -> dev, next test_size -> test, next train_size - "
            f"{SMALL_NUMBERS} -> train"
        ),
        "seed": seed,
        "dev_size": dev_size,
        "test_size": test_size,
        "train_size": train_size,
        "small_numbers_in_train": SMALL_NUMBERS,
        "test_numbers_sha256": numbers_sha256(test),
        "num2words_version": getattr(num2words, "__version__", package_version("num2words", missing="unknown")),
        "numpy_version": np.__version__,
    }


def split_from_config(dataset: dict[str, Any], with_train: bool = False) -> NumberSplits:
    """Regenerate the splits recorded in a model's config.json["dataset"] (verifying the test numbers)."""
    if dataset.get("name") != DATASET_NAME:
        raise ValueError(f"model was not trained on {DATASET_NAME} (dataset: {dataset.get('name')!r})")
    args = tuple(int(dataset[key]) for key in ("seed", "dev_size", "test_size", "train_size"))
    splits = make_splits(*args, with_train=with_train)
    expected = dataset.get("test_numbers_sha256")
    if expected is not None and numbers_sha256(splits.test.numbers) != expected:
        raise ValueError(
            "regenerated test split differs from the one recorded in config.json (different numpy "
            "random stream?): its sha256 does not match test_numbers_sha256"
        )
    return splits


def heldout_texts(config: Any, n: Optional[int] = None) -> list[tuple[str, str]]:
    """The first `n` (all when None) test-split pairs (English source, German reference).

    `config` is a ModelDirConfig (or anything with a .dataset dict). Sources are num2words' own text
    (not normalised), so a parity check exercises the whole path a user's text takes.
    """
    test = split_from_config(config.dataset).test
    count = len(test) if n is None else max(0, min(int(n), len(test)))
    return list(zip(test.sources[:count], test.targets[:count]))
