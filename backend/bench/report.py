"""The report of ``imagine bench scheduler``: markdown tables, plots, the JSON result.

matplotlib is imported only inside ``write_plots``, so the CLI and the simulation load
without it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from backend.scheduling.fairness import LANE_ORDER

# Waits of zero have no place on a log axis; they are drawn at this floor instead.
WAIT_FLOOR_S = 0.01
_MISSING = "–"

_LANE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("jobs", "jobs"),
    ("p50_wait_s", "p50 wait s"),
    ("p99_wait_s", "p99 wait s"),
    ("p99_slowdown", "p99 slowdown"),
)
_POLICY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("busy_fraction", "busy"),
    ("images_per_s", "images/s"),
    ("mean_batch", "mean batch"),
    ("preemptions_per_1000", "evictions/1000"),
    ("pauses_per_1000", "pauses/1000"),
    ("jain", "Jain"),
    ("max_wait_lowest_tier_s", "max wait lowest tier s"),
)

# (class, key, title) of the per-class table; then the SLO attainment of each class.
_CLASS_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("short", "p50_wait_s", "short p50 wait s"),
    ("short", "p99_wait_s", "short p99 wait s"),
    ("long", "mean_completion_s", "long mean done s"),
    ("long", "p99_completion_s", "long p99 done s"),
)
_SLO_SHOWN: tuple[str, ...] = ("1.5", "2", "5")
_SLO_TITLES: tuple[str, ...] = tuple(
    f"{cls} SLO {k}x" for cls in ("short", "long") for k in _SLO_SHOWN
)


def markdown_table(result: Mapping[str, Any]) -> str:
    """Render a scheduler benchmark result as GitHub markdown tables.

    One row per policy and lane (waits, slowdown), one row per policy (utilisation,
    fairness), one per policy of the short and long classes (waits, completions, SLO
    attainment at 1.5, 2 and 5x standalone latency), then the targets and the ETA
    accuracy when the result has them.
    """
    policies: Mapping[str, Mapping[str, Any]] = result.get("policies", {})
    parts = [f"Scheduler benchmark over {_number(result.get('jobs'))} jobs."]

    lane_rows = []
    for name, figures in policies.items():
        lanes: Mapping[str, Mapping[str, Any]] = figures.get("lanes", {})
        for lane in _ordered_lanes(lanes):
            cells = [_number(lanes[lane].get(key)) for key, _ in _LANE_COLUMNS]
            lane_rows.append([name, lane, *cells])
    parts.append(
        _table(
            ["policy", "lane", *(title for _, title in _LANE_COLUMNS)], lane_rows, text_columns=2
        )
    )

    policy_rows = [
        [name, *(_number(figures.get(key)) for key, _ in _POLICY_COLUMNS)]
        for name, figures in policies.items()
    ]
    parts.append(
        _table(["policy", *(title for _, title in _POLICY_COLUMNS)], policy_rows, text_columns=1)
    )

    class_rows = [_class_row(name, figures) for name, figures in policies.items()]
    if any(row is not None for row in class_rows):
        parts.append(
            _table(
                ["policy", *(title for _, _, title in _CLASS_COLUMNS), *_SLO_TITLES],
                [row for row in class_rows if row is not None],
                text_columns=1,
            )
        )

    targets: Mapping[str, Mapping[str, Any]] | None = result.get("targets")
    if targets:
        target_rows = [
            [
                name,
                _number(target.get("value")),
                _number(target.get("target")),
                "ok" if target.get("ok") else "FAIL",
            ]
            for name, target in targets.items()
        ]
        parts.append(_table(["target", "value", "required", "ok"], target_rows, text_columns=1))

    eta: Mapping[str, Any] | None = result.get("eta")
    if eta:
        parts.append(
            f"ETA accuracy: median relative error {_number(eta.get('median_rel_error'))} "
            f"over {_number(eta.get('jobs'))} jobs."
        )
    return "\n\n".join(parts) + "\n"


def write_plots(
    out_dir: Path,
    waits: Mapping[str, Mapping[str, Sequence[float]]],
    busy: Mapping[str, Sequence[tuple[float, float]]],
) -> list[Path]:
    """Draw ``wait_cdf_<lane>.png`` per lane (a CDF line per policy, log wait axis) and
    ``busy_fraction.png`` (a line per policy over time); return the written paths.

    ``waits[policy][lane]`` are wait seconds, ``busy[policy]`` ``(time_s, fraction)`` points.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    lanes = _ordered_lanes(lane for per_lane in waits.values() for lane in per_lane)
    for lane in lanes:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        try:
            for policy, per_lane in waits.items():
                values = sorted(max(wait_s, WAIT_FLOOR_S) for wait_s in per_lane.get(lane, ()))
                if not values:
                    continue
                fractions = [(rank + 1) / len(values) for rank in range(len(values))]
                ax.step(values, fractions, where="post", label=policy)
            ax.set_xscale("log")
            ax.set_xlim(left=WAIT_FLOOR_S)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel(f"wait s (below {WAIT_FLOOR_S} s drawn at {WAIT_FLOOR_S} s)")
            ax.set_ylabel("fraction of jobs")
            ax.set_title(f"Wait CDF, {lane} lane")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
            path = out_dir / f"wait_cdf_{_file_safe(lane)}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            written.append(path)
        finally:
            plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for policy, points in busy.items():
            if points:
                ax.plot([t_s for t_s, _ in points], [frac for _, frac in points], label=policy)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("time s")
        ax.set_ylabel("busy fraction")
        ax.set_title("Device busy fraction")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        path = out_dir / "busy_fraction.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        written.append(path)
    finally:
        plt.close(fig)
    return written


