"""``imagine bench scheduler --sweep``: a grid of synthetic workloads (and any trace
files) replayed through every policy, with the issue's targets checked per trace.

The grid's axes: the fraction of short jobs, the long jobs' cost running alone over
the short ones', whether long jobs share the short ones' shape (more steps at 512 px;
they can then batch together, and at 5x the classifier puts both in one lane) or run
at 1024 px, the offered load, and the tier mix (all free; free plus a tenth of paid
users; free plus one user who submits a third of the jobs). Every trace of the grid
has ``jobs`` arrivals and its own seed.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

from backend.bench.device import ResumeCosts
from backend.bench.policies import POLICIES
from backend.bench.scheduler import run_scheduler_bench, simulate
from backend.bench.sim import service_time
from backend.bench.trace import TraceJob, read_trace
from backend.errors import BadInputError
from backend.scheduling.lanes import StepTimes
from backend.stats import percentile
from config.settings import Settings

SWEEP_JOBS = 600
SHORT_STEPS, SHORT_SIZE_PX, LONG_SIZE_PX, IMAGES_PER_JOB = 4, 512, 1024, 4
USERS = 200
FLOOD_USER = "flood"
ZIPF_EXPONENT = 1.1
PAID_SHARE = 0.1
FLOOD_SHARE = 1 / 3
AXES: dict[str, tuple[Any, ...]] = {
    "short_fraction": (0.5, 0.8, 0.95),
    "cost_ratio": (5, 20, 100),
    "shared_shape": (True, False),
    "load": (0.5, 0.7, 0.85, 0.95),
    "mix": ("free", "paid", "flood"),
}
# The policy the targets judge, and the one its short-class gain is measured against.
SUBJECT, REFERENCE = "ours", "fifo"


@dataclass(frozen=True, slots=True)
class Family:
    """One point of the grid: what its synthetic trace is made of."""

    short_fraction: float
    cost_ratio: float
    shared_shape: bool
    load: float
    mix: str

    @property
    def name(self) -> str:
        """A short stable label, e.g. ``s80-r20-same-l0.85-free``."""
        shape = "same" if self.shared_shape else "apart"
        return (
            f"s{round(self.short_fraction * 100)}-r{self.cost_ratio:g}-{shape}"
            f"-l{self.load:g}-{self.mix}"
        )


def grid(axes: Mapping[str, Sequence[Any]] = AXES) -> list[Family]:
    """Every combination of the axes' values."""
    names = list(AXES)
    return [
        Family(**dict(zip(names, values, strict=True)))
        for values in itertools.product(*(axes[name] for name in names))
    ]


def family_trace(family: Family, *, seed: int, jobs: int, step_model: StepTimes) -> list[TraceJob]:
    """The synthetic trace of ``family``: Poisson arrivals offering its load, Zipf-active
    users of its tier mix, short jobs of 4 steps at 512 px and long ones with as many
    steps as bring their cost running alone to ``cost_ratio`` x a short job's."""
    if jobs < 1:
        raise BadInputError(f"--jobs must be >= 1, got {jobs}")
    rng = random.Random(seed)
    solo = service_time(step_model)
    short = TraceJob(0, 0.0, "", "", SHORT_STEPS, SHORT_SIZE_PX, SHORT_SIZE_PX, IMAGES_PER_JOB)
    size = SHORT_SIZE_PX if family.shared_shape else LONG_SIZE_PX
    one_step = TraceJob(0, 0.0, "", "", 1, size, size, IMAGES_PER_JOB)
    long_steps = max(1, round(family.cost_ratio * solo(short) / solo(one_step)))
    users = _users(rng, family.mix)
    weights = list(itertools.accumulate(weight for _, _, weight in users))
    kinds = []
    for index in range(jobs):
        name, tier, _ = rng.choices(users, cum_weights=weights)[0]
        is_long = rng.random() >= family.short_fraction
        steps = long_steps if is_long else SHORT_STEPS
        width = size if is_long else SHORT_SIZE_PX
        kinds.append(TraceJob(index, 0.0, name, tier, steps, width, width, IMAGES_PER_JOB))
    rate_per_s = family.load / (sum(solo(job) for job in kinds) / jobs)
    t_s, trace = 0.0, []
    for job in kinds:
        t_s += rng.expovariate(rate_per_s)
        trace.append(
            TraceJob(job.index, t_s, job.user, job.tier, job.steps, job.width, job.height, job.n)
        )
    return trace


