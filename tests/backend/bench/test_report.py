"""Scheduler benchmark report: markdown tables, PNG plots, files on disk, lazy matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from backend.bench.report import markdown_table, write_plots, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LANES = ("realtime", "batch", "background")


def _lane(jobs: int, p50: float, p99: float, slowdown: float) -> dict[str, Any]:
    return {"jobs": jobs, "p50_wait_s": p50, "p99_wait_s": p99, "p99_slowdown": slowdown}


def _result() -> dict[str, Any]:
    return {
        "jobs": 3000,
        "policies": {
            "fifo": {
                "lanes": {
                    "batch": _lane(600, 12.3456, 250.0, 41.0),
                    "realtime": _lane(2300, 0.0, 8.765, 3.14159),
                    "background": _lane(100, 1234.5, 9876.54, 0.000123456),
                },
                "busy_fraction": 0.912345,
                "images_per_s": 7.891,
                "mean_batch": 3.5,
                "preemptions_per_1000": 0.0,
                "pauses_per_1000": 0.0,
                "jain": 0.4567,
                "max_wait_lowest_tier_s": 345.678,
            },
            "fair": {
                "lanes": {lane: _lane(1000, 0.5, 2.5, 1.25) for lane in LANES},
                "busy_fraction": 0.85,
                "images_per_s": 6.5,
                "mean_batch": 2.0,
                "preemptions_per_1000": 12.0,
                "pauses_per_1000": 30.0,
                "jain": 0.987,
                "max_wait_lowest_tier_s": 60.0,
            },
        },
    }


def _rows(markdown: str, first_cell: str) -> list[list[str]]:
    """Cells of the table rows whose first cell is ``first_cell``."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]
    return [row for row in rows if row[0] == first_cell]


def test_markdown_has_a_row_per_policy_and_lane_with_compact_numbers() -> None:
    """Each policy has one row per lane (service order) with figures at 3 significant digits."""
    markdown = markdown_table(_result())
    assert "3000 jobs" in markdown
    fifo = _rows(markdown, "fifo")
    lane_rows = [row for row in fifo if len(row) == 6]
    assert [row[1] for row in lane_rows] == list(LANES)
    assert lane_rows[0] == ["fifo", "realtime", "2300", "0", "8.77", "3.14"]
    assert lane_rows[1] == ["fifo", "batch", "600", "12.3", "250", "41"]
    assert lane_rows[2] == ["fifo", "background", "100", "1234", "9877", "0.000123"]
    assert [row[1] for row in _rows(markdown, "fair") if len(row) == 6] == list(LANES)


def test_markdown_has_a_row_per_policy_with_utilisation_and_fairness() -> None:
    """The second table gives busy, images/s, mean batch, evictions and pauses per 1,000
    jobs, Jain, max wait."""
    markdown = markdown_table(_result())
    header = _rows(markdown, "policy")[1]
    assert header == [
        "policy",
        "busy",
        "images/s",
        "mean batch",
        "evictions/1000",
        "pauses/1000",
        "Jain",
        "max wait lowest tier s",
    ]
    assert ["fifo", "0.912", "7.89", "3.5", "0", "0", "0.457", "346"] in _rows(markdown, "fifo")
    assert ["fair", "0.85", "6.5", "2", "12", "30", "0.987", "60"] in _rows(markdown, "fair")


def test_markdown_renders_targets_and_eta_only_when_present() -> None:
    """Targets become a table with ok/FAIL, and the ETA error a line; absent, neither shows."""
    plain = markdown_table(_result())
    assert "| target |" not in plain and "ETA" not in plain
    result = _result()
    result["targets"] = {
        "realtime_p99_wait_s": {"value": 8.765, "target": 10.0, "ok": True},
        "jain_min": {"value": 0.4567, "target": 0.9, "ok": False},
    }
    result["eta"] = {"median_rel_error": 0.08765, "jobs": 2990}
    markdown = markdown_table(result)
    assert _rows(markdown, "realtime_p99_wait_s") == [["realtime_p99_wait_s", "8.77", "10", "ok"]]
    assert _rows(markdown, "jain_min") == [["jain_min", "0.457", "0.9", "FAIL"]]
    assert "median relative error 0.0877 over 2990 jobs" in markdown


Waits = dict[str, dict[str, list[float]]]
Busy = dict[str, list[tuple[float, float]]]


def _plot_inputs() -> tuple[Waits, Busy]:
    waits: Waits = {
        "fifo": {"realtime": [0.0, 0.2, 3.0], "batch": [5.0, 60.0]},
        "fair": {"realtime": [0.0, 0.0, 0.1], "batch": [], "background": [100.0]},
    }
    busy: Busy = {"fifo": [(0.0, 0.0), (60.0, 0.9)], "fair": [(0.0, 0.1), (60.0, 0.8)]}
    return waits, busy


def test_plots_are_png_files_one_per_lane_plus_busy(tmp_path: Path) -> None:
    """write_plots draws a wait CDF per lane seen and the busy fraction, each a valid PNG."""
    waits, busy = _plot_inputs()
    paths = write_plots(tmp_path, waits, busy)
    assert [path.name for path in paths] == [
        "wait_cdf_realtime.png",
        "wait_cdf_batch.png",
        "wait_cdf_background.png",
        "busy_fraction.png",
    ]
    for path in paths:
        assert path.parent == tmp_path and path.read_bytes()[:8] == PNG_SIGNATURE


def test_write_report_writes_markdown_json_and_plots(tmp_path: Path) -> None:
    """write_report creates the folder with report.md, result.json (same result) and plots."""
    waits, busy = _plot_inputs()
    out_dir = tmp_path / "nested" / "report"
    paths = write_report(out_dir, _result(), waits, busy)
    names = {path.name for path in paths}
    assert {"report.md", "result.json", "busy_fraction.png", "wait_cdf_batch.png"} <= names
    assert all(path.is_file() for path in paths)
    assert json.loads((out_dir / "result.json").read_text()) == _result()
    report = (out_dir / "report.md").read_text()
    assert markdown_table(_result()) in report and "(busy_fraction.png)" in report


def test_importing_report_does_not_import_matplotlib() -> None:
    """backend.bench.report loads without matplotlib; only write_plots imports it."""
    code = (
        "import sys\n"
        "import backend.bench.report\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
