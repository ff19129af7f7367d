"""The package layout is the architecture: imports only go down, no cycles,
and the engine neither imports a storage library nor touches a file."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qbscale"

#: a module may import modules of its own layer or of lower layers only
LAYERS = {
    "core": 0,  # qbscale (root), errors, types, config, runtime, engine/*
    "executors": 1,
    "storage": 1,
    "api": 2,  # api, normaliser, search, synth and other top-level entry modules
    "analysis": 3,
}
#: imports that read or write files, or reach a store
STORAGE_LIBRARIES = ("zarr", "fsspec", "s3fs", "numcodecs", "os", "pathlib", "shutil", "io",
                     "tempfile", "pickle", "zipfile", "mmap")
FILE_CALLS = {"open", "fromfile", "tofile", "load", "save", "savez", "memmap", "read_text",
              "write_text", "read_bytes", "write_bytes", "loadtxt", "savetxt", "genfromtxt"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("errors", "types", "config", "runtime", "engine"):
        return "core"
    if parts[1] in ("executors", "storage", "analysis"):
        return parts[1]
    return "api"


class Imports(ast.NodeVisitor):
    """Every qbscale module and third-party top-level name a module imports,
    at any depth (inside functions too), except under ``if TYPE_CHECKING:``."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.internal: set[str] = set()
        self.external: set[str] = set()
        self.calls: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _add(self, name: str) -> None:
        if name == "qbscale" or name.startswith("qbscale."):
            self.internal.add(name)
        else:
            self.external.add(name.split(".")[0])

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".")
            base = base if self.is_package else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        if name.startswith("qbscale"):
            for alias in node.names:  # "from qbscale.engine import plan" names a module
                self.internal.add(f"{name}.{alias.name}")
            self.internal.add(name)
        else:
            self._add(name)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else (
            func.attr if isinstance(func, ast.Attribute) else "")
        self.calls.add(name)
        self.generic_visit(node)


def scan() -> dict[str, Imports]:
    modules = {}
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    for module, path in files.items():
        visitor = Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text()))
        # keep only names that are modules of the package (drop imported symbols)
        resolved = set()
        for name in visitor.internal:
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                resolved.add(name)
        visitor.internal = resolved - {"qbscale"}
        modules[module] = visitor
    return modules


MODULES = scan()


def test_no_import_cycles() -> None:
    graph = {m: v.internal for m, v in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module: str) -> None:
    here = LAYERS[layer(module)]
    upward = sorted(m for m in MODULES[module].internal if LAYERS[layer(m)] > here)
    assert upward == [], f"{module} ({layer(module)}) imports higher layers: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("qbscale.engine")))
def test_engine_touches_no_file(module: str) -> None:
    found = MODULES[module]
    assert sorted(found.external & set(STORAGE_LIBRARIES)) == []
    assert sorted(found.calls & FILE_CALLS) == []


def test_the_checks_see_what_they_look_for() -> None:
    """The scanner finds a function-level import, an upward import and a file call."""
    source = ("def f():\n    import zarr\n    from qbscale.api import run\n"
              "    return open('x')\n")
    visitor = Imports("qbscale.engine.example", False)
    visitor.visit(ast.parse(source))
    assert "zarr" in visitor.external and "open" in visitor.calls
    assert "qbscale.api" in visitor.internal and layer("qbscale.api") == "api"


#: storage's rooms: a module may import its own room, ``layout`` and lower rooms
ROOMS = {"layout": 0, "durability": 1, "inputs": 2, "stores": 3, "outputs": 4}


def room(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["qbscale", "storage"] or len(parts) < 3:
        return None
    return parts[2] if parts[2] in ROOMS else "unknown"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room(m)))
def test_storage_rooms_import_only_down(module: str) -> None:
    here = room(module)
    assert here != "unknown", f"{module} is in no room of qbscale/storage ({sorted(ROOMS)})"
    upward = sorted(m for m in MODULES[module].internal
                    if (r := room(m)) is not None and (r == "unknown" or ROOMS[r] > ROOMS[here]))
    assert upward == [], f"{module} ({here}) imports higher rooms: {upward}"


def test_every_storage_module_is_in_a_room() -> None:
    flat = sorted(p.name for p in (PACKAGE / "storage").glob("*.py")
                  if p.name not in ("__init__.py", "layout.py"))
    assert flat == [], f"modules outside the rooms of qbscale/storage: {flat}"
    assert room("qbscale.storage.stores.ingest") == "stores"
    assert room("qbscale.storage.hits") == "unknown"  # the check sees a module outside


def test_importing_qbscale_is_cheap() -> None:
    code = ("import sys, qbscale\n"
            "print(' '.join(m for m in ('dask', 'zarr', 'xarray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
