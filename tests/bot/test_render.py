"""What the bot's messages say, and the custom ids its buttons carry."""

from __future__ import annotations

from backend.models import JobSpec, JobState, Lane
from backend.service import JobKind, JobView, QueueStatus
from bot import render
from bot.buttons import parse_custom_id
from bot.render import Action, Header


def _view(
    n: int = 4, state: JobState = JobState.SUCCEEDED, prompt: str = "a red circle"
) -> JobView:
    spec = JobSpec(prompt=prompt, seed=7, width=32, height=32, n=n, speed=None)
    return JobView(
        id="a" * 32,
        kind=JobKind.IMAGINE,
        parent_job_id=None,
        user_id=42,
        guild_id=1,
        channel_id=2,
        spec=spec,
        lane=Lane.REALTIME,
        state=state,
        speed="fast",
        step=5,
        total_steps=20,
        error=None,
        submitted_at_ms=0,
        started_at_ms=None,
        finished_at_ms=None,
    )


def test_the_waiting_line_shows_the_prompt_requester_place_and_wait() -> None:
    """Queued: bold prompt, the mention, position counted from 1 and the wait rounded up."""
    header = Header.of(_view())
    text = render.waiting(header, QueueStatus("a" * 32, Lane.REALTIME, 2, 12.2, 20.0))
    assert text.startswith("**a red circle --seed 7 --n 4** - <@42>")
    assert "Waiting to start (position 3, about 13 s" in text and "fast" in text


def test_progress_and_pause_lines_show_whole_percent() -> None:
    """Running shows the floor of the done share; a pause says the GPU was taken."""
    header = Header.of(_view())
    assert "(45%, fast)" in render.running(header, 9, 20)
    assert "paused at 45%: a faster job took the GPU" in render.paused(header, 9, 20)
    assert render.percent(20, 20) == 100 and render.percent(3, 0) == 0


def test_a_huge_prompt_is_clipped_to_fit_one_message() -> None:
    """A 10,000-character prompt still makes a message under Discord's 2,000 characters."""
    header = Header.of(_view(prompt="word " * 2000))
    text = render.failed(header, "x" * 5000, "a" * 32)
    assert len(text) < render.MAX_CONTENT_CHARS and "…" in text


def test_markdown_and_mentions_in_a_prompt_are_neutralised() -> None:
    """A prompt cannot ping @everyone or break the bold."""
    header = Header.of(_view(prompt="**@everyone** `x`"))
    line = header.line("done")
    assert "@everyone" not in line and "\\*\\*" in line and "\\`" in line


def test_result_buttons_follow_the_sample_count() -> None:
    """Four samples: U1-U4 on one row, V1-V4 and reroll on the next; one sample: V1 and reroll."""
    four = render.result_buttons(_view(n=4))
    assert [b.label for b in four if b.row == 0] == ["U1", "U2", "U3", "U4"]
    assert [(b.action, b.index) for b in four if b.row == 1][-1] == (Action.REROLL, 0)
    one = render.result_buttons(_view(n=1))
    assert [b.action for b in one] == [Action.VARIATION, Action.REROLL]


def test_custom_ids_round_trip_and_forged_ones_are_recognised() -> None:
    """A button's custom id parses back; unknown actions and malformed job ids do not."""
    job = "0123456789abcdef" * 2
    for spec in render.result_buttons(_view()) + render.progress_buttons():
        click = parse_custom_id(spec.custom_id(job))
        assert (click.action, click.index, click.job_id) == (spec.action, spec.index, job)
        assert len(spec.custom_id(job)) <= 100
    for forged in (f"im:z:1:{job}", "im:u:1:not-a-job", f"im:u:999:{job}", "im:", "other"):
        assert parse_custom_id(forged).action is None


def test_durations_read_naturally() -> None:
    """Seconds under a minute and a half, then minutes, then hours; never 0."""
    assert [render.format_duration(s) for s in (0.0, 59.2, 200, 7200)] == [
        "1 s",
        "60 s",
        "4 min",
        "2 h",
    ]
