"""Domain types shared by the bot, the queue, the scheduler and the engine.

Pure values only: this module imports no torch, redis or discord.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SEED_MAX = 2**32 - 1
LATENT_SCALE = 8
SIZE_MULTIPLE = 64

# Names the prompt accepts for ``--scheduler``; the engine maps each to a diffusers class.
SCHEDULER_NAMES: tuple[str, ...] = (
    "euler",
    "euler_a",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "ddim",
    "lcm",
    "unipc",
)


class Lane(StrEnum):
    """Service lane, chosen by the scheduler from a job's estimated cost."""

    REALTIME = "realtime"
    BATCH = "batch"
    BACKGROUND = "background"


class Speed(StrEnum):
    """The lane a user asked for with ``--fast``, ``--relax`` or ``--turbo``."""

    FAST = "fast"
    RELAX = "relax"
    TURBO = "turbo"


class JobState(StrEnum):
    """Where a job is in its life; ``delivered`` is a timestamp, not a state."""

    SUBMITTED = "submitted"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Whether the job is over (succeeded, failed or cancelled)."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated generation request, as parsed from a prompt.

    ``steps``, ``guidance``, ``scheduler`` and ``model`` are ``None`` when the prompt
    left them to the model's defaults. ``aspect`` is the reduced ratio the user asked
    for; ``width`` and ``height`` are the pixel size it resolved to.
    """

    prompt: str
    seed: int
    width: int
    height: int
    aspect: tuple[int, int] = (1, 1)
    negative_prompt: str = ""
    steps: int | None = None
    guidance: float | None = None
    speed: Speed | None = None
    model: str | None = None
    n: int = 4
    scheduler: str | None = None

    def to_json(self) -> str:
        """Serialize to compact JSON (the form stored in SQLite and queues)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON values (aspect as a list, speed as its value)."""
        data = dataclasses.asdict(self)
        data["aspect"] = list(self.aspect)
        data["speed"] = self.speed.value if self.speed is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """A spec from :meth:`to_dict`'s form; unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["aspect"] = tuple(values.get("aspect", (1, 1)))
        if values.get("speed") is not None:
            values["speed"] = Speed(values["speed"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """A spec from :meth:`to_json`'s text."""
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True, slots=True)
class Job:
    """A spec with its identity and routing data, as it travels through the queue."""

    id: str
    spec: JobSpec
    user_id: int
    tier: str = "free"
    lane: Lane = Lane.REALTIME
    guild_id: int | None = None
    channel_id: int | None = None
    submitted_at_ms: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    # Scheduling data stamped at submit: estimated device-seconds alone, the tier's
    # fair-share weight, and how many of the user's jobs may run at once (0: no cap).
    cost_s: float = 0.0
    weight: float = 1.0
    max_running: int = 0

    def to_json(self) -> str:
        """Serialize to compact JSON (the form queues and SQLite store)."""
        return json.dumps(
            {
                "id": self.id,
                "spec": self.spec.to_dict(),
                "user_id": self.user_id,
                "tier": self.tier,
                "lane": self.lane.value,
                "guild_id": self.guild_id,
                "channel_id": self.channel_id,
                "submitted_at_ms": self.submitted_at_ms,
                "meta": self.meta,
                "cost_s": self.cost_s,
                "weight": self.weight,
                "max_running": self.max_running,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Job:
        """A job from :meth:`to_json`'s text; optional fields it lacks take their defaults."""
        data = json.loads(text)
        return cls(
            id=data["id"],
            spec=JobSpec.from_dict(data["spec"]),
            user_id=int(data["user_id"]),
            tier=data.get("tier", "free"),
            lane=Lane(data.get("lane", Lane.REALTIME)),
            guild_id=data.get("guild_id"),
            channel_id=data.get("channel_id"),
            submitted_at_ms=int(data.get("submitted_at_ms", 0)),
            meta=dict(data.get("meta") or {}),
            cost_s=float(data.get("cost_s", 0.0)),
            weight=float(data.get("weight", 1.0)),
            max_running=int(data.get("max_running", 0)),
        )
