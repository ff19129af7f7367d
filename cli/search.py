"""``qbscale search`` and ``qbscale index``: a fitted normaliser serving new queries."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .options import (
    Command,
    InputPath,
    OutputPath,
    UpdatedPath,
    check_output_file,
    library_errors,
    quiet_option,
    scheduler_option,
    topk_notice,
    workers_option,
)


def load_normaliser(path: str) -> Any:
    """The normaliser saved at ``path`` (:meth:`qbscale.Normaliser.load`)."""
    from qbscale.retrieval.normaliser import Normaliser

    return Normaliser.load(path)


def _sims_source(path: str, rows: int) -> tuple[Any, Any]:
    """Similarity rows (``.npy`` memory-mapped, a pickle, ``.npz``, or a
    store's test matrix) as a block source, and the store's experiment (None
    for a file)."""
    from qbscale.engine.checks import check_similarities
    from qbscale.storage.durability.paths import check_regular
    from qbscale.storage.inputs.readers import NpyInput, open_matrix
    from qbscale.storage.layout import is_url
    from qbscale.storage.stores.sources import NumpyMatrix
    from qbscale.storage.stores.store import open_experiment

    if os.path.isdir(path) or is_url(path):
        experiment = open_experiment(path)
        return experiment.test, experiment
    check_regular(path)
    # opened as ingest opens it: an empty, truncated or lying .npy is one clear error
    src = open_matrix(path)
    array = src.memmap() if isinstance(src, NpyInput) else src.read()
    check_similarities(array, f"the similarities ({path})")
    return NumpyMatrix.wrap(array, rows), None


def _recorded_gallery(norm: Any) -> Any:
    """The gallery embeddings the normaliser recorded, or a one-line error
    pointing to --gallery-emb (none recorded, or not found)."""
    from qbscale.errors import ConfigError

    if norm.gallery is None and getattr(norm, "record", None) is None:
        raise ConfigError("give --gallery-emb: the normaliser records no gallery")
    return norm.fitted_gallery("pass --gallery-emb PATH")


def _ids(query_ids: str | None, gallery_ids: str | None, n_queries: int, n_gallery: int,
         store: Any) -> tuple[Any, Any]:
    """``(query ids, gallery ids)`` naming the hits: the files given, else a --sims
    store's own ids (:mod:`qbscale.storage.stores.ids`), else None (0-based indices)."""
    from qbscale.storage.inputs.ids import read_ids
    from qbscale.storage.stores.ids import experiment_ids

    own = experiment_ids(store) if store is not None else (None, None)
    return (own[0] if query_ids is None else read_ids(query_ids, "query", n_queries),
            own[1] if gallery_ids is None else read_ids(gallery_ids, "gallery", n_gallery))


def _item_ids(norm: Any, indices: Any) -> Any:
    """Gallery positions as item ids: the same, unless items of the updatable
    normaliser were added or removed (hits then name items by id)."""
    record = getattr(norm, "record", None)
    return indices if record is None else record.item_ids[indices]


def _variants(norm: Any) -> list[str]:
    name = norm.config.variant_name
    return [f"{norm.config.label}:{name}={v:g}" for v in norm.values]


@click.command(cls=Command)
@click.argument("normaliser", type=InputPath())
@click.option("--queries", type=InputPath(exists=True), help="Query embeddings (.npy, .zarr).")
@click.option("--sims", type=InputPath(),
              help="Similarities of the queries to the gallery (.npy, .pkl, STORE).")
@click.option("--gallery-emb", type=InputPath(exists=True),
              help="Gallery embeddings (.npy, .zarr); default: the normaliser's own.")
@click.option("--topk", type=click.IntRange(min=1), required=True, help="Hits per query.")
@click.option("--hits", "hits_path", required=True, type=OutputPath("hits file"),
              help="Output: .parquet, .tsv, .trec or .npz (format by suffix).")
@click.option("--index", "index_path", type=InputPath(exists=True),
              help="Search this faiss index (from `qbscale index`) instead of exactly.")
@click.option("--block-rows", type=click.IntRange(min=1), default=None,
              help="Queries per block (default: from a 64 MiB similarity block).")
@click.option("--query-ids", metavar="PATH", type=InputPath(),
              help="One id per query, naming them in the hits: a text file (one id a line), "
                   "a .npy, or FILE.parquet:COLUMN (default: a --sims STORE's own ids, else "
                   "0-based indices).")
@click.option("--gallery-ids", metavar="PATH", type=InputPath(),
              help="One id per gallery item (same formats and default).")
@scheduler_option
@workers_option
@quiet_option
@library_errors
def search(normaliser: str, queries: str | None, sims: str | None, gallery_emb: str | None,
           topk: int, hits_path: str, index_path: str | None, block_rows: int | None,
           query_ids: str | None, gallery_ids: str | None,
           scheduler: str, workers: int | None, quiet: bool) -> None:
    """Top-K gallery items of new queries under NORMALISER, written to a hits file.

    Queries are embeddings (--queries, searched exactly over --gallery-emb or
    through a faiss --index) or similarity rows against the fitted gallery
    (--sims); they are searched block by block and the hits appended.
    """
    from tqdm import tqdm

    from qbscale.errors import ConfigError
    from qbscale.retrieval import search as qs

    if (queries is None) == (sims is None):
        raise ConfigError("give --queries or --sims (one of them)")
    if sims is not None and (index_path or gallery_emb):
        raise ConfigError("--sims are scores against the gallery already: "
                          "--index and --gallery-emb go with --queries")
    from qbscale.engine.checks import check_finite
    from qbscale.engine.grid import offsets
    from qbscale.storage.outputs import hits

    hits.check_hits_path(hits_path)
    from qbscale.storage.durability.paths import check_not_input

    check_not_input(hits_path, (normaliser, queries, sims, gallery_emb, index_path, query_ids,
                                gallery_ids))
    norm = load_normaliser(normaliser)
    if sims is not None:
        source, sims_store = _sims_source(sims, block_rows or 2**24 // norm.n_gallery)
        n_queries = source.shape[0]
    else:
        from qbscale.storage.inputs.gallery_rows import query_source

        rows = block_rows or qs.block_grid(2**62, norm.n_gallery)[0]
        source = query_source(queries, rows)
        n_queries = source.shape[0]
        index, gallery = None, None
        if index_path is not None:
            from qbscale.retrieval.faiss_index import FaissSearch

            index = FaissSearch.load(index_path, norm)
        elif gallery_emb is None:
            gallery = _recorded_gallery(norm)
        else:
            gallery = gallery_emb
    names = _ids(query_ids, gallery_ids, n_queries, norm.n_gallery,
                 sims_store if sims is not None else None)
    variants = _variants(norm)
    with hits.HitsWriter(hits_path, variant=variants if len(variants) > 1 else variants[0],
                         item_ids=names[1]) as writer, \
            tqdm(total=n_queries, unit="query", disable=quiet, file=sys.stderr) as bar:
        if sims is not None:
            from qbscale.storage.stores.store import read_whole

            with read_whole(sims_store):
                scores, indices = qs.search_matrix(norm, source, topk, scheduler=scheduler,
                                                   num_workers=workers,
                                                   what=f"the similarities ({sims})")
            writer.append(scores, _item_ids(norm, indices), names[0])
            bar.update(n_queries)
        for i in range(len(source.row_chunks) if sims is None else 0):
            block = source.read(i)
            # rows numbered in the whole file (a search sees one block)
            check_finite(block, offsets(source.row_chunks)[i], source.what)
            if index is not None:
                scores, indices = index.search(block, topk)
            else:
                scores, indices = qs.search(norm, block, topk, gallery, scheduler=scheduler,
                                            num_workers=workers)
            first = offsets(source.row_chunks)[i]
            writer.append(scores, _item_ids(norm, indices),
                          None if names[0] is None else names[0][first:first + len(block)])
            bar.update(len(block))
    how = "faiss index" if sims is None and index is not None else "exact"
    topk_notice(topk, norm.n_gallery)
    click.echo(f"Wrote {hits_path}: top {topk} of {norm.n_gallery} items for {n_queries} "
               f"queries ({norm.config.label} {norm.config.variant_name}="
               f"{','.join(f'{v:g}' for v in norm.values)}, {how})")


@click.command(cls=Command)
@click.argument("normaliser", type=InputPath())
@click.option("--gallery-emb", type=InputPath(exists=True),
              help="Gallery embeddings (.npy, .zarr); default: the normaliser's own.")
@click.option("-o", "--out", "out", required=True, type=OutputPath("faiss index"),
              help="The faiss index file to write.")
@click.option("--factory", default="Flat", show_default=True,
              help="faiss.index_factory string: Flat, HNSW32, IVF1024,Flat, ...")
@click.option("--overwrite", is_flag=True, help="Replace an existing index file.")
@click.option("--follow", "follow", type=UpdatedPath(exists=True), metavar="OLD.faiss",
              help="Update OLD.faiss (built for an earlier version of the updatable "
                   "NORMALISER) instead: new items appended, removed ones deleted; built "
                   "again when the bank changed or the index type cannot delete.")
@quiet_option
@library_errors
def index(normaliser: str, gallery_emb: str | None, out: str, factory: str,
          overwrite: bool, follow: str | None, quiet: bool) -> None:
    """Build a faiss index serving NORMALISER's scores over the gallery."""
    import time

    from qbscale.errors import StoreExistsError
    from qbscale.retrieval.faiss_index import FaissSearch
    from qbscale.storage.durability.paths import check_not_input

    check_output_file(out)
    check_not_input(out, (normaliser, gallery_emb, follow))
    if os.path.lexists(out):
        if not overwrite:
            raise StoreExistsError(f"{out} exists: pass --overwrite to replace it")
        from qbscale.retrieval.faiss_index import check_replaceable

        check_replaceable(out)
    norm = load_normaliser(normaliser)
    t0 = time.perf_counter()
    if follow is not None:
        from qbscale.retrieval.faiss_follow import follow_file

        built, how = follow_file(follow, norm)
        built.save(out, overwrite=overwrite)
        click.echo(f"Wrote {out}: {follow} {how} for {normaliser}, {built.index.ntotal} "
                   f"items, in {time.perf_counter() - t0:.1f} s")
        return
    gallery = gallery_emb or _recorded_gallery(norm)
    built = FaissSearch.build(norm, gallery, factory)
    built.save(out, overwrite=overwrite)
    click.echo(f"Wrote {out}: faiss {factory} over {built.index.ntotal} items, dimension "
               f"{built.dim} + {len(norm.values)} in {time.perf_counter() - t0:.1f} s")
