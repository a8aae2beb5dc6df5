"""Errors of the generation service; each carries its data and builds its own message."""

from __future__ import annotations

import math


class BackendError(Exception):
    """Root of every error the backend raises on purpose."""

    exit_status = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInputError(BackendError):
    """The caller asked for something that can never succeed as stated (exit status 2)."""

    exit_status = 2


class PromptError(BadInputError):
    """A prompt or one of its flags is invalid.

    ``flag`` names the offending flag (``"--seed"``), or is ``None`` for the prompt text.
    ``allowed`` says what would have been accepted.
    """

    def __init__(self, flag: str | None, problem: str, allowed: str) -> None:
        self.flag = flag
        self.problem = problem
        self.allowed = allowed
        where = flag if flag is not None else "prompt"
        super().__init__(f"{where}: {problem}; {allowed}")


class UnknownModelError(BadInputError):
    """A job names a model the registry does not declare."""

    def __init__(self, name: str, available: list[str]) -> None:
        self.name = name
        self.available = available
        listed = ", ".join(sorted(available)) or "none configured"
        super().__init__(f"unknown model {name!r}; available models: {listed}")


class ModelLoadError(BackendError):
    """A declared model could not be loaded (missing folder, missing component)."""

    def __init__(self, name: str, source: str, reason: str) -> None:
        self.name = name
        self.source = source
        self.reason = reason
        super().__init__(f"model {name!r} from {source}: {reason}")


class JobFailedError(BackendError):
    """A job ended in failure; ``reason`` is what was recorded for it."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id} failed: {reason}")


class JobError(BackendError):
    """One job cannot continue (bad source image, NaN latents, unreadable checkpoint);
    the others can. ``problem`` is the reason recorded for the job; ``job_id`` names it
    where the raiser knows it."""

    def __init__(self, problem: str, job_id: str | None = None) -> None:
        self.problem = problem
        self.job_id = job_id
        super().__init__(problem)


class CheckpointError(JobError):
    """A checkpoint blob is malformed or was written by an incompatible version."""


class QueueError(BackendError):
    """A queue operation was refused (unknown job, lost lease)."""


class RefusedError(BackendError):
    """Admission control turned a job away; retrying later can succeed (exit status 3).

    ``scope`` names the limit that refused: ``"user"``, ``"guild"``, ``"global"`` or
    ``"queued"``. ``limit`` states it for a person (``"tier free allows 10 jobs per
    minute"``). ``retry_after_s`` is how long until the limit lets one more job in, or
    ``None`` for the queued-jobs cap, which frees up only when one of the user's jobs ends.
    """

    exit_status = 3

    def __init__(self, scope: str, limit: str, retry_after_s: float | None) -> None:
        self.scope = scope
        self.limit = limit
        self.retry_after_s = retry_after_s
        kind = "queue limit" if scope == "queued" else "rate limit"
        if retry_after_s is None:
            when = "retry when one of your jobs finishes"
        else:
            # Rounded up, so a caller who waits the printed time is not early; the slack
            # keeps float noise (6.000000000000001) from showing as 6.1.
            when = f"retry in {math.ceil(retry_after_s * 10 - 1e-6) / 10:.1f} s"
        super().__init__(f"{kind}: {limit}; {when}")


class LeaseLostError(QueueError):
    """A lease is no longer its holder's: another claim of the job superseded it, or
    the queue has no job left for the call to act on. The holder stops its copy and
    discards its result; whoever holds the job now keeps it. ``reason`` says which
    (one of ``backend.queue.base.LostBecause``)."""

    def __init__(self, job_id: str, worker_id: str, reason: str) -> None:
        self.job_id = job_id
        self.worker_id = worker_id
        self.reason = reason
        super().__init__(f"lease on job {job_id} is no longer held by {worker_id}: {reason}")


class QueueUnavailableError(QueueError):
    """The queue's store cannot be reached (connection refused or dropped, timeout);
    the same call can succeed once it is back. ``namespace`` names the queue,
    ``reason`` the failure as the client reported it."""

    def __init__(self, namespace: str, reason: str) -> None:
        self.namespace = namespace
        self.reason = reason
        super().__init__(f"queue {namespace!r}: Redis unreachable: {reason}")


class BannedUserError(BadInputError):
    """The user is banned from the service; ``reason`` is the admin's, if one was given."""

    def __init__(self, user_id: int, reason: str | None) -> None:
        self.user_id = user_id
        self.reason = reason
        because = f": {reason}" if reason else ""
        super().__init__(f"you are banned from this service{because}")


class BannedWordError(BadInputError):
    """A prompt holds a banned word. The message says so without naming the list entry;
    ``entry`` and ``matched`` (normalised) are for the log only."""

    def __init__(self, entry: str, matched: str) -> None:
        self.entry = entry
        self.matched = matched
        super().__init__("your prompt contains a banned word; rephrase it and try again")
