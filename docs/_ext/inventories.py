"""Intersphinx inventories of the numpy, dask, xarray and zarr names these pages link.

The documentation builds without network (CI reaches no documentation site),
so instead of fetching each project's ``objects.inv`` at build time, this
writes small inventories in Sphinx's own format (version 2) listing the
targets the API reference links, with their addresses on each project's
site.  ``conf.py`` points ``intersphinx_mapping`` at them.  A name added to a
docstring's types that should link goes in :data:`TARGETS` (and in
``numpydoc_xref_aliases``).
"""

from __future__ import annotations

import zlib
from pathlib import Path

#: project -> (base URL, [(name, role, page#anchor)])
TARGETS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    # with the builtins numpydoc links by default (numpydoc.xref.DEFAULT_LINKS)
    "python": ("https://docs.python.org/3/", [
        ("os.PathLike", "py:class", "library/os.html#os.PathLike"),
        ("pathlib.Path", "py:class", "library/pathlib.html#pathlib.Path"),
        ("None", "py:data", "library/constants.html#None"),
        ("True", "py:data", "library/constants.html#True"),
        ("False", "py:data", "library/constants.html#False"),
        ("str", "py:class", "library/stdtypes.html#str"),
        ("int", "py:class", "library/functions.html#int"),
        ("float", "py:class", "library/functions.html#float"),
        ("list", "py:class", "library/stdtypes.html#list"),
        ("tuple", "py:class", "library/stdtypes.html#tuple"),
        ("dict", "py:class", "library/stdtypes.html#dict"),
        ("callable", "py:function", "library/functions.html#callable"),
        ("bltin-boolean-values", "std:label", "library/stdtypes.html#boolean-type-bool"),
        ("sequence", "std:term", "glossary.html#term-sequence"),
        ("iterable", "std:term", "glossary.html#term-iterable"),
    ]),
    "numpy": ("https://numpy.org/doc/stable/", [
        ("array_like", "std:term", "glossary.html#term-array_like"),
        ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html#numpy.ndarray"),
        ("numpy.random.default_rng", "py:function",
         "reference/random/generator.html#numpy.random.default_rng"),
        ("numpy.load", "py:function", "reference/generated/numpy.load.html#numpy.load"),
    ]),
    "dask": ("https://docs.dask.org/en/stable/", [
        ("dask.array.Array", "py:class", "generated/dask.array.Array.html#dask.array.Array"),
        ("dask.array.from_zarr", "py:function",
         "generated/dask.array.from_zarr.html#dask.array.from_zarr"),
    ]),
    "distributed": ("https://distributed.dask.org/en/stable/", [
        ("distributed.Client", "py:class", "api.html#distributed.Client"),
        ("distributed.LocalCluster", "py:class", "api.html#distributed.LocalCluster"),
    ]),
    "xarray": ("https://docs.xarray.dev/en/stable/", [
        ("xarray.DataArray", "py:class", "generated/xarray.DataArray.html#xarray.DataArray"),
        ("xarray.Dataset", "py:class", "generated/xarray.Dataset.html#xarray.Dataset"),
        ("xarray.open_zarr", "py:function", "generated/xarray.open_zarr.html#xarray.open_zarr"),
    ]),
    "zarr": ("https://zarr.readthedocs.io/en/v3.1.2/", [
        ("zarr.Array", "py:class", "api/zarr/index.html#zarr.Array"),
        ("zarr.Group", "py:class", "api/zarr/index.html#zarr.Group"),
        ("zarr.open_array", "py:function", "api/zarr/index.html#zarr.open_array"),
    ]),
}


def write(folder: Path) -> dict[str, tuple[str, str]]:
    """Write one ``<project>.inv`` per project; return ``intersphinx_mapping``."""
    folder.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for project, (url, entries) in TARGETS.items():
        header = (f"# Sphinx inventory version 2\n# Project: {project}\n# Version: \n"
                  "# The remainder of this file is compressed using zlib.\n").encode()
        body = "".join(f"{name} {role} {-1 if role == 'std:label' else 1} {uri} "
                       f"{'Boolean Type' if role == 'std:label' else '-'}\n"
                       for name, role, uri in entries).encode()
        path = folder / f"{project}.inv"
        data = header + zlib.compress(body)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        mapping[project] = (url, str(path))
    return mapping
