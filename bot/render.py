"""What the bot's messages say: progress, results, refusals and lists. Pure text and
button layouts, no discord calls, so every wording is tested without a client."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from backend.models import JobState
from backend.prompt import format_prompt
from backend.service import JobKind, JobView, QueueStatus

# Discord refuses message content over 2,000 characters; the prompt gets what the
# status line leaves.
MAX_CONTENT_CHARS = 2000
MAX_PROMPT_SHOWN = 1500
BUTTON_PREFIX = "im"


class Action(StrEnum):
    """What a button under a job does; its value is the one in the custom id."""

    UPSCALE = "u"
    VARIATION = "v"
    REROLL = "r"
    CANCEL = "x"


@dataclass(frozen=True, slots=True)
class ButtonSpec:
    """One button: its action, the sample it acts on (1-based; 0 for none), label, row."""

    action: Action
    index: int
    label: str
    row: int
    emoji: str | None = None

    def custom_id(self, job_id: str) -> str:
        """The persistent custom id: the state a click carries back (action, sample, job)."""
        return custom_id(self.action, self.index, job_id)


def custom_id(action: Action, index: int, job_id: str) -> str:
    """``im:<action>:<index>:<job id>``, at most 100 characters as Discord allows."""
    return f"{BUTTON_PREFIX}:{action.value}:{index}:{job_id}"


@dataclass(frozen=True, slots=True)
class Header:
    """The first line of every message about a job."""

    prompt: str
    user_id: int
    speed: str | None
    kind: JobKind
    # 1-based sample of the parent a variation or an upscale works from.
    parent_index: int | None = None
    parent_link: str | None = None

    @classmethod
    def of(cls, view: JobView, parent_link: str | None = None) -> Header:
        """The header of a stored job."""
        return cls(format_prompt(view.spec), view.user_id, view.speed, view.kind, None, parent_link)

    def line(self, status: str) -> str:
        """``**prompt** - <@user> (status)``, clipped to fit a message."""
        prompt = clip(self.prompt, MAX_PROMPT_SHOWN)
        what = {
            JobKind.IMAGINE: "",
            JobKind.UPSCALE: "Upscale of ",
            JobKind.VARIATION: "Variation of ",
            JobKind.REROLL: "Reroll of ",
        }[self.kind]
        parent = f" [parent]({self.parent_link})" if self.parent_link and what else ""
        speed = f", {self.speed}" if self.speed else ""
        return f"{what}**{escape(prompt)}** - <@{self.user_id}> ({status}{speed}){parent}"


def waiting(header: Header, status: QueueStatus | None) -> str:
    """Queued: the place in line and the expected wait (unknown: just waiting)."""
    if status is None:
        return header.line("Waiting to start")
    about = format_duration(status.start_in_s)
    return header.line(f"Waiting to start (position {status.position + 1}, about {about})")


def running(header: Header, step: int, total: int) -> str:
    """Denoising: the share of steps done."""
    return header.line(f"{percent(step, total)}%")


def paused(header: Header, step: int, total: int) -> str:
    """Preempted at a step boundary: its state is kept and it resumes."""
    done = f" at {percent(step, total)}%" if total else ""
    return header.line(f"paused{done}: a faster job took the GPU")


def finished(header: Header) -> str:
    """Succeeded: the grid is attached below this line."""
    return header.line("done")


def failed(header: Header, reason: str | None, job_id: str) -> str:
    """Failed for good, with the reason and the id to quote."""
    return header.line("failed") + f"\n{clip(reason or 'unknown error', 300)} (job `{job_id}`)"


def cancelled(header: Header) -> str:
    """Cancelled by its user or an admin."""
    return header.line("cancelled")


def moved(header: Header, link: str) -> str:
    """The progress message once the result went out as a message of its own."""
    return header.line(f"done, [see the result]({link})")


def percent(step: int, total: int) -> int:
    """Whole percent of ``step`` out of ``total`` (0 when nothing is known)."""
    return 0 if total <= 0 else min(100, math.floor(100 * step / total))


def format_duration(seconds: float | None) -> str:
    """``12 s``, ``3 min``, ``2 h``: rounded up, never 0."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds < 90 * 60:
        return f"{math.ceil(seconds / 60)} min"
    return f"{math.ceil(seconds / 3600)} h"


def result_buttons(view: JobView) -> list[ButtonSpec]:
    """U and V per sample (up to 4 each), then reroll; a single sample gets V and reroll."""
    samples = min(view.spec.n, 4)
    buttons: list[ButtonSpec] = []
    if samples > 1:
        buttons += [ButtonSpec(Action.UPSCALE, i, f"U{i}", 0) for i in range(1, samples + 1)]
    buttons += [ButtonSpec(Action.VARIATION, i, f"V{i}", 1) for i in range(1, samples + 1)]
    buttons.append(ButtonSpec(Action.REROLL, 0, "", 1, emoji="🔄"))
    return buttons


def progress_buttons() -> list[ButtonSpec]:
    """The cancel button while the job is queued or running."""
    return [ButtonSpec(Action.CANCEL, 0, "Cancel", 0, emoji="✖")]


def job_line(view: JobView, status: QueueStatus | None = None) -> str:
    """One line of /queue and /info: id, state, place and prompt."""
    if view.state is JobState.QUEUED and status is not None:
        about = format_duration(status.start_in_s)
        where = f"queued, position {status.position + 1}, starts in about {about}"
    elif view.state is JobState.RUNNING and view.total_steps:
        where = f"running, {percent(view.step, view.total_steps)}%"
    else:
        where = view.state.value
    return f"`{view.id}` {where}: {escape(clip(view.spec.prompt, 80))}"


def relative_time(epoch_s: float) -> str:
    """A Discord timestamp shown relative to now ("in 20 seconds")."""
    return f"<t:{math.ceil(epoch_s)}:R>"


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape(text: str) -> str:
    """Text with Discord markdown and mentions neutralised."""
    for char in ("\\", "*", "_", "~", "`", "|", ">"):
        text = text.replace(char, "\\" + char)
    return text.replace("@", "@\u200b")


def message_link(guild_id: int | None, channel_id: int, message_id: int) -> str:
    """The jump URL of a message (``@me`` for direct messages)."""
    where = guild_id if guild_id is not None else "@me"
    return f"https://discord.com/channels/{where}/{channel_id}/{message_id}"
