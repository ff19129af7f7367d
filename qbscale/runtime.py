"""What the environment says about how this process computes (no computing here).

* ``QBSCALE_KERNEL``: ``numpy`` runs the bank's logsumexp by numpy passes
  instead of the fused numba kernel (:mod:`qbscale.engine.fused`), which is
  the default wherever numba imports.  Worker processes inherit it.
* Where numba caches its compiled kernels on disk (:func:`numba_cache_dir`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qbscale.errors import ConfigError

#: the environment variable choosing the bank kernel
KERNEL_ENV = "QBSCALE_KERNEL"
#: its values
KERNELS = ("fused", "numpy")


def kernel_choice() -> str | None:
    """``QBSCALE_KERNEL`` (``"fused"`` or ``"numpy"``), None when unset.

    Raises
    ------
    ConfigError
        For any other value.
    """
    value = os.environ.get(KERNEL_ENV, "").strip().lower()
    if not value:
        return None
    if value not in KERNELS:
        raise ConfigError(f"{KERNEL_ENV}={value!r}: expected one of {', '.join(KERNELS)}")
    return value


def numba_cache_dir(package: Path | None = None) -> str | None:
    """Settle where numba's on-disk cache goes; call before numba is imported.

    ``NUMBA_CACHE_DIR`` when the user set it; else numba's own choice, the
    ``__pycache__`` beside the compiled module (``package``: qbscale's engine),
    when it is writable; else (a read-only install) a per-user directory
    under the system's temporary directory, given to numba (and to worker
    processes) through ``NUMBA_CACHE_DIR``.

    Returns
    -------
    str or None
        The directory set here, or None when it was left to the user or numba.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    here = package or Path(__file__).resolve().parent / "engine"
    pycache = here / "__pycache__"
    if os.access(pycache if pycache.exists() else here, os.W_OK):
        return None
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    path = Path(tempfile.gettempdir()) / f"qbscale-numba-{uid}"
    path.mkdir(mode=0o700, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    return str(path)
