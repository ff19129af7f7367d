"""QB-Norm helping on real data: dictionary definition -> word retrieval.

The repository ships, in ``examples/data/glosses``, all-MiniLM-L6-v2
embeddings (float16) of 2000 test definitions, the 2000 words they define
(the gallery) and 5000 definitions of other words (the querybank, drawn like
the test queries), from the Open English WordNet 2024 (CC BY 4.0; built by
``examples/build_glosses.py``).  This script ingests them into a chunked Zarr
store, runs dynamic inverted softmax at beta 20 next to the raw scores, and
shows definitions whose top-3 words changed.

Usage::

    python examples/glosses_demo.py [--out DIR] [--show N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import qbscale

DATA = Path(__file__).resolve().parent / "data" / "glosses"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--show", type=int, default=3, help="example queries to print")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    store = qbscale.ingest_embeddings(
        args.out / "glosses.zarr", args.data / "querybank.npy",
        args.data / "queries_test.npy", args.data / "gallery_test.npy",
        overwrite=True, progress=False)
    # one pass: the run also keeps the top-3 of the raw scores (base_topk_index)
    result = qbscale.run(store, beta=20, k=1, method="dis", topk=3)
    print(f"{'':<6}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MedR':>8}")
    for name, row in zip(("none", "dis"), result.table(), strict=True):
        print(f"{name:<6}" + "".join(f"{row[m]:>8.1f}" for m in ("R1", "R5", "R10", "MedR")))
    print(f"{100 * result.normalised_share:.1f}% of rows normalised, activation set "
          f"{result.activation_size} words")

    with gzip.open(args.data / "items_test.jsonl.gz", "rt", encoding="utf-8") as f:
        items = [json.loads(line) for line in f]
    assert result.topk_index is not None and result.base_topk_index is not None
    before, after = result.base_topk_index, result.topk_index[0]
    fixed = [i for i in range(len(items)) if before[i, 0] != i and after[i, 0] == i]
    lost = [i for i in range(len(items)) if before[i, 0] == i and after[i, 0] != i]
    print(f"{len(fixed)} definitions gained the right top-1 word, {len(lost)} lost it")
    for i in fixed[:args.show]:
        print(f"\n{items[i]['query'][:90]}")
        for label, top in (("before", before[i]), ("after ", after[i])):
            print(f"  {label}: " + ", ".join(items[j]["word"] for j in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
