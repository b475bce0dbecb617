"""Every ```python block in README.md runs as written (on the embedded data)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "__readme__"})


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text()
    first = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)[:2]
    assert "sparseflow train" in first[0] and "pip install torch==2.13.0" in first[0]
    assert "pytest" in first[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert first[1].strip() in ci  # CI runs exactly the README's test command
