"""Helpers shared by the ingest tests: writing inputs in every supported format."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: the real pycode data (absent on some machines: tests using it skip)
SHARED_DATA = (ROOT / "../shared/data").resolve()
#: the benchmark beside the repository, else the copy shipped in examples/
PYCODE = SHARED_DATA / "pycode" if (SHARED_DATA / "pycode").is_dir() else \
    ROOT / "examples" / "data" / "pycode"
MAKE_PICKLES = SHARED_DATA / "make_pickles.py"


def write_pickle(arr: np.ndarray, path: Path, legacy: bool = False, protocol: int = 4) -> Path:
    """Pickle ``arr`` as numpy 2 does, or (``legacy``) as numpy 1.x did.

    The legacy form is what ``make_pickles.py --legacy`` writes: protocol 3,
    naming ``numpy.core.multiarray``.
    """
    if legacy:
        blob = pickle.dumps(arr, protocol=3)
        blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"numpy.core.multiarray" in blob
    else:
        blob = pickle.dumps(arr, protocol=protocol)
    path.write_bytes(blob)
    return path


def write_npz(path: Path, compressed: bool = False, **arrays: np.ndarray) -> Path:
    """``np.savez`` / ``np.savez_compressed`` of named arrays."""
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def npz_member_compression(path: Path) -> set[int]:
    with zipfile.ZipFile(path) as zf:
        return {info.compress_type for info in zf.infolist()}


def sims(rng: np.random.Generator, rows: int, cols: int, dtype: str = "float32") -> np.ndarray:
    """A random similarity matrix with a little structure."""
    return rng.uniform(-1, 1, size=(rows, cols)).astype(dtype)


def pickle_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    pickle.dump(obj, buf, protocol=4)
    return buf.getvalue()
