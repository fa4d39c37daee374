"""The package's layers import only the layers below them (README, Layout): a module never
imports from a layer above its own, lazily or not."""

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
