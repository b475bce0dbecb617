"""Every ```python block of README.md and docs/**/*.md runs as written; the README keeps its two commands.

Each page's blocks run in order in one namespace (so a later block may use an earlier one's names), in a
fresh working directory. A block preceded by ``<!-- no-test -->`` is skipped: only for examples that need
data or hardware a test machine does not have.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"(<!-- no-test -->\s*)?^```python\n(.*?)^```", flags=re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The page's ```python blocks that are to run, in order."""
    return [code for skip, code in FENCE.findall(text) if not skip]


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p.read_text())], ids=_name)
def test_page_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # examples are tiny; one thread avoids contention on a shared machine
    try:
        namespace = {"__name__": "__docs__"}
        for i, code in enumerate(python_blocks(page.read_text())):
            exec(compile(code, f"{_name(page)} block {i}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)


def test_no_test_marker_is_rare() -> None:
    skipped = sum(len(FENCE.findall(p.read_text())) - len(python_blocks(p.read_text())) for p in PAGES)
    assert skipped <= 3, "most examples must run: a skipped block is only for missing data or hardware"


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text()
    first = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)[:2]
    assert "sparseflow train" in first[0] and "pip install torch==2.13.0" in first[0]
    assert "pytest" in first[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert first[1].strip() in ci  # CI runs exactly the README's test command
    assert "mkdocs build --strict" in ci


def test_readme_is_short_and_its_links_exist() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(((?:docs/)[^)#]+)(?:#[^)]*)?\)", text)
    assert links, "the README links to the documentation pages"
    for link in links:
        assert (ROOT / link).is_file(), link


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_lists_every_command_and_option() -> None:
    import typer.main

    from sparseflow.cli import app

    text = _hooks().cli_markdown(app)
    root = typer.main.get_command(app)

    def walk(cmd, path):
        assert re.search(rf"^#+ {re.escape(' '.join(path))}$", text, flags=re.M), path
        for p in cmd.params:
            if p.param_type_name == "option" and not getattr(p, "hidden", False):
                assert f"`{p.opts[0]}" in text, (path, p.opts)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    for name, cmd in root.commands.items():
        walk(cmd, ["sparseflow", name])


def test_api_reference_covers_all_public_names() -> None:
    import sparseflow

    groups = _hooks().api_groups()
    listed = [name for names in groups.values() for name in names]
    assert sorted(listed) == sorted(n for n in sparseflow.__all__ if not n.startswith("__"))
    assert "Other" not in groups
