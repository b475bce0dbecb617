"""The package's layers: dependencies point one way (core <- training <- experiments/bench <- cli).

Every import in every module is read (top-level and inside functions), so a lazy import cannot hide a
dependency that points the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sparseflow

PKG = Path(sparseflow.__file__).resolve().parent
CORE_PACKAGES = ("methods",)  # beside the modules at the package root
TOP = ("experiments", "bench", "cli")  # nothing below these may import them


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every ``sparseflow...`` module named by an import statement in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "sparseflow"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "sparseflow":
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def area(module: str) -> str:
    """The top-level part a module belongs to: 'core' for the root modules and core packages."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] == "__main__":
        return "entry"  # python -m sparseflow: runs the CLI
    if len(parts) == 2 and (PKG / f"{parts[1]}.py").is_file():
        return "core"
    return parts[1] if parts[1] not in CORE_PACKAGES else "core"


MODULES = sorted(p for p in PKG.rglob("*.py"))


def _pairs() -> list[tuple[str, str]]:
    out = []
    for p in MODULES:
        m = module_name(p)
        for target in imports(p):
            out.append((m, target))
    return out


def test_library_never_imports_experiments_bench_or_cli() -> None:
    bad = [(m, t) for m, t in _pairs()
           if area(m) not in (*TOP, "root", "entry") and area(t) in TOP]
    assert not bad, "library modules import experiments/bench/cli: " + ", ".join(f"{m} -> {t}" for m, t in bad)


def test_experiments_and_bench_never_import_cli() -> None:
    bad = [(m, t) for m, t in _pairs() if area(m) in ("experiments", "bench") and area(t) == "cli"]
    assert not bad, ", ".join(f"{m} -> {t}" for m, t in bad)


def test_core_never_imports_the_layers_above() -> None:
    above = ("training", "lottery", "sweep", *TOP)
    bad = [(m, t) for m, t in _pairs() if area(m) == "core" and area(t) in above]
    assert not bad, "core modules import higher layers: " + ", ".join(f"{m} -> {t}" for m, t in bad)


def test_package_root_is_the_core() -> None:
    root = sorted(p.name for p in PKG.glob("*.py"))
    assert len(root) <= 12, root
    assert not [n for n in root if n.startswith(("bench", "sweep"))], root


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_resolve(path: Path) -> None:
    # Every sparseflow module an import names exists (a moved module leaves no dangling import behind).
    for target in imports(path):
        parts = target.split(".")
        for n in range(len(parts), 0, -1):
            base = PKG.parent.joinpath(*parts[:n])
            if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
                break
        else:
            pytest.fail(f"{path.relative_to(PKG)} imports {target}, which does not exist")
