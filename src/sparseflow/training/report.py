"""Markdown reports with figures for runs and experiments."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparseflow.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from sparseflow.training.result import JobResult


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(criterion: dict[str, Any]) -> str:
    """A criterion's result cell: "pass", "FAIL", or "n/a" with the reason when the run cannot test it
    (``"pass": None``, the reason in ``"note"``)."""
    if criterion.get("pass") is None:
        return "n/a" + (f" ({criterion['note']})" if criterion.get("note") else "")
    return "pass" if criterion["pass"] else "FAIL"


def criteria_counts(criteria: dict[str, dict[str, Any]]) -> str:
    """"2 of 3 criteria pass" (and "1 not testable at this scale" when some are ``"pass": None``)."""
    tested = [c for c in criteria.values() if c.get("pass") is not None]
    text = f"{sum(bool(c['pass']) for c in tested)} of {len(tested)} criteria pass"
    untested = len(criteria) - len(tested)
    return text + (f", {untested} not testable at this scale" if untested else "")


def criteria_md(criteria: dict[str, dict[str, Any]]) -> str:
    """The ``## Criteria`` section of a report: one row per criterion (value, target, result) and the count."""
    if not criteria:
        return "## Criteria\n\nNo pass/fail criteria for this run.\n"

    def value(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = [[name, value(c.get("value")), c.get("target", ""), verdict(c)] for name, c in criteria.items()]
    return (f"## Criteria\n\n{md_table(['criterion', 'value', 'target', 'result'], rows)}\n\n"
            f"{criteria_counts(criteria)}.\n")


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically, then close it (pyplot keeps every open figure alive)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _curves(result: JobResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    runs = [(f"{result.job.method} (s={result.job.sparsity:g})", result.sparse)]
    if result.dense is not None:
        runs.append(("dense", result.dense))
    lm = result.language_model
    for label, run in runs:
        epochs = [r["epoch"] for r in run.history]
        ax1.plot(epochs, [r["train_loss"] for r in run.history], label=label)
        if lm:  # epochs without an evaluation have no test loss
            pts = [(r["epoch"], math.exp(min(r["test_loss"], 700.0))) for r in run.history if r["test_loss"] is not None]
            ax2.plot([e for e, _ in pts], [v for _, v in pts], marker="o", label=label)
        else:
            ax2.plot(epochs, [r["test_acc"] for r in run.history], label=label)
    ax1.set(xlabel="epoch", ylabel="train loss", yscale="log")
    ax2.set(xlabel="epoch", ylabel="validation perplexity" if lm else "test accuracy")
    ax2.legend()
    save_figure(fig, path)


def _health(result: JobResult) -> str:
    from sparseflow.training.result import signal_note

    parts = [f"**Warning:** {w}" for w in result.warnings] or ["No warnings."]
    if result.connectivity is not None:
        parts += ["Connectivity of the final sparse model (`sparseflow.connectivity`):", result.connectivity.markdown()]
    else:
        parts.append("Connectivity: this model could not be traced.")
    if result.signal is not None:
        note = signal_note(result.signal, result.signal_reference, result.starts_dense, result.job.method)
        parts += ["Signal propagation at the start of training (`sparseflow.signal`, one training batch): "
                  f"verdict **{result.signal.verdict}**, gain {result.signal.gain:.3g}." + (f" {note}" if note else ""),
                  result.signal.markdown()]
    elif result.language_model:
        parts.append("Signal at initialisation: not measured for a language model (along the residual stream the "
                     "per-layer gains do not multiply end to end).")
    else:
        parts.append("Signal at initialisation: not measured (the run was resumed).")
    return "\n\n".join(parts)


def _storage(result: JobResult) -> str:
    st = result.storage
    if not st:
        return ""
    ratio = f", {st['mask_ratio']:.3f}x their i.i.d. bound N·H(p)" if st["mask_ratio"] else ""
    return (f"""
## Storage

`{st['file']}` (`sparseflow.load` / `sparseflow inspect`): {st['file_bytes']:,} bytes, """
            f"""{st['file_bytes'] / st['dense_fp32_bytes']:.3f} of dense fp32 ({st['dense_fp32_bytes']:,} bytes); """
            f"""masks {st['mask_bytes']:,} bytes{ratio}; kept values {st['values_bytes']:,} bytes.
""")


def _sample(result: JobResult) -> str:
    from sparseflow.training.gpt import SAMPLE_TEMPERATURE

    if result.sample is None:
        return ""
    text = result.sample.replace("```", "` ` `")  # (the fence must not end early)
    saved = f"\nAlso saved as a Hugging Face folder: `{result.pretrained}`.\n" if result.pretrained else ""
    return (f"\nValidation loss is the mean cross-entropy per character (nats); perplexity is its exp.\n{saved}\n"
            f"### Sample\n\n{len(result.sample)} characters from the {result.job.method} model after a newline "
            f"(seed {result.job.seed}, temperature {SAMPLE_TEMPERATURE:g}):\n\n```text\n{text}\n```\n")


def write_train_report(result: JobResult, out: Path, *, command: str | None = None) -> None:
    """OUT/report.md and OUT/curves.png for a train job."""
    _curves(result, out / "curves.png")
    job = result.job
    if result.language_model:
        header = ["run", "sparsity (measured)", "validation loss", "perplexity", "next-character accuracy"]
        rows = [[job.method, f"{result.sparsity:.4f}", result.sparse.test_loss, result.perplexity, result.accuracy]]
        if result.dense is not None:
            rows.append(["dense (same budget)", "0.0000", result.dense.test_loss, result.dense_perplexity,
                         result.dense_accuracy])
    else:
        header = ["run", "sparsity (measured)", "test accuracy"]
        rows = [[job.method, f"{result.sparsity:.4f}", f"{result.accuracy:.4f}"]]
        if result.dense_accuracy is not None and job.method != "dense":
            rows.append(["dense (same budget)", "0.0000", f"{result.dense_accuracy:.4f}"])
    layers = [[layer.name, "x".join(map(str, layer.shape)), layer.numel, layer.nonzeros, f"{layer.density:.4f}",
               "yes" if layer.target else "no (dense)"] for layer in result.layers]
    text = f"""# sparseflow train: {job.model} on {job.dataset}, {job.method} at sparsity {job.sparsity:g}

Run `{job.run_name()}`, {result.sparse.steps} optimizer steps per run, {result.wall_s:.1f} s in all.
{f"Reproduce with: `{command}`" if command else ""}

## Result

{md_table(header, rows)}
{_sample(result)}
## Layers (measured from the saved checkpoint)

{md_table(["parameter", "shape", "weights", "nonzeros", "density", "pruned"], layers)}

{criteria_md(result.to_json()["criteria"])}
## Connectivity and signal

{_health(result)}
{_storage(result)}
## Learning curves

![curves](curves.png)

## Configuration

{md_table(["field", "value"], [[k, v] for k, v in job.to_dict().items()])}

Method schedule: `{result.schedule}`
"""
    atomic_write_text(out / "report.md", text)
