"""`imagine bench ...`: each benchmark's flags reach the backend's typed calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.bench.policies import POLICIES
from backend.bench.scheduler import check_policies
from backend.errors import BadInputError
from cli import main


def test_queue_flags_reach_the_bench_and_end_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    """The command's flags reach the bench: one backend, the given preload, JSON last."""
    args = ["--backend", "memory", "--ops", "20", "--preload", "30", "--json"]
    assert main(["bench", "queue", *args]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(result["backends"]) == ["memory"]
    assert result["backends"]["memory"]["queued"] == 30


def test_queue_refuses_a_bad_count(capsys: pytest.CaptureFixture[str]) -> None:
    """--ops must be a positive whole number: a usage error, exit status 2."""
    with pytest.raises(SystemExit) as exited:
        main(["bench", "queue", "--ops", "0"])
    assert exited.value.code == 2
    assert "--ops: 0 must be at least 1" in capsys.readouterr().err


def test_queue_memory_only_needs_no_valid_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A memory-only run reads no settings, so a bad setting does not stop it."""
    monkeypatch.setenv("IMAGINE_LOG__LEVEL", "loud")
    assert main(["bench", "queue", "--backend", "memory", "--ops", "5", "--preload", "0"]) == 0
    assert "memory" in capsys.readouterr().out


def test_scheduler_policies_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown policy in --policies exits 2 naming it and the known ones."""
    assert main(["bench", "scheduler", "--policies", "fifo,nope", "--jobs", "10"]) == 2
    error = capsys.readouterr().err
    assert "unknown policies ['nope']" in error and ", ".join(POLICIES) in error


def test_check_policies_refuses_none_and_keeps_order() -> None:
    """The backend keeps the given order and refuses an empty selection."""
    assert check_policies(["ours", "fifo"]) == ("ours", "fifo")
    with pytest.raises(BadInputError):
        check_policies([])


def test_scheduler_subset_of_policies_and_saved_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--policies runs only the chosen policies and --save-trace writes the trace used."""
    saved = tmp_path / "trace.jsonl"
    args = ["--jobs", "40", "--policies", "fifo, ours", "--save-trace", str(saved), "--json"]
    assert main(["bench", "scheduler", *args]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(result["policies"]) == ["fifo", "ours"] and result["jobs"] == 40
    assert len(saved.read_text().splitlines()) == 40


def test_scheduler_unreadable_step_times_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--step-times naming a file that is not an engine result exits 2 naming the flag."""
    bad = tmp_path / "engine.json"
    bad.write_text("not json\n")
    assert main(["bench", "scheduler", "--jobs", "10", "--step-times", str(bad)]) == 2
    assert f"--step-times {bad}" in capsys.readouterr().err


def test_real_refuses_step_times(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--step-times belongs to the simulation: --real refuses it with exit status 2."""
    assert main(["bench", "scheduler", "--real", "--step-times", str(tmp_path / "e.json")]) == 2
    assert "--step-times" in capsys.readouterr().err


def test_scheduler_no_admission_lets_every_job_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--no-admission reaches the simulation: a free user's burst is refused only
    without the flag."""
    trace = tmp_path / "t.jsonl"
    line = {"user": "f", "tier": "free", "steps": 4, "width": 512, "height": 512, "n": 1}
    trace.write_text(
        "".join(json.dumps({**line, "t": i * 0.1, "lane": None}) + "\n" for i in range(15))
    )
    base = ["bench", "scheduler", "--trace", str(trace), "--policies", "fifo", "--json"]
    assert main(base) == 0
    refused = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert refused["policies"]["fifo"]["refused"]
    assert main([*base, "--no-admission"]) == 0
    admitted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert admitted["policies"]["fifo"]["refused"] == {}


def test_scheduler_resume_costs_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--resume-costs reads an engine result; a file without one exits 2 naming the flag,
    and --real refuses the flag."""
    good = tmp_path / "engine.json"
    figures = {"width": 512, "height": 512, "save_s_per_sample": 0.01, "load_s_per_sample": 0.01}
    good.write_text(json.dumps({"checkpoint": figures}) + "\n")
    args = ["bench", "scheduler", "--jobs", "30", "--policies", "ours", "--json"]
    assert main([*args, "--resume-costs", str(good)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["jobs"] == 30
    bad = tmp_path / "bad.json"
    bad.write_text("{}\n")
    assert main([*args, "--resume-costs", str(bad)]) == 2
    assert f"--resume-costs {bad}" in capsys.readouterr().err
    assert main(["bench", "scheduler", "--real", "--resume-costs", str(good)]) == 2
