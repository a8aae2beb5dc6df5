"""What the level stores keep: the admin override (set or cleared) and each host's
published load. Plain values with their JSON forms."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from backend.degrade.ladder import Level, LoadSample

OVERRIDE_KEY = "degrade_override"


# A process's published level lasts this many sampling intervals: one missed sample
# (a slow Redis round trip) does not drop it, a dead process stops counting soon.
HOST_TTL_INTERVALS = 3


@dataclass(frozen=True, slots=True)
class Override:
    """An admin's pin of the level, as persisted under ``degrade_override``."""

    level: Level
    actor_id: int
    at_ms: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as stored in the database and the shared store."""
        return {"level": self.level.value, "actor": self.actor_id, "at_ms": self.at_ms}


@dataclass(frozen=True, slots=True)
class Cleared:
    """An admin handed the level back to the load.

    Kept where hosts share the override, so that a host restarting after the clear does
    not bring back the pin its own database still holds.
    """

    actor_id: int
    at_ms: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: an override record whose ``level`` is None."""
        return {"level": None, "actor": self.actor_id, "at_ms": self.at_ms}


OverrideRecord = Override | Cleared


def override_from_dict(value: object) -> OverrideRecord:
    """The record stored as ``value`` (``level`` None: a clear); ValueError if it is none."""
    if not isinstance(value, dict):
        raise ValueError(f"not an override record: {value!r}")
    try:
        actor_id, at_ms, level = int(value["actor"]), int(value["at_ms"]), value["level"]
        return (
            Cleared(actor_id, at_ms) if level is None else Override(Level(level), actor_id, at_ms)
        )
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"not an override record: {value!r}") from exc


@dataclass(frozen=True, slots=True)
class HostLoad:
    """What one process shares with the others: its automatic level and the load behind it.

    ``devices`` counts its local workers; a front end without any shares zero.
    """

    auto_level: Level
    sample: LoadSample
    devices: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as the shared store keeps it (read back by :meth:`from_dict`)."""
        sample = self.sample
        return {
            "auto": self.auto_level.value,
            "queue_len": sample.queue_len,
            "p95_wait_s": sample.p95_wait_s,
            "utilization": sample.utilization,
            "devices": self.devices,
        }

    @classmethod
    def from_dict(cls, value: object) -> HostLoad:
        """The load stored as ``value``; ValueError if it is not one."""
        if not isinstance(value, dict):
            raise ValueError(f"not a host load: {value!r}")
        try:
            sample = LoadSample(
                int(value["queue_len"]), float(value["p95_wait_s"]), float(value["utilization"])
            )
            return cls(Level(value["auto"]), sample, int(value["devices"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"not a host load: {value!r}") from exc


def local_host_id() -> str:
    """This process among the others sharing the level: host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"
