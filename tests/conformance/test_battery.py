"""Conformance battery: every architecture of ``realmodels.ARCHS`` × every feature (in the style of
scikit-learn's ``check_estimator``).

A cell passes when the feature works against its oracle (``battery_cells``), or when it raises one
SparseflowError whose message is in :data:`ALLOWED` for that feature: a refusal is a documented decision, listed
here with its reason. Any other exception, an unlisted refusal, or an oracle that disagrees fails the cell.
The last test checks that the table of ``docs/guide/models.md`` says ✓ exactly where a cell works; rewrite that
table from the current results with ``python tests/conformance/test_battery.py``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

if __name__ == "__main__":  # run as a script: the paths pytest would add
    sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

import realmodels
from battery_arch import Arch, build
from battery_cells import FEATURES, global_empties, nm_incompatible, saliency_empties
from sparseflow import SparseflowError

ARCHS = list(realmodels.ARCHS)
PAGE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "models.md"
START, END = "<!-- battery table: start -->", "<!-- battery table: end -->"


@dataclass(frozen=True)
class Refusal:
    """An allowed refusal: ``pattern`` is searched in the message; ``reason`` is the table's text (``{what}`` from
    the pattern's group of that name); ``when`` must also hold for the architecture and message."""

    pattern: str
    reason: str
    when: Callable[[Arch, str], bool] = lambda arch, msg: True


def _names_all(layers: Callable[[Arch], list[str]]) -> Callable[[Arch, str], bool]:
    """The refusal is right: the oracle finds such layers on this architecture, and the message names each one."""
    def check(arch: Arch, msg: str) -> bool:
        bad = layers(arch)
        return bool(bad) and all(f"'{n}'" in msg for n in bad)
    return check


def _names_a_target(arch: Arch, msg: str) -> bool:
    return any(f"'{n}'" in msg for n in arch.expected)


EMPTY = r"layer\(s\) \[.*\] would keep no weights"
ALLOWED: dict[str, list[Refusal]] = {
    # The global ranking by |w| leaves some layer without weights (recomputed here on the same weights): refusing
    # a disconnected network is documented (docs/guide/targets.md, "Exact counts").
    "magnitude_global": [Refusal(EMPTY, "empties a layer", _names_all(global_empties))],
    # N:M groups run along the input axis; a layer whose input axis is not a multiple of 4 is refused, and the one
    # error names every such layer.
    "nm_2_4": [Refusal(r"NM\((n=)?2, (m=)?4\)", "inputs not a multiple of 4", _names_all(nm_incompatible))],
    # Pruning at initialisation ranks all layers together; a layer left empty is refused as above. SNIP's and
    # GraSP's rankings are recomputed here; SynFlow's iterative one is not (the message must name a target).
    "snip": [Refusal(EMPTY, "empties a layer", _names_all(lambda arch: saliency_empties(arch, "snip")))],
    "grasp": [Refusal(EMPTY, "empties a layer", _names_all(lambda arch: saliency_empties(arch, "grasp")))],
    "synflow": [Refusal(EMPTY, "empties a layer", _names_a_target)],
    # The unit graph follows Linear/Conv layers, activations, norms, pools, flatten and residual adds; anything
    # else is refused with the module or operation named.
    "connectivity": [
        Refusal(r"cannot follow module '[^']+' \((?P<what>\w+)\)", "not traced: {what}"),
        Refusal(r"cannot follow operation '(?P<what>[^']+)'", "not traced: {what}"),
        Refusal(r"cannot trace \w+ for connectivity analysis inside module '[^']+' \((?P<what>\w+)\)", "not traced: {what}"),
    ],
}


@dataclass(frozen=True)
class Outcome:
    status: str  # "works", "refused" or "fails"
    detail: str = ""  # the refusal's reason, or why the cell fails

    @property
    def cell(self) -> str:
        return {"works": "✓", "refused": self.detail, "fails": "✗"}[self.status]


def run_cell(arch: Arch, feature: str) -> Outcome:
    try:
        FEATURES[feature](arch)
    except SparseflowError as e:
        msg = str(e)
        for r in ALLOWED.get(feature, []):
            hit = re.search(r.pattern, msg)
            if hit and r.when(arch, msg):
                return Outcome("refused", r.reason.format(**hit.groupdict()))
        return Outcome("fails", f"unlisted {type(e).__name__}: {msg}")
    except AssertionError as e:
        return Outcome("fails", f"oracle: {e}")
    except Exception as e:  # noqa: BLE001 (a crash is a failing cell, reported with its type)
        return Outcome("fails", f"{type(e).__name__}: {e}")
    return Outcome("works")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the models are tiny; one thread is faster and fair to a shared machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> Arch:
    return build(request.param)


@pytest.fixture(scope="session")
def outcomes() -> dict[tuple[str, str], Outcome]:
    return {}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_cell(arch: Arch, feature: str, outcomes: dict[tuple[str, str], Outcome]) -> None:
    if (arch.name, feature) not in outcomes:
        outcomes[arch.name, feature] = run_cell(arch, feature)
    result = outcomes[arch.name, feature]
    if result.status == "fails":
        pytest.fail(result.detail[:600], pytrace=False)


# --- the table of docs/guide/models.md ------------------------------------------------------------------------
def all_outcomes(known: dict[tuple[str, str], Outcome]) -> dict[tuple[str, str], Outcome]:
    """Every cell, running the ones not run yet in this session."""
    for name in ARCHS:
        missing = [f for f in FEATURES if (name, f) not in known]
        if missing:
            arch = build(name)
            for f in missing:
                known[name, f] = run_cell(arch, f)
    return known


def render(results: dict[tuple[str, str], Outcome]) -> str:
    lines = ["| model | " + " | ".join(FEATURES) + " |", "|---" * (len(FEATURES) + 1) + "|"]
    for name in ARCHS:
        lines.append(f"| {name} | " + " | ".join(results[name, f].cell for f in FEATURES) + " |")
    return "\n".join(lines)


def page_table(text: str) -> dict[tuple[str, str], str]:
    body = text.split(START, 1)[1].split(END, 1)[0].strip().splitlines()
    header = [c.strip() for c in body[0].strip("|").split("|")][1:]
    cells = {}
    for line in body[2:]:
        row = [c.strip() for c in line.strip().strip("|").split("|")]
        cells.update({(row[0], f): v for f, v in zip(header, row[1:])})
    return cells


def test_models_page_says_works_exactly_where_a_cell_works(outcomes: dict[tuple[str, str], Outcome]) -> None:
    results = all_outcomes(outcomes)
    page = page_table(PAGE.read_text())
    wrong = [f"{a}/{f}: page says {page.get((a, f))!r}, the battery {o.cell!r}" for (a, f), o in results.items()
             if page.get((a, f)) != o.cell and (o.status != "fails" or page.get((a, f)) == "✓")]
    assert not wrong, "docs/guide/models.md is out of date (rewrite it with python tests/conformance/test_battery.py):\n" \
        + "\n".join(wrong)


if __name__ == "__main__":
    torch.set_num_threads(1)
    results = all_outcomes({})
    text = PAGE.read_text()
    head, rest = text.split(START, 1)
    PAGE.write_text(f"{head}{START}\n{render(results)}\n{END}{rest.split(END, 1)[1]}")
    for (a, f), o in results.items():
        if o.status != "works":
            print(f"{a:20s} {f:17s} {o.status:8s} {o.detail[:300]}")
