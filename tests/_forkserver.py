"""Imports qbscale's command line once, then forks a child per command (tests/test_faults.py).

Started as ``python _forkserver.py SHIM.so`` with the shim preloaded and dormant.
Requests are JSON lines on stdin, replies JSON lines on stdout:

* ``{"op": "run", "argv": [...], "cwd": ..., "stdout": FILE, "stderr": FILE,
  "fault": {"dir", "mode", "at", "sleep_us", "slow_writes"} or null}`` -> ``{"pid": N}``:
  the child configures the shim, then runs ``qbscale.cli.main(argv)`` and exits the
  way the ``qbscale`` script does (an uncaught exception: a traceback and exit 1);
* ``{"op": "poll", "pid": N}`` -> ``{"code": C}``: C is null while the child runs,
  negative when a signal killed it.

A child is an interpreter with the imports done, no more: saving ~0.7 s of CPU per
command on a shared machine.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys


def _child(request: dict, shim: ctypes.CDLL) -> None:
    os.chdir(request["cwd"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    fault = request.get("fault")
    if fault:
        shim.qbf_configure(fault["dir"].encode(), fault["mode"].encode(),
                           ctypes.c_longlong(fault.get("at", -1)),
                           ctypes.c_long(fault.get("sleep_us", 0)),
                           ctypes.c_long(fault.get("slow_writes", 40)))
    sys.argv = ["qbscale", *request["argv"]]
    from qbscale.cli import main

    main(request["argv"])
    sys.exit(0)


def serve() -> None:
    shim = ctypes.CDLL(sys.argv[1])  # preloaded already: the same library
    import dask.array  # noqa: F401  (what every command imports)
    import faiss  # noqa: F401
    import matplotlib
    import pyarrow.parquet  # noqa: F401

    matplotlib.use("Agg")  # as qbscale's drawing functions do before pyplot
    import matplotlib.pyplot
    import zarr  # noqa: F401

    import qbscale.cli  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "run":
            pid = os.fork()
            if pid == 0:
                _child(request, shim)  # never returns: it exits
            reply = {"pid": pid}
        else:
            pid, status = os.waitpid(request["pid"], os.WNOHANG)
            reply = {"code": os.waitstatus_to_exitcode(status) if pid else None}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
