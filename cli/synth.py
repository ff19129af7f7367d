"""``qbscale synth``: a synthetic, hubness-prone experiment store of any size."""

from __future__ import annotations

import time
from typing import Any

import click

from qbscale.storage import layout

from .options import (
    Command,
    OutputPath,
    check_json_output,
    library_errors,
    quiet_option,
    write_json,
)


@click.command(cls=Command)
@click.argument("out", metavar="OUT.zarr", type=OutputPath("experiment store"))
@click.option("--kind", type=click.Choice(layout.KINDS), default=layout.KIND_SIMS,
              show_default=True, help="Similarity matrices, or embeddings (cosine).")
@click.option("--bank", "n_bank", type=click.IntRange(min=1), required=True,
              help="Querybank queries.")
@click.option("--test", "n_test", type=click.IntRange(min=1), required=True,
              help="Test queries.")
@click.option("--gallery", "n_gallery", type=click.IntRange(min=1), required=True,
              help="Gallery items.")
@click.option("--dim", type=click.IntRange(min=1), default=384, show_default=True,
              help="Embedding dimension.")
@click.option("--queries-per-item", type=click.IntRange(min=1), default=1, show_default=True,
              help="Test query i belongs to gallery item i // N.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--dtype", type=click.Choice(layout.DTYPES),
              default="float32", show_default=True, help="Stored float type.")
@click.option("--chunk-mb", type=click.FloatRange(min=0, min_open=True),
              help="Target size of a stored chunk, MiB [default: 64 for sims, 4 for "
                   "embeddings].")
@click.option("--chunk-rows", type=click.IntRange(min=1), help="Rows per chunk.")
@click.option("--chunk-cols", type=click.IntRange(min=1),
              help="Columns per chunk (sims only; default: whole rows).")
@click.option("--codec", type=click.Choice(layout.CODECS), default=layout.CODECS[0],
              show_default=True, help="Chunk compression.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--query-noise", type=click.FloatRange(min=0), default=4.5, show_default=True,
              help="A query's distance from its item (relative norm): lower is easier.")
@click.option("--hub-share", type=click.FloatRange(min=0), default=0.25, show_default=True,
              help="Scale of an item's heavy-tailed lean towards a popular direction (hubs).")
@click.option("--query-lean", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="How much every query leans towards the popular directions.")
@click.option("--json", "json_path", type=OutputPath("JSON file"),
              help="Write what was stored (arrays, shapes, chunks) as JSON.")
@quiet_option
@library_errors
def synth(out: str, kind: str, n_bank: int, n_test: int, n_gallery: int, dim: int,
          queries_per_item: int, seed: int, dtype: str, chunk_mb: float | None,
          chunk_rows: int | None, chunk_cols: int | None, codec: str, overwrite: bool,
          json_path: str | None, quiet: bool, query_noise: float, hub_share: float,
          query_lean: float) -> None:
    """Write a synthetic experiment store OUT.zarr, chunk by chunk.

    Gallery items sit on clusters and lean, by heavy-tailed amounts, towards a
    few directions every query leans to (hubs); a test query is its item plus
    noise.  Vectors are unit length: similarities are cosines.
    """
    from qbscale.synth import SynthSpec
    from qbscale.synth import synth as write

    check_json_output(json_path, (out,))
    spec = SynthSpec(n_bank, n_test, n_gallery, dim, queries_per_item, seed,
                     query_noise=query_noise, hub_share=hub_share, query_lean=query_lean)
    chunk_bytes = None if chunk_mb is None else max(1, int(chunk_mb * 2**20))
    options: dict[str, Any] = dict(dtype=dtype, chunk_bytes=chunk_bytes,
                                   chunk_rows=chunk_rows, chunk_cols=chunk_cols, codec=codec,
                                   overwrite=overwrite, progress=not quiet)
    start = time.perf_counter()
    path = write(out, spec, kind, **options)
    seconds = time.perf_counter() - start
    click.echo(_summary(path, seconds))
    if json_path:
        from dataclasses import asdict

        from .ingest import arrays

        write_json(json_path, "synth", {"store": path, "mode": kind, "seconds": seconds,
                                        "spec": asdict(spec), "arrays": arrays(path)})


def _summary(path: str, seconds: float) -> str:
    import zarr

    group = zarr.open_group(path, mode="r")
    stored = sorted(group.arrays())
    parts = [f"{name} {' x '.join(map(str, arr.shape))} {arr.dtype} in chunks "
             f"of {' x '.join(map(str, arr.chunks))}" for name, arr in stored]
    size = sum(arr.nbytes for _, arr in stored)
    return f"Wrote {path} in {seconds:.1f} s: {'; '.join(parts)}; {size / 2**30:.2f} GiB."