def write_report(
    out_dir: Path,
    result: Mapping[str, Any],
    waits: Mapping[str, Mapping[str, Sequence[float]]],
    busy: Mapping[str, Sequence[tuple[float, float]]],
) -> list[Path]:
    """Create ``out_dir`` with ``report.md``, ``result.json`` and the plots; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(out_dir, waits, busy)
    links = "\n".join(f"![{path.stem}]({path.name})" for path in plots)
    report = out_dir / "report.md"
    report.write_text(
        "# imagine bench scheduler\n\n" + markdown_table(result) + "\n" + links + "\n",
        encoding="utf-8",
    )
    result_path = out_dir / "result.json"
    result_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return [report, result_path, *plots]


def _class_row(name: str, figures: Mapping[str, Any]) -> list[str] | None:
    classes: Mapping[str, Mapping[str, Any]] | None = figures.get("classes")
    if not classes:
        return None
    cells = [_number(classes.get(cls, {}).get(key)) for cls, key, _ in _CLASS_COLUMNS]
    for cls in ("short", "long"):
        slo: Mapping[str, Any] = classes.get(cls, {}).get("slo_attainment", {})
        cells.extend(_number(slo.get(k)) for k in _SLO_SHOWN)
    return [name, *cells]


def _ordered_lanes(lanes: Iterable[str]) -> list[str]:
    # Known lanes in service order, then any other name in first-seen order.
    seen = list(dict.fromkeys(lanes))
    known = [lane.value for lane in LANE_ORDER if lane.value in seen]
    return known + [lane for lane in seen if lane not in known]


def _number(value: object) -> str:
    """Three significant digits, without exponents for everyday magnitudes."""
    if value is None:
        return _MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        # .3g would write 1234.5 as 1.23e+03; whole numbers read better from there on.
        return f"{value:.0f}" if abs(value) >= 999.5 else f"{value:.3g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, text_columns: int) -> str:
    # The leading name columns left-aligned, the figures after them right-aligned.
    align = ["---"] * text_columns + ["--:"] * (len(header) - text_columns)
    lines = [_row(header), "|" + "|".join(align) + "|"]
    lines.extend(_row(row) for row in rows)
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
