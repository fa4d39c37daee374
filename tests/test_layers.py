"""The package's layers import only the layers below them (README, Layout): a module never
imports from a layer above its own, lazily or not; and every import of the package resolves,
the lazy ones that only a GPU run or a host model reaches included; no module is longer than
700 lines."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "pairformer_fb"
ORDER = ["kernel", "modules", "data", "hosts", "patching", "convert", "bench"]
LEAVES = {"cli", "_version"}  # imported by any layer, import none


def _imports(path: Path) -> set[str]:
    """The top-level packages of pairformer_fb that ``path`` imports (relative imports)."""
    rel = path.relative_to(ROOT).parts[:-1]
    found = set()
    for dots, mod in re.findall(r"^\s*from (\.+)([\w.]*) import", path.read_text(), re.M):
        base = list(rel[: len(rel) - (len(dots) - 1)])
        target = base + [m for m in mod.split(".") if m]
        if target:
            found.add(target[0])
    return found


def test_layers_import_only_downward():
    bad = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if len(parts) == 1:
            continue  # the package root re-exports the public API
        layer = parts[0]
        for target in _imports(path) - {layer}:
            if target in LEAVES:
                continue
            if target not in ORDER or ORDER.index(target) > ORDER.index(layer):
                bad.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not bad, "\n".join(sorted(bad))


def test_the_leaves_import_no_layer():
    for name in LEAVES:
        assert not (_imports(ROOT / f"{name}.py") & set(ORDER)), name


def _every_import(path: Path, package_root: Path):
    """(line, module, names) of every import of pairformer_fb in ``path``, lazy ones inside
    functions included, relative imports resolved against the file's package."""
    import ast

    tree = ast.parse(path.read_text())
    try:
        pkg = list(path.relative_to(package_root.parent).parts[:-1])  # e.g. [pairformer_fb, hosts]
    except ValueError:
        pkg = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "pairformer_fb":
                yield node.lineno, module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "pairformer_fb":
                    yield node.lineno, a.name, []


def test_every_import_of_the_package_resolves():
    """Every ``from pairformer_fb... import name`` in the package, scripts and tests resolves,
    also the lazy imports inside functions that only a GPU run or a host model reaches (a moved
    module would otherwise break them unnoticed on a CPU)."""
    import importlib
    import importlib.util

    repo = ROOT.parent
    files = [*ROOT.rglob("*.py"), *(repo / "scripts").glob("*.py"), *(repo / "tests").glob("*.py")]
    files += (repo / "benchmarks" / "scripts" / "session6").glob("*.py")  # the next device calls' scripts
    bad = []
    for path in files:
        for line, module, names in _every_import(path, ROOT):
            where = f"{path.relative_to(repo)}:{line}"
            if importlib.util.find_spec(module) is None:
                bad.append(f"{where}: no module {module}")
                continue
            mod = importlib.import_module(module)
            for name in names:
                if name != "*" and not hasattr(mod, name) and importlib.util.find_spec(f"{module}.{name}") is None:
                    bad.append(f"{where}: {module} has no {name}")
    assert not bad, "\n".join(bad)


MAX_MODULE_LINES = 700  # issue 15: a module a newcomer can read; split a longer one by concern


def test_no_module_is_longer_than_the_limit():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    assert lengths and not {p: n for p, n in lengths.items() if n > MAX_MODULE_LINES}
