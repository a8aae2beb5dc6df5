"""The report of ``imagine bench scheduler --sweep``: one markdown table per grid axis,
one for the trace files, the targets' misses, and heat maps over the grid.

matplotlib is imported only inside ``write_heatmaps``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backend.bench.report import _number, _table
from backend.bench.sweep import SUBJECT, short_gain

_AXIS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("short_p99_gain_vs_fifo", "short p99 gain vs fifo"),
    ("short_p99_wait_s", "short p99 wait s"),
    ("long_mean_vs_fifo", "long mean / fifo"),
    ("short_slo_2", "short SLO 2x"),
    ("long_slo_2", "long SLO 2x"),
    ("jain", "Jain"),
    ("busy_fraction", "busy"),
    ("preemptions_per_1000", "evictions/1000"),
    ("pauses_per_1000", "pauses/1000"),
)
_TRACE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("short_p50_wait_s", "short p50 wait s"),
    ("short_p99_wait_s", "short p99 wait s"),
    ("long_mean_completion_s", "long mean done s"),
    ("long_p99_completion_s", "long p99 done s"),
    ("jain", "Jain"),
    ("busy_fraction", "busy"),
    ("preemptions_per_1000", "evictions/1000"),
    ("pauses_per_1000", "pauses/1000"),
)


def sweep_markdown(result: Mapping[str, Any]) -> str:
    """Tables per axis (medians over the grid's traces with each value), per trace
    file, and the traces on which ``ours`` misses each target."""
    sweep = result["sweep"]
    parts = [
        f"Scheduler sweep over {sweep['traces']} traces of {sweep['jobs_per_trace']} jobs "
        "(grid figures: medians over the traces with each value)."
    ]
    for axis, per_value in result["axes"].items():
        rows = [
            [value, policy, *(_number(figures.get(key)) for key, _ in _AXIS_COLUMNS)]
            for value, policies in per_value.items()
            for policy, figures in policies.items()
        ]
        if rows:
            header = [axis, "policy", *(title for _, title in _AXIS_COLUMNS)]
            parts.append(f"By {axis}:\n\n" + _table(header, rows, text_columns=2))
    files = [trace for trace in result["traces"] if trace["family"] is None]
    if files:
        rows = [
            [trace["name"], policy, *(_number(figures.get(key)) for key, _ in _TRACE_COLUMNS)]
            + [_number(figures["slo_attainment"][cls].get("2")) for cls in ("short", "long")]
            for trace in files
            for policy, figures in trace["policies"].items()
        ]
        header = ["trace", "policy", *(t for _, t in _TRACE_COLUMNS), "short SLO 2x", "long SLO 2x"]
        parts.append("Trace files:\n\n" + _table(header, rows, text_columns=2))
    parts.append(misses_markdown(result))
    if "feasibility" in result:
        parts.append(feasibility_markdown(result))
    return "\n\n".join(parts) + "\n"


def misses_markdown(result: Mapping[str, Any]) -> str:
    """Per target: on how many traces it was checked, how many ``ours`` misses, and the
    worst of them."""
    rows = []
    for name, misses in result["misses"].items():
        checked = sum(name in trace["targets"] for trace in result["traces"])
        worst = ", ".join(f"{m['trace']} ({_number(m['value'])})" for m in misses[:4])
        more = f" and {len(misses) - 4} more" if len(misses) > 4 else ""
        rows.append([name, str(checked), str(len(misses)), worst + more])
    return f"Targets of {SUBJECT}:\n\n" + _table(
        ["target", "traces", "missed", "misses (value)"], rows, text_columns=1
    )


def feasibility_markdown(result: Mapping[str, Any]) -> str:
    """Per target: the traces ``ours`` misses it on, and those no policy meets it on;
    then, per policy, the traces on which it meets every target at once (each policy
    judged as ``ours`` is; the flood target aside)."""
    found = result["feasibility"]
    rows = []
    for name, none in found["none_meets"].items():
        missed = len(result["misses"].get(name, []))
        rows.append([name, str(missed), str(len(none))])
    table = _table(["target", f"missed by {SUBJECT}", "met by no policy"], rows, text_columns=1)
    together = ", ".join(f"{policy} {count}" for policy, count in found["meets_all"].items())
    return (
        "Feasibility (each policy judged as ours is, on its own replay; flood target "
        f"aside):\n\n{table}\n\nTraces on which a policy meets every target at once: "
        f"{together}; no policy: {len(found['none_meets_all'])} of {result['sweep']['traces']}."
    )


def _heat_grid(
    result: Mapping[str, Any], policy: str, value_of: Any
) -> tuple[list[str], list[str], list[list[float]]]:
    """Rows: short fraction x cost ratio; columns: load x shape x tier mix."""
    cells: dict[tuple[str, str], float] = {}
    for trace in result["traces"]:
        family = trace["family"]
        if family is None or policy not in trace["policies"]:
            continue
        row = f"s{family['short_fraction']:g} r{family['cost_ratio']:g}"
        shape = "same" if family["shared_shape"] else "apart"
        column = f"l{family['load']:g} {shape} {family['mix']}"
        value = value_of(trace, policy)
        cells[(row, column)] = math.nan if value is None else float(value)
    rows = list(dict.fromkeys(r for r, _ in cells))
    columns = list(dict.fromkeys(c for _, c in cells))
    values = [[cells.get((r, c), math.nan) for c in columns] for r in rows]
    return rows, columns, values


def write_heatmaps(out_dir: Path, result: Mapping[str, Any]) -> list[Path]:
    """``heat_short_gain.png`` (FIFO's short-class p99 wait over each policy's, log
    colours) and ``heat_slo.png`` (each policy's SLO attainment at 2x over all jobs),
    one panel per policy over the grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, Normalize

    policies = list(result["traces"][0]["policies"]) if result["traces"] else []
    maps: Sequence[tuple[str, str, Any, Any]] = (
        ("heat_short_gain.png", "short-class p99 wait: fifo / policy", _gain, LogNorm(0.1, 1000)),
        ("heat_slo.png", "SLO attainment at 2x, all jobs", _slo_all, Normalize(0, 1)),
    )
    written = []
    for filename, title, value_of, norm in maps:
        fig, axes = plt.subplots(
            len(policies),
            1,
            figsize=(14, 2.8 * len(policies) + 1),
            squeeze=False,
            layout="constrained",
        )
        try:
            image = None
            for ax, policy in zip(axes[:, 0], policies, strict=True):
                rows, columns, values = _heat_grid(result, policy, value_of)
                image = ax.imshow(values, aspect="auto", cmap="viridis", norm=norm)
                ax.set_title(f"{policy}: {title}", fontsize=9)
                ax.set_yticks(range(len(rows)), rows, fontsize=6)
                ax.set_xticks(range(len(columns)), columns, fontsize=5, rotation=90)
            if image is not None:
                fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.5)
            path = out_dir / filename
            fig.savefig(path, dpi=90, bbox_inches="tight")
            written.append(path)
        finally:
            plt.close(fig)
    return written


def _gain(trace: Mapping[str, Any], policy: str) -> float | None:
    return short_gain(trace["policies"], policy)


def _slo_all(trace: Mapping[str, Any], policy: str) -> float | None:
    slo = trace["policies"][policy]["slo_attainment"]
    short: float | None = slo["short"]["2"]
    long: float | None = slo["long"]["2"]
    if short is None or long is None:
        return short if long is None else long
    # The short class is 80% of the jobs by definition.
    return 0.8 * short + 0.2 * long


def write_sweep_report(out_dir: Path, result: Mapping[str, Any]) -> list[Path]:
    """Create ``out_dir`` with ``sweep.md``, ``sweep.json`` and the heat maps."""
    out_dir.mkdir(parents=True, exist_ok=True)
    maps = write_heatmaps(out_dir, result)
    links = "\n".join(f"![{path.stem}]({path.name})" for path in maps)
    report = out_dir / "sweep.md"
    report.write_text(
        "# imagine bench scheduler --sweep\n\n" + sweep_markdown(result) + "\n" + links + "\n",
        encoding="utf-8",
    )
    data = out_dir / "sweep.json"
    data.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return [report, data, *maps]