def _users(rng: random.Random, mix: str) -> list[tuple[str, str, float]]:
    tiers = ["free"] * USERS
    if mix == "paid":
        for rank in rng.sample(range(USERS), round(PAID_SHARE * USERS)):
            tiers[rank] = rng.choice(("basic", "pro"))
    users = [(f"u{r:03d}", tiers[r - 1], 1.0 / r**ZIPF_EXPONENT) for r in range(1, USERS + 1)]
    if mix == "flood":
        total = sum(weight for _, _, weight in users)
        users.append((FLOOD_USER, "free", total * FLOOD_SHARE / (1 - FLOOD_SHARE)))
    elif mix not in ("free", "paid"):
        raise BadInputError(f"unknown tier mix {mix!r}; known: free, paid, flood")
    return users


# -- figures and targets -----------------------------------------------------------------


def compact(figures: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep's figures of one policy on one trace."""
    classes = figures["classes"]
    return {
        "short_p50_wait_s": classes["short"]["p50_wait_s"],
        "short_p99_wait_s": classes["short"]["p99_wait_s"],
        "long_mean_completion_s": classes["long"]["mean_completion_s"],
        "long_p99_completion_s": classes["long"]["p99_completion_s"],
        "slo_attainment": {
            "short": classes["short"]["slo_attainment"],
            "long": classes["long"]["slo_attainment"],
        },
        "jain": figures["jain"],
        "busy_fraction": figures["busy_fraction"],
        "preemptions_per_1000": figures["preemptions_per_1000"],
        "pauses_per_1000": figures.get("pauses_per_1000", 0.0),
        "refused": sum(figures.get("refused", {}).values()),
    }


def short_gain(policies: Mapping[str, Mapping[str, Any]], name: str) -> float | None:
    """FIFO's short-class p99 wait over ``name``'s (10 means ten times shorter)."""
    if REFERENCE not in policies or name not in policies:
        return None
    mine: float | None = policies[name]["short_p99_wait_s"]
    theirs: float | None = policies[REFERENCE]["short_p99_wait_s"]
    if mine is None or theirs is None:
        return None
    return round(theirs / max(mine, 1e-3), 3)


def flood_effect(
    settings: Settings,
    trace: list[TraceJob],
    *,
    step_model: StepTimes,
    admission: bool = True,
    resume: ResumeCosts | None = None,
) -> float | None:
    """How much the flooding user raises everyone else's p99 wait under ``ours``: the
    other users' p99 wait replaying ``trace`` over the same without the flooder's jobs
    (1.2: 20% longer); None without a flooder."""
    without = [job for job in trace if job.user != FLOOD_USER]
    if len(without) == len(trace) or not without:
        return None
    p99 = []
    for replay in (trace, without):
        stats = simulate(
            settings, replay, SUBJECT, step_model=step_model, admission=admission, resume=resume
        )
        waits = [
            job.first_start_s - job.trace.t_s
            for job in stats.jobs
            if job.trace.user != FLOOD_USER and job.first_start_s is not None
        ]
        p99.append(percentile(waits, 99) if waits else 0.0)
    return round(p99[0] / max(p99[1], 1e-3), 4)


def trace_targets(
    policies: Mapping[str, Mapping[str, Any]],
    family: Family | None,
    flood_ratio: float | None = None,
    subject: str = SUBJECT,
) -> dict[str, dict[str, Any]]:
    """The issue's targets for ``subject`` (``ours``) on one trace: short-class p99 wait
    at least 10x FIFO's where long jobs cost 20x or more and within 10% of the best
    other policy's; long mean completion at most 1.2x FIFO's; Jain at least 0.95; under
    300 preemptions (evictions) per 1,000 jobs at load 0.85; a flooding user raising
    the other users' p99 wait by at most 20% (``flood_ratio``, where there is one)."""
    ours = policies.get(subject)
    if ours is None:
        return {}
    found: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float | None, op: str, bound: float) -> None:
        if value is not None:
            ok = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
            found[name] = {"value": round(value, 4), "target": f"{op} {bound:g}", "ok": ok}

    gain = short_gain(policies, subject)
    if family is None or family.cost_ratio >= 20:
        add("short_p99_gain_vs_fifo", gain, ">=", 10)
    baselines = [
        figures["short_p99_wait_s"]
        for name, figures in policies.items()
        if name != subject and figures["short_p99_wait_s"] is not None
    ]
    if baselines and ours["short_p99_wait_s"] is not None:
        best = max(min(baselines), 1e-3)
        add("short_p99_vs_best_baseline", ours["short_p99_wait_s"] / best, "<=", 1.1)
    fifo = policies.get(REFERENCE, {}).get("long_mean_completion_s")
    if fifo and ours["long_mean_completion_s"] is not None:
        add("long_mean_vs_fifo", ours["long_mean_completion_s"] / fifo, "<=", 1.2)
    add("jain", ours["jain"], ">=", 0.95)
    if family is None or family.load == 0.85:
        add("preemptions_per_1000", ours["preemptions_per_1000"], "<", 300)
    add("flood_other_p99_ratio", flood_ratio, "<=", 1.2)
    return found


