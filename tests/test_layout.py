"""The package's layering and its privacy rule, read from the source with ``ast``.

- Layers: binarize -> voter -> packed -> nn -> models -> data, train -> experiments -> engine / gpu /
  hw / export -> cli. A module never imports from a layer above its own.
- Private means private: no module imports a leading-underscore name from another module, and
  no test imports one (a private *module*, such as the fusion switch, is tested under its own
  name; its private helpers are not imported).
"""

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "bitvote"

#: each top-level part of the package and the parts it may not import
ABOVE = {
    "binarize": {"voter", "packed", "nn", "models", "data", "train", "experiments", "engine", "gpu", "hw", "export", "cli"},
    "voter": {"packed", "nn", "models", "data", "train", "experiments", "engine", "gpu", "hw", "export", "cli"},
    "packed": {"nn", "models", "data", "train", "experiments", "engine", "gpu", "hw", "export", "cli"},
    "nn": {"models", "data", "train", "experiments", "engine", "gpu", "hw", "export", "cli"},
    "models": {"data", "train", "experiments", "engine", "gpu", "hw", "export", "cli"},
    "data": {"train", "experiments", "engine", "gpu", "hw", "export", "cli"},
    "io": {"packed", "nn", "models", "data", "train", "experiments", "engine", "gpu", "hw", "export", "cli"},
    "native": {"binarize", "voter", "packed", "nn", "models", "data", "train", "experiments", "engine", "gpu", "hw", "export",
               "cli"},
    "train": {"experiments", "engine", "gpu", "hw", "export", "cli"},
    "experiments": {"engine", "gpu", "hw", "export", "cli"},
    "engine": {"cli"},
    "gpu": {"cli"},
    "hw": {"cli"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, package: str):
    """``(absolute module, imported names, line)`` of every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            yield mod, [a.name for a in node.names], node.lineno


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _private_imports(path: Path, package: str, own: str):
    bad = []
    for mod, names, line in _imports(path, package):
        if mod == "__future__":
            continue
        parts = mod.split(".")
        if any(p.startswith("_") and not p.startswith("__") for p in parts) and mod.startswith("bitvote") \
                and not _is_module(mod):
            bad.append(f"{path.name}:{line}: {mod}")
        for n in names:
            if n.startswith("_") and not n.startswith("__") and mod != own and not _is_module(f"{mod}.{n}"):
                bad.append(f"{path.name}:{line}: from {mod} import {n}")
    return bad


def test_no_test_imports_a_private_name():
    bad = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        bad += _private_imports(path, "", path.stem)
    assert not bad, "tests import private names:\n" + "\n".join(bad)


SOURCES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_import_runs_up_the_layers(path):
    name = _module_name(path)
    part = name.split(".")[1] if "." in name else ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    forbidden = ABOVE.get(part, set())
    bad = [f"line {line}: {mod}" for mod, _, line in _imports(path, package)
           if mod.startswith("bitvote.") and mod.split(".")[1] in forbidden]
    assert not bad, f"{name} imports from a layer above it: {bad}"


def test_train_does_not_import_experiments():
    """The former cycle (the demo in train, importing reproduce, importing train) is gone."""
    for path in (PKG / "train").glob("*.py"):
        mods = [m for m, _, _ in _imports(path, "bitvote.train")]
        assert not any(m.startswith("bitvote.experiments") for m in mods), path.name


def test_no_module_imports_a_private_name():
    """What another module needs has a public name; an underscore stays inside its module."""
    bad = []
    for path in SOURCES:
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        bad += _private_imports(path, package, name)
    assert not bad, "modules import private names:\n" + "\n".join(bad)


def _module_graph():
    """``{module: modules it imports}`` over the package, function-level imports included
    (``from . import x`` counts as importing module ``x`` when ``x`` is one)."""
    mods = {_module_name(p): p for p in SOURCES}
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out = set()
        for mod, names, _ in _imports(path, package):
            if not mod.startswith("bitvote"):
                continue
            subs = {f"{mod}.{n}" for n in names} & mods.keys()
            out |= subs or ({mod} & mods.keys())
        out.discard(name)
        graph[name] = out
    return graph


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_two_modules_import_each_other():
    """Imports flow one way between modules too, lazy ones included: a function-level import
    that closes a circle hides a layering mistake rather than fixing it."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the detector works
    assert not _cycles(_module_graph())
