"""Removing what an interrupted writer left, within a time budget.

A store written in many small chunks holds thousands of files, and deleting
them can take as long as writing them did.  A process stopped by SIGTERM has
seconds before SIGKILL follows (SLURM, Kubernetes), so :func:`remove_tree`
deletes for at most ``budget`` seconds and hands what is left to a detached
``rm -rf`` that goes on after this process ends.  What it removes is only ever
a writer's own unpublished work (a hidden staging directory, a run's prefix
that no root points at): nothing of it looks complete meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import time
from typing import Any

#: seconds an interrupted writer spends deleting its leftovers before it hands
#: the rest to a detached process (SIGTERM's exit must not wait for a big tree)
INTERRUPTED_BUDGET = 0.75
#: the detached removers started (kept: a Popen collected while its process runs warns)
_DETACHED: list[Any] = []


def remove_tree(path: str | os.PathLike[str], budget: float | None = None) -> bool:
    """Delete the directory tree (or the file, or the link) at ``path``; gone is fine.

    Parameters
    ----------
    path : str or os.PathLike
        What to delete.
    budget : float, optional
        Seconds to spend at most; what is left then is deleted by a detached
        process.  None: delete everything here and now.

    Returns
    -------
    bool
        True when nothing is left at ``path`` on return.
    """
    path = os.fspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return not os.path.lexists(path)
    if budget is None:
        shutil.rmtree(path, ignore_errors=True)
        return not os.path.lexists(path)
    deadline = time.monotonic() + budget
    with contextlib.suppress(OSError):
        if _remove_until(path, deadline):
            return True
    if not os.path.lexists(path):
        return True
    remove_detached(path)
    return False


def _remove_until(path: str, deadline: float) -> bool:
    """Delete ``path``'s tree depth first until ``deadline``; True if all went."""
    for entry in os.scandir(path):
        if time.monotonic() > deadline:
            return False
        if entry.is_dir(follow_symlinks=False):
            if not _remove_until(entry.path, deadline):
                return False
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)
    return True


def remove_detached(path: str) -> None:
    """Start a process of its own session that deletes ``path`` and is not waited for."""
    rm = shutil.which("rm")
    argv = [rm, "-rf", "--", path] if rm else [
        sys.executable, "-c", "import shutil, sys; shutil.rmtree(sys.argv[1], True)", path]
    with contextlib.suppress(OSError):
        _DETACHED.append(subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True))


def remove_skeleton(root: str | os.PathLike[str]) -> None:
    """Delete what writes in flight made again where a store was deleted: empty
    directories and bare group metadata (the ``zarr.json`` of a group without
    attributes, which zarr makes for the missing parents of an array), nothing
    else, bottom up.  Nothing is done while ``root`` holds the metadata of a
    group with attributes (a store)."""
    root = os.fspath(root)
    if not os.path.isdir(root) or os.path.islink(root):
        return
    top = os.path.join(root, "zarr.json")
    if os.path.lexists(top) and not _bare_group(top):
        return
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            if name == "zarr.json" and _bare_group(os.path.join(folder, name)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
        with contextlib.suppress(OSError):  # refused while anything else is inside
            os.rmdir(folder)


def _bare_group(path: str) -> bool:
    """True for the metadata of a Zarr group without attributes."""
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("node_type") == "group" \
        and not meta.get("attributes")
