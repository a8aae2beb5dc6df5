"""Job classes of the scheduler benchmark: the short class is the cheapest
:data:`SHORT_FRACTION` of a trace's jobs by their cost running alone, whatever their
lane; the long class is the rest. Figures per class, with SLO attainment.

A job *attains* an SLO of ``k`` when it finishes within ``k`` times its cost running
alone (its standalone latency), counted from its arrival. Jobs refused at admission
never run: they are left out of the waits and completions and count as missing every
SLO.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from backend.bench.policies import SimJob
from backend.stats import percentile

SHORT_FRACTION = 0.8
SLO_FACTORS: tuple[float, ...] = (1.2, 1.5, 2.0, 3.0, 5.0)


def slo_key(factor: float) -> str:
    """The JSON key of an SLO factor: ``"1.2"``, ``"2"``."""
    return f"{factor:g}"


def split_classes(jobs: Sequence[SimJob]) -> tuple[list[SimJob], list[SimJob]]:
    """The short and the long class: the cheapest ``ceil(0.8 n)`` jobs by cost running
    alone (ties by arrival order), and the rest."""
    ordered = sorted(jobs, key=lambda job: (job.cost_s, job.trace.index))
    cut = math.ceil(SHORT_FRACTION * len(ordered))
    return ordered[:cut], ordered[cut:]


def slo_attainment(jobs: Sequence[SimJob]) -> dict[str, float | None]:
    """Per SLO factor, the fraction of ``jobs`` that finished within factor x their
    cost running alone (None without jobs)."""
    ratios = [
        (job.finish_s - job.trace.t_s) / job.cost_s if job.finish_s is not None else math.inf
        for job in jobs
    ]
    return {
        slo_key(k): round(sum(r <= k for r in ratios) / len(ratios), 4) if ratios else None
        for k in SLO_FACTORS
    }


def class_metrics(jobs: Sequence[SimJob]) -> dict[str, dict[str, Any]]:
    """The short class's waits and the long class's completions (arrival to finish),
    each with its SLO attainment; a figure over no finished job is None."""
    short, long = split_classes(jobs)
    waits = [job.first_start_s - job.trace.t_s for job in short if job.first_start_s is not None]
    done = [job.finish_s - job.trace.t_s for job in long if job.finish_s is not None]
    return {
        "short": {
            "jobs": len(short),
            "p50_wait_s": _rounded(percentile(waits, 50) if waits else None),
            "p99_wait_s": _rounded(percentile(waits, 99) if waits else None),
            "slo_attainment": slo_attainment(short),
        },
        "long": {
            "jobs": len(long),
            "mean_completion_s": _rounded(statistics.fmean(done) if done else None),
            "p99_completion_s": _rounded(percentile(done, 99) if done else None),
            "slo_attainment": slo_attainment(long),
        },
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
