"""``qbscale ingest``: similarity (or embedding) files -> one Zarr experiment store."""

from __future__ import annotations

import os
import time
from typing import Any, cast

import click

from qbscale.storage import layout

from .options import (
    Command,
    InputPath,
    OutputPath,
    check_json_output,
    library_errors,
    quiet_option,
    write_json,
)

SIMS = ("bank", "test")
EMBEDDINGS = ("bank_emb", "test_emb", "gallery_emb")
#: every path the command reads or writes: its --json file is none of them
_PATHS = (*SIMS, *EMBEDDINGS, "masks", "gt_index", "positives", "v2t_bank", "gallery_bank",
          "query_ids", "gallery_ids", "output")


def _mode(opts: dict[str, Any]) -> str:
    """``"sims"`` or ``"embeddings"`` from the options given (usage errors otherwise)."""
    sims = [k for k in SIMS if opts[k]]
    emb = [k for k in EMBEDDINGS if opts[k]]
    if sims and (emb or opts["normalise_embeddings"]):
        raise click.UsageError("--bank/--test (similarities) and --bank-emb/--test-emb/"
                               "--gallery-emb/--normalise-embeddings (embeddings) "
                               "are mutually exclusive")
    if sims:
        if len(sims) < len(SIMS):
            raise click.UsageError("give both --bank and --test")
        return "sims"
    if len(emb) < len(EMBEDDINGS):
        raise click.UsageError("give --bank and --test (similarities), or --bank-emb, "
                               "--test-emb and --gallery-emb (embeddings)")
    if opts["chunk_cols"] is not None:
        raise click.UsageError("--chunk-cols applies to similarities only: embedding chunks "
                               "span the whole dimension")
    return "embeddings"


def _disk_bytes(path: str) -> int | None:
    if layout.is_url(path):
        return None
    path = layout.local_path(path)
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def arrays(out: str) -> dict[str, dict[str, Any]]:
    """Shape, dtype and chunks of every array in the store ``out`` (for ``--json``)."""
    import zarr

    group = zarr.open_group(out, mode="r")
    return {name: {"shape": list(arr.shape), "dtype": _dtype(arr), "chunks": list(arr.chunks)}
            for name, arr in sorted(group.arrays())}


def _dtype(arr: Any) -> str:
    """An array's dtype as messages show it (``str`` for zarr's variable-length strings)."""
    import numpy as np

    return "str" if np.dtype(arr.dtype).kind in "TOU" else str(arr.dtype)


def summary(out: str, seconds: float) -> str:
    """One paragraph describing the store just written."""
    import zarr

    group = zarr.open_group(out, mode="r")
    attrs = cast("dict[str, Any]", group.attrs[layout.ATTR])
    parts, raw = [], 0
    for name, arr in group.arrays():
        raw += arr.nbytes
        if arr.ndim == 2:
            parts.append(f"{name} {' x '.join(map(str, arr.shape))} {arr.dtype} in chunks of "
                         f"{' x '.join(map(str, arr.chunks))}")
        else:
            parts.append(f"{name} ({arr.shape[0]} {_dtype(arr)})")
    qpi = attrs.get("queries_per_item")
    truth = (f"{qpi} {'query' if qpi == 1 else 'queries'} per gallery item" if qpi
             else "no ground truth" if attrs.get("ground_truth") is False
             else "positives from (query, item) pairs"
             if layout.POSITIVES_INDPTR in set(group.array_keys())
             else "ground truth from gt_index")
    disk = _disk_bytes(out)
    size = f"{raw / 2**20:.1f} MiB of data" + (
        f", {disk / 2**20:.1f} MiB on disk" if disk is not None else "")
    return (f"Wrote {out} ({attrs['kind']}) in {seconds:.1f} s: {'; '.join(parts)}; "
            f"codec {attrs['codec']}; {size}; {truth}.")


@click.command(cls=Command)
@click.option("--bank", metavar="PATH", type=InputPath(),
              help="Querybank x gallery similarities "
              "(.pkl, .npy, .npz or FILE.npz:NAME).")
@click.option("--test", metavar="PATH", type=InputPath(),
              help="Test query x gallery similarities.")
@click.option("--masks", metavar="PATH", type=InputPath(),
              help="0/1 per test query: (items, queries per item) "
              "or flat.")
@click.option("--queries-per-item", type=click.IntRange(min=1), metavar="N",
              help="Query i belongs to gallery item i // N (default: queries / gallery).")
@click.option("--gt-index", metavar="PATH", type=InputPath(),
              help="Ground-truth gallery index of every query "
              "(.npy/.pkl of ints), instead of --queries-per-item.")
@click.option("--positives", metavar="PATH", type=InputPath(),
              help="Several correct gallery items per query, as (query, item) row numbers: "
                   "TREC qrels (.qrels/.trec), two columns (.tsv/.txt/.csv), .parquet, "
                   ".npy pairs or a scipy sparse .npz; instead of --queries-per-item.")
@click.option("--v2t-bank", "v2t_bank", metavar="PATH", type=InputPath(),
              help="Querybank of the other direction: bank items x test queries (e.g. bank "
                   "videos x test captions), for `qbscale run --direction v2t`.")
@click.option("--no-ground-truth", is_flag=True,
              help="Store no ground truth (new queries, right answers unknown): runs give "
                   "top-k hits and scores, no metrics.  Automatic when the queries are not "
                   "a multiple of the gallery and neither option above is given.")
@click.option("--query-ids", metavar="PATH", type=InputPath(),
              help="One id per test query: a text file (one id a line), a .npy of integers "
                   "or strings, or FILE.parquet:COLUMN.  Hits, qrels and open_dataset use "
                   "them (add them later with `qbscale ids`).")