def _axis_summary(
    traces: Sequence[Mapping[str, Any]], axes: Mapping[str, Sequence[Any]]
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Per axis, value and policy: medians over the grid's traces with that value."""
    summary: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    grid_traces = [trace for trace in traces if trace["family"] is not None]
    for axis, values in axes.items():
        per_value: dict[str, dict[str, dict[str, Any]]] = {}
        for value in values:
            members = [t for t in grid_traces if t["family"][axis] == value]
            if members:
                per_value[str(value)] = _medians(members)
        summary[axis] = per_value
    return summary


def _medians(traces: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for policy in traces[0]["policies"]:
        rows = [trace["policies"][policy] for trace in traces]
        gains = [g for t in traces if (g := short_gain(t["policies"], policy)) is not None]
        out[policy] = {
            "short_p99_gain_vs_fifo": _median(gains),
            "short_p99_wait_s": _median([r["short_p99_wait_s"] for r in rows]),
            "long_mean_vs_fifo": _median(
                [
                    r["long_mean_completion_s"] / t["policies"][REFERENCE]["long_mean_completion_s"]
                    for r, t in zip(rows, traces, strict=True)
                    if REFERENCE in t["policies"]
                    and r["long_mean_completion_s"]
                    and t["policies"][REFERENCE]["long_mean_completion_s"]
                ]
            ),
            "short_slo_2": _median([r["slo_attainment"]["short"]["2"] for r in rows]),
            "long_slo_2": _median([r["slo_attainment"]["long"]["2"] for r in rows]),
            "jain": _median([r["jain"] for r in rows]),
            "busy_fraction": _median([r["busy_fraction"] for r in rows]),
            "preemptions_per_1000": _median([r["preemptions_per_1000"] for r in rows]),
            "pauses_per_1000": _median([r.get("pauses_per_1000", 0.0) for r in rows]),
        }
    return out


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return round(median(present), 4) if present else None


# -- the run -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepConfig:
    """What a sweep replays: ``jobs`` per grid trace from ``seed``, the trace files
    ``extra``, through ``policies``, behind admission unless ``admission`` is False."""

    jobs: int = SWEEP_JOBS
    seed: int = 1
    policies: tuple[str, ...] = POLICIES
    extra: tuple[Path, ...] = ()
    admission: bool = True
    axes: Mapping[str, Sequence[Any]] | None = None


def run_sweep(
    settings: Settings,
    config: SweepConfig,
    *,
    step_model: StepTimes,
    resume: ResumeCosts | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Replay every trace of the grid and every trace file; returns the result object:
    each trace's figures per policy and targets, medians per axis value, and which
    traces miss which target."""
    axes = config.axes or AXES
    sources: list[tuple[str, Family | None, list[TraceJob]]] = []
    for offset, point in enumerate(grid(axes)):
        trace = family_trace(
            point, seed=config.seed + offset, jobs=config.jobs, step_model=step_model
        )
        sources.append((point.name, point, trace))
    for path in config.extra:
        sources.append((path.name, None, read_trace(path, tiers=settings.scheduler.tiers)))
    started = time.perf_counter()
    traces = []
    for number, (name, family, trace) in enumerate(sources, start=1):
        result, _, _ = run_scheduler_bench(
            settings,
            trace,
            step_model=step_model,
            policies=config.policies,
            admission=config.admission,
            resume=resume,
            say=lambda _: None,
        )
        policies = {policy: compact(f) for policy, f in result["policies"].items()}
        flood = None
        if SUBJECT in policies and (family is None or family.mix == "flood"):
            flood = flood_effect(
                settings,
                trace,
                step_model=step_model,
                admission=config.admission,
                resume=resume,
            )
        eta = result.get("eta", {}).get("lanes", {})
        traces.append(
            {
                "name": name,
                "family": None if family is None else asdict(family),
                "jobs": len(trace),
                "policies": policies,
                "eta_median_rel_error": {k: v["median_rel_error"] for k, v in eta.items()},
                "flood_other_p99_ratio": flood,
                "targets": trace_targets(policies, family, flood),
            }
        )
        if number % 12 == 0 or number == len(sources):
            say(f"sweep: {number}/{len(sources)} traces in {time.perf_counter() - started:.0f} s")
    return {
        "sweep": {"jobs_per_trace": config.jobs, "seed": config.seed, "traces": len(traces)},
        "axes": _axis_summary(traces, axes),
        "misses": _misses(traces),
        "feasibility": feasibility(traces),
        "traces": traces,
    }


def feasibility(traces: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Whether any policy meets the targets, each policy judged as ``ours`` is (against
    FIFO and the best of the others), on the figures of one replay; the flood target,
    which needs a replay without the flooder per policy, is left out.

    ``meets_all``: per policy, the traces on which it meets every such target at once;
    ``none_meets_all``: the traces on which no policy does; ``none_meets``: per target,
    the traces on which no policy meets it even alone. A target no policy reaches on a
    trace, or a set of targets none reaches together, bounds what ours can be asked
    there by the policies at hand; it is not a proof that no policy could.
    """
    meets_all: dict[str, int] = {}
    none_meets_all: list[str] = []
    none_meets: dict[str, list[str]] = {}
    for trace in traces:
        family = None if trace["family"] is None else Family(**trace["family"])
        judged = {
            policy: {
                name: target["ok"]
                for name, target in trace_targets(trace["policies"], family, None, policy).items()
            }
            for policy in trace["policies"]
        }
        winners = [policy for policy, found in judged.items() if found and all(found.values())]
        for policy in judged:
            meets_all.setdefault(policy, 0)
        for policy in winners:
            meets_all[policy] += 1
        if not winners:
            none_meets_all.append(trace["name"])
        for name in dict.fromkeys(name for found in judged.values() for name in found):
            none_meets.setdefault(name, [])
            if not any(found.get(name, False) for found in judged.values()):
                none_meets[name].append(trace["name"])
    return {"meets_all": meets_all, "none_meets_all": none_meets_all, "none_meets": none_meets}


def _misses(traces: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per target, the traces ``ours`` misses it on, with the value."""
    misses: dict[str, list[dict[str, Any]]] = {}
    for trace in traces:
        for name, target in trace["targets"].items():
            misses.setdefault(name, [])
            if not target["ok"]:
                misses[name].append({"trace": trace["name"], "value": target["value"]})
    return misses
