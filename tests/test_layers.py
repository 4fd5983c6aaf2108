"""The shape of the tree: one package per layer, imports that only point down, no cycles, no private names.

The layer order is stated here and in docs/architecture.md, bottom first.  A
module may import modules of its own layer and of the layers below it,
never one above.  Between files there is no import cycle anywhere in
`pyfs/`, `TYPE_CHECKING` imports included (a cycle hidden from the
interpreter is still a cycle for the reader).  No module uses a name
beginning with `_` that another module defines: not by importing it, not
as an attribute of another module or of an object (`fs._inode(...)`).
Every check reads the sources with `ast`; nothing is imported.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pyfs"

# Bottom first.  `pyfs/__init__.py` and `pyfs/__main__.py` stand above them all.
LAYERS = ["format", "engine", "fs", "fsck", "mount", "client", "cli"]
TOP = len(LAYERS)

# Third-party libraries only some layers may use.
RESTRICTED = {"pyfuse3": {"mount"}}

# Underscore names that are public API of the standard library (namedtuple's methods, os._exit).
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_exit"}


@dataclass
class Module:
    name: str          # dotted, e.g. "pyfs.fs.rename"
    is_package: bool   # an __init__.py
    tree: ast.Module
    imports: list[tuple[str, int]] = field(default_factory=list)  # (module imported, line)


def load(root: Path, sources: dict[str, str] | None = None) -> dict[str, Module]:
    """The modules below `root` (or the given {relative path: source} instead), parsed."""
    if sources is None:
        sources = {str(p.relative_to(root.parent)): p.read_text() for p in sorted(root.rglob("*.py"))}
    modules = {}
    for rel, text in sources.items():
        parts = rel[:-3].split(os.sep)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        mod = Module(".".join(parts), is_package, ast.parse(text, rel))
        modules[mod.name] = mod
    for mod in modules.values():
        mod.imports = list(_imports(mod, modules))
    return modules


def _imports(mod: Module, modules: dict[str, Module]):
    base = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pyfs" or alias.name in RESTRICTED:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] in RESTRICTED:
                yield target, node.lineno
                continue
            if target.split(".")[0] != "pyfs":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in modules else target), node.lineno


def layer_of(name: str) -> int:
    parts = name.split(".")
    if len(parts) < 2 or parts[1] in ("__main__",):
        return TOP
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -1


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected groups of more than one module (or a module importing itself)."""
    graph = {name: sorted({t for t, _ in m.imports if t in modules}) for name, m in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph[v]:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports(modules: dict[str, Module]) -> list[str]:
    out = []
    for name, mod in sorted(modules.items()):
        here = layer_of(name)
        for target, line in mod.imports:
            lib = target.split(".")[0]
            if lib in RESTRICTED:
                if name.split(".")[1] not in RESTRICTED[lib]:
                    out.append(f"{name}:{line} imports {lib}, which only {sorted(RESTRICTED[lib])} may use")
                continue
            there = layer_of(target)
            if target == "pyfs" or (there > here and there != -1):
                out.append(f"{name}:{line} imports {target}, a layer above it")
    return out


def _defined_names(tree: ast.Module) -> set[str]:
    """Every name a module defines: functions, classes, assigned names and attributes, parameters."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)  # dataclass fields set through replace(...) or a constructor
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(modules: dict[str, Module]) -> list[str]:
    out = []
    for name, mod in sorted(modules.items()):
        own = _defined_names(mod.tree)
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if _private(alias.name):
                        out.append(f"{name}:{node.lineno} imports {alias.name} from {node.module or '.'}")
            elif isinstance(node, ast.Attribute) and _private(node.attr):
                if node.attr in own or node.attr in PUBLIC_UNDERSCORE:
                    continue
                out.append(f"{name}:{node.lineno} uses {node.attr}, private to another module")
    return out


def stray_top_level(root: Path) -> list[str]:
    allowed = {"__init__.py", "__main__.py", "__pycache__", *LAYERS}
    return sorted(p.name for p in root.iterdir() if p.name not in allowed)


# -- the tree as it is --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree() -> dict[str, Module]:
    return load(PACKAGE)


def test_the_top_level_package_holds_only_the_layer_packages():
    assert stray_top_level(PACKAGE) == []
    for layer in LAYERS:
        assert (PACKAGE / layer / "__init__.py").is_file(), layer


def test_every_module_belongs_to_a_declared_layer(tree):
    assert [name for name in tree if layer_of(name) == -1] == []


def test_no_files_import_each_other_in_a_cycle(tree):
    assert cycles(tree) == []


def test_no_import_points_up_the_layer_order(tree):
    assert upward_imports(tree) == []


def test_no_module_uses_a_name_private_to_another_module(tree):
    assert private_uses(tree) == []


# -- the checks themselves catch what they are for ------------------------------------------


def _fake(sources: dict[str, str]) -> dict[str, Module]:
    return load(PACKAGE, {os.path.join(*k.split("/")): v for k, v in sources.items()})


def test_a_cycle_through_a_type_checking_import_is_found():
    mods = _fake({
        "pyfs/fs/__init__.py": "",
        "pyfs/fs/a.py": "from . import b\n",
        "pyfs/fs/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import thing\n",
        "pyfs/fs/c.py": "from .a import thing\n",
    })
    assert cycles(mods) == [["pyfs.fs.a", "pyfs.fs.b"]]


def test_an_import_of_a_higher_layer_and_fuse_outside_mount_are_found():
    mods = _fake({
        "pyfs/engine/__init__.py": "",
        "pyfs/engine/e.py": "from ..fs.filesystem import FileSystem\nfrom ..format.keys import encode_key\n",
        "pyfs/fs/__init__.py": "",
        "pyfs/fs/filesystem.py": "import pyfuse3\nfrom ..engine import e\n",
        "pyfs/format/__init__.py": "",
        "pyfs/format/keys.py": "",
    })
    assert upward_imports(mods) == [
        "pyfs.engine.e:1 imports pyfs.fs.filesystem, a layer above it",
        "pyfs.fs.filesystem:1 imports pyfuse3, which only ['mount'] may use",
    ]


def test_private_names_of_other_modules_are_found_but_own_ones_are_not():
    mods = _fake({
        "pyfs/fs/__init__.py": "",
        "pyfs/fs/a.py": (
            "from .b import _helper\n"
            "class A:\n"
            "    def __init__(self):\n"
            "        self._mine = 1\n"
            "    def f(self, other, fs):\n"
            "        return other._mine + fs._inode(1) + self.__class__.__name__\n"
        ),
        "pyfs/fs/b.py": "def _helper(): pass\n",
    })
    assert private_uses(mods) == [
        "pyfs.fs.a:1 imports _helper from b",
        "pyfs.fs.a:6 uses _inode, private to another module",
    ]
