"""Lottery tickets: iterative magnitude pruning with rewinding, its controls, and the report.

Frankle & Carbin 2019 ("The Lottery Ticket Hypothesis"), late rewinding (Frankle et al. 2020) and
learning-rate rewinding (Renda et al. 2020). :class:`LotteryJob` is the configuration,
:func:`run_lottery` runs or resumes it in a run directory, :func:`summarize`, :func:`criteria` and
:func:`write_report` turn the results into tables, figures and pass/fail checks.
"""

from sparseflow.lottery.config import LotteryJob, LotteryOptions, level_counts
from sparseflow.lottery.prune import next_mask, random_mask
from sparseflow.lottery.report import criteria, summarize, write_report
from sparseflow.lottery.run import LotteryResult, run_lottery

__all__ = ["LotteryJob", "LotteryOptions", "LotteryResult", "criteria", "level_counts", "next_mask", "random_mask",
           "run_lottery", "summarize", "write_report"]
