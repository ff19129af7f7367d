"""What is at a path, before anything is read from or written to it.

* :func:`check_regular` refuses an input that is not a regular file (a FIFO,
  a socket, a device, a directory where a file is expected): reading one
  would block forever or read without end.
* :func:`check_replaceable` lets ``--overwrite`` replace only an output of the
  same kind (an experiment store by ``ingest``, a normaliser by ``fit``).
* :func:`check_not_input` refuses an output that is, holds or lies inside one
  of the command's inputs.
* :func:`enclosing_store` finds the qbscale store or normaliser a path lies in.
* :func:`check_output` is the one check every output path of every command goes
  through: never an input, never inside any store or normaliser, an existing
  directory replaced only with ``--overwrite`` and only by its own kind.

>>> describe_kind(b'{"attributes": {"qbscale_normaliser": {}}}')
'normaliser'
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from qbscale.errors import ConfigError, InputError, StoreExistsError
from qbscale.storage.durability.lock import KEY as LOCK

#: kind -> the group attribute that marks it
KINDS = {"experiment store": "qbscale", "normaliser": "qbscale_normaliser"}
#: the file that marks a folder written by ``qbscale report`` (replaceable by one)
REPORT_MARKER = "qbscale-report.json"
#: output kinds that are folders (the rest are files)
FOLDER_KINDS = ("experiment store", "normaliser", "report")
_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISDIR, "a directory"))


def file_type(mode: int) -> str:
    """``"a FIFO"``, ``"a socket"``, ... for a non-regular ``st_mode`` (else ``"a file"``)."""
    return next((name for test, name in _SPECIAL if test(mode)), "a file")


def check_regular(path: str | os.PathLike[str], dir_ok: bool = False) -> None:
    """Refuse an existing input ``path`` that is not a regular file (nor, with
    ``dir_ok``, a directory), before anything opens it.

    Raises
    ------
    InputError
        ``input x.pkl is not a regular file (a FIFO)``.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the reader says so
    if stat.S_ISREG(mode) or (dir_ok and stat.S_ISDIR(mode)):
        return
    raise InputError(f"input {os.fspath(path)} is not a regular file ({file_type(mode)})")


def describe_kind(meta: bytes) -> str | None:
    """The qbscale kind of a group from its ``zarr.json`` (None: not qbscale's)."""
    try:
        attrs = json.loads(meta).get("attributes") or {}
    except (ValueError, AttributeError):
        return None
    if not isinstance(attrs, dict):
        return None
    return next((kind for kind, key in KINDS.items() if key in attrs), None)


def what_is(path: Path) -> str:
    """What an existing local ``path`` is, for messages and :func:`check_replaceable`."""
    if not path.is_dir():
        return file_type(os.stat(path).st_mode) if path.exists() else "a dangling link"
    meta = path / "zarr.json"
    if not meta.is_file() and (path / REPORT_MARKER).is_file():
        return "a qbscale report"
    if not meta.is_file():  # (the lock of a writer replacing it leaves it empty)
        return "a directory that is not a qbscale store" if any(
            p.name != LOCK for p in path.iterdir()) else "an empty directory"
    kind = describe_kind(meta.read_bytes())
    if kind is not None:
        return f"a qbscale {kind}"
    return "a Zarr group that is not a qbscale store" if b'"group"' in meta.read_bytes() \
        else "a Zarr node that is not a qbscale store"


def check_replaceable(path: Path, kind: str, shown: str | None = None) -> None:
    """Refuse to replace ``path`` unless it is an empty directory or a qbscale ``kind``.

    Raises
    ------
    StoreExistsError
        ``exp.zarr exists and is a qbscale experiment store, not a normaliser:
        not replacing it`` (likewise for a file, a FIFO, another directory).
    """
    what = what_is(path)
    if what in ("an empty directory", f"a qbscale {kind}"):
        return
    article = "an" if kind[0] in "aeiou" else "a"
    raise StoreExistsError(f"{shown or path} exists and is {what}, not {article} {kind}: "
                           "not replacing it")


def _local(path: str | os.PathLike[str]) -> Path | None:
    from qbscale.storage.layout import is_url, local_path

    text = os.fspath(path)
    if is_url(text):
        return None
    base = local_path(text)
    if ".npz:" in base:  # file.npz:member
        base = base.rsplit(":", 1)[0]
    return Path(os.path.realpath(base))


def check_not_input(out: str | os.PathLike[str], inputs: Iterable[object],
                    role: str = "input") -> None:
    """Refuse an output that is an input, holds one, or lies inside one.

    ``inputs`` may hold paths, URLs, arrays or None (only local paths count);
    ``role`` names them in the message (``"input"``, ``"output"``).

    Raises
    ------
    ConfigError
        ``output exp.zarr is the input exp.zarr: write elsewhere``.
    """
    target = _local(out)
    if target is None:
        return
    for given in inputs:
        if not isinstance(given, str | os.PathLike):
            continue
        source = _local(given)
        if source is None:
            continue
        if source == target:
            how = "is"
        elif target in source.parents:
            how = "holds"
        elif source in target.parents:
            how = "lies inside"
        else:
            continue
        if role == "input":
            raise ConfigError(f"output {os.fspath(out)} {how} the input {os.fspath(given)}: "
                              "an output never replaces an input; write elsewhere")
        if how == "is":
            raise ConfigError(f"{os.fspath(out)} is given for two outputs: give each "
                              "output its own path")
        raise ConfigError(f"output {os.fspath(out)} {how} the {role} {os.fspath(given)}: "
                          "give each output its own path")