@click.option("--gallery-ids", metavar="PATH", type=InputPath(),
              help="One id per gallery item (same formats).")
@click.option("--bank-emb", metavar="PATH", type=InputPath(),
              help="Querybank embeddings (.npy or .zarr).")
@click.option("--test-emb", metavar="PATH", type=InputPath(),
              help="Test query embeddings.")
@click.option("--gallery-emb", metavar="PATH", type=InputPath(),
              help="Gallery embeddings.")
@click.option("--gallery-bank", metavar="PATH", type=InputPath(),
              help="Gallery-bank x gallery similarities (with --bank/--test) or gallery-bank "
                   "embeddings (with --*-emb), for --method dual-is.")
@click.option("--normalise-embeddings", is_flag=True,
              help="Store embeddings scaled to unit length (cosine similarity).")
@click.option("-o", "--output", required=True, metavar="PATH",
              type=OutputPath("experiment store"), help="Store to write "
              "(directory or URL, e.g. exp.zarr or s3://bucket/exp.zarr).")
@click.option("--chunk-mb", type=click.FloatRange(min=0, min_open=True),
              help=f"Target size of a stored chunk, MiB  [default: "
              f"{layout.DEFAULT_CHUNK_BYTES / 2**20:g} for similarities, "
              f"{layout.EMBEDDING_CHUNK_BYTES / 2**20:g} for embeddings].")
@click.option("--chunk-rows", type=click.IntRange(min=1),
              help="Rows per chunk (overrides --chunk-mb).")
@click.option("--chunk-cols", type=click.IntRange(min=1),
              help="Columns per chunk (default: whole rows).")
@click.option("--dtype", type=click.Choice(layout.DTYPES),
              help="Stored float type (default: the input's).")
@click.option("--codec", type=click.Choice(layout.CODECS), default=layout.CODECS[0],
              show_default=True,
              help="Chunk compression.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store (once the new "
              "one is complete).")
@click.option("--json", "json_path", type=OutputPath("JSON file"),
              help="Write what was stored (arrays, shapes, chunks) as JSON.")
@quiet_option
@library_errors
def ingest(**opts: Any) -> None:
    """Write similarity matrices (or embeddings) into one Zarr experiment store."""
    from qbscale.storage.durability.paths import check_not_input
    from qbscale.storage.stores.ingest import ingest as ingest_sims
    from qbscale.storage.stores.ingest import ingest_embeddings

    mode = _mode(opts)
    check_json_output(opts["json_path"], tuple(opts[k] for k in _PATHS))
    check_not_input(opts["output"], (opts["gallery_bank"],))
    common: dict[str, Any] = dict(
        queries_per_item=opts["queries_per_item"], gt_index=opts["gt_index"],
        ground_truth=False if opts["no_ground_truth"] else None,
        chunk_bytes=None if opts["chunk_mb"] is None else max(1, int(opts["chunk_mb"] * 2**20)),
        chunk_rows=opts["chunk_rows"],
        dtype=opts["dtype"], codec=opts["codec"], overwrite=opts["overwrite"],
        progress=not opts["quiet"], query_ids=opts["query_ids"],
        gallery_ids=opts["gallery_ids"])
    start = time.perf_counter()
    if mode == "sims":
        common["chunk_bytes"] = common["chunk_bytes"] or layout.DEFAULT_CHUNK_BYTES
        out = ingest_sims(opts["output"], opts["bank"], opts["test"], opts["masks"],
                          chunk_cols=opts["chunk_cols"], positives=opts["positives"],
                          reverse_bank=opts["v2t_bank"], **common)
    else:
        if opts["positives"] or opts["v2t_bank"]:
            raise click.UsageError("--positives and --v2t-bank go with --bank/--test "
                                   "(similarities)")
        out = ingest_embeddings(opts["output"], opts["bank_emb"], opts["test_emb"],
                                opts["gallery_emb"], masks=opts["masks"],
                                normalise=opts["normalise_embeddings"], **common)
    if opts["gallery_bank"]:
        from qbscale.storage.stores.gallery_bank import add_gallery_bank

        add_gallery_bank(out, opts["gallery_bank"], dtype=opts["dtype"], codec=opts["codec"],
                         overwrite=True, progress=not opts["quiet"],
                         chunk_bytes=common["chunk_bytes"] or layout.DEFAULT_CHUNK_BYTES)
    seconds = time.perf_counter() - start
    click.echo(summary(out, seconds))
    if opts["json_path"]:
        write_json(opts["json_path"], "ingest", {"store": out, "mode": mode, "seconds": seconds,
                                                 "arrays": arrays(out)})
    _truth_notice(out, opts["no_ground_truth"],  # last: a failure above is its only line
                  inferred=opts["queries_per_item"] is None and opts["gt_index"] is None
                  and opts["positives"] is None)


def _truth_notice(out: str, forced: bool, inferred: bool) -> None:
    """One line on stderr when the store has no ground truth, or one it inferred."""
    import zarr

    from qbscale.storage.stores.store import inferred_ground_truth_notice, no_ground_truth_notice

    group: Any = zarr.open_group(out, mode="r")
    attrs = cast("dict[str, Any]", group.attrs[layout.ATTR])
    if attrs.get("ground_truth") is not False:
        if inferred and attrs.get("queries_per_item"):
            click.echo(f"Note: {out}: {inferred_ground_truth_notice(attrs['queries_per_item'])}",
                       err=True)
        return
    names = set(group.array_keys())
    n_queries, n_gallery = (group[layout.TEST].shape if layout.TEST in names else
                            (group[layout.TEST_EMB].shape[0], group[layout.GALLERY_EMB].shape[0]))
    click.echo(f"Note: {out}: {no_ground_truth_notice(n_queries, n_gallery, forced)}", err=True)