def enclosing_store(path: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """The qbscale store or normaliser that local ``path`` lies inside, and its kind
    (None: none).  Symlinks and ``..`` are resolved first; ``path`` itself does
    not count (replacing a whole store is :func:`check_replaceable`'s question).

    >>> enclosing_store("/") is None
    True
    """
    target = _local(path)
    if target is None:
        return None
    for parent in target.parents:
        meta = parent / "zarr.json"
        try:
            kind = describe_kind(meta.read_bytes()) if meta.is_file() else None
        except OSError:
            continue
        if kind is not None:
            return parent, kind
    return None


def check_output(out: str | os.PathLike[str], kind: str, inputs: Iterable[object] = (),
                 overwrite: bool = False, others: Iterable[object] = ()) -> None:
    """The check of every output path, before any work: refuse ``out`` when it

    * is, holds or lies inside one of ``inputs`` (stores, normalisers, input
      files; symlinks and ``..`` resolved), or one of the command's ``others``
      outputs;
    * lies inside any qbscale store or normaliser, an input or not
      (:func:`enclosing_store`): only qbscale's writers write there;
    * is an existing folder (``kind`` in :data:`FOLDER_KINDS`) that is not empty,
      unless ``overwrite`` is given and it holds an output of the same ``kind``
      (a store, a normaliser, a report folder carrying :data:`REPORT_MARKER`);
    * exists and is a folder or another non-regular file where ``kind`` is a file.

    URLs are left to the writers (they refuse what exists without ``overwrite``).

    Raises
    ------
    ConfigError
        ``output exp.zarr/zarr.json lies inside the input exp.zarr: ...``.
    StoreExistsError
        ``rep exists: pass --overwrite to replace it``; ``rep exists and is a
        directory that is not a qbscale store, not a report: not replacing it``.
    """
    target = _local(out)
    if target is None:
        return
    shown = os.fspath(out)
    check_not_input(out, inputs)
    check_not_input(out, others, "output")
    found = enclosing_store(out)
    if found is not None:
        root, what = found
        raise ConfigError(f"output {shown} lies inside the qbscale {what} {root}: only "
                          f"qbscale writes there, and an output never goes inside a store "
                          "or a normaliser; write elsewhere")
    from qbscale.storage.layout import local_path

    path = Path(local_path(shown))  # (a file:// URL as its path; symlinks kept)
    if not (path.exists() or path.is_symlink()):
        return
    if kind not in FOLDER_KINDS:
        if path.exists() and not path.is_file():
            raise StoreExistsError(f"output {shown} exists and is not a regular file "
                                   f"({what_is(path)}): not replacing it")
        return
    what = what_is(path)
    if not path.is_dir():
        raise StoreExistsError(f"cannot write into {shown}: it exists and is {what}, "
                               "not a directory")
    if what == "an empty directory":
        return
    check_replaceable(path, kind, shown)  # another kind: never, --overwrite or not
    if not overwrite:
        raise StoreExistsError(f"{shown} exists: pass --overwrite to replace it")


#: the packages fsspec needs per protocol, and the qbscale extra installing each
FILESYSTEMS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", None),
               "gcs": ("gcsfs", None), "az": ("adlfs", None), "abfs": ("adlfs", None),
               "abfss": ("adlfs", None)}


def install_hint(package: str, extra: str | None = None) -> str:
    """How to install an optional package, as every missing extra is reported.

    >>> install_hint("s3fs", "s3")
    "pip install s3fs (or, in a qbscale clone, pip install '.[s3]')"
    """
    return f"pip install {package}" + (
        f" (or, in a qbscale clone, pip install '.[{extra}]')" if extra else "")


def check_filesystem(url: str | os.PathLike[str]) -> None:
    """Refuse, in one line, a URL whose storage needs a package that is not installed
    (``s3://`` without s3fs) or whose protocol fsspec does not know; local paths and
    ``file://`` pass.

    Raises
    ------
    ConfigError
        ``s3://bucket/exp.zarr needs s3fs, which is not installed: pip install s3fs
        (or, in a qbscale clone, pip install '.[s3]')``.
    """
    from qbscale.storage.layout import is_url

    text = os.fspath(url)
    if not is_url(text):
        return
    import fsspec

    protocol = text.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        package, extra = FILESYSTEMS.get(protocol, (None, None))
        if package is None:
            raise ConfigError(f"{text}: {protocol}:// storage needs a package that is not "
                              f"installed ({exc})") from None
        raise ConfigError(f"{text} needs {package}, which is not installed: "
                          f"{install_hint(package, extra)}") from None
    except ValueError:
        raise ConfigError(f"{text}: unknown storage protocol {protocol}://") from None
