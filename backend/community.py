"""The people side of the service, as a front end sees it: accounts and their
preferences, tiers, bans, banned words, the audit log, and what the front end must
remember to deliver results (progress messages, clicks acted on, notes)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from backend.admission.moderation import BannedWords, normalise_entry
from backend.clock import usage_month, wall_ms
from backend.errors import BadInputError, BannedUserError, BannedWordError
from backend.models import Speed
from config.settings import SchedulerSettings
from storage.db import Database
from storage.repos.deliveries import DeliveryRow

log = structlog.get_logger(__name__)

# The longest prompt suffix a user may keep in their preferences.
MAX_SUFFIX_CHARS = 200


@dataclass(frozen=True, slots=True)
class Preferences:
    """A user's defaults: flags typed in a prompt win over them."""

    speed: Speed | None = None
    # An aspect ratio as the prompt writes it ("16:9"); None: the model's default.
    aspect: str | None = None
    private: bool = False
    # Appended to every prompt (before the prompt's own flags are read).
    suffix: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The preferences as plain JSON values."""
        data = asdict(self)
        data["speed"] = self.speed.value if self.speed is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preferences:
        """Preferences from :meth:`to_dict`'s form; unknown or broken keys are dropped."""
        speed = data.get("speed")
        aspect = data.get("aspect")
        return cls(
            speed=Speed(speed) if speed in {s.value for s in Speed} else None,
            aspect=aspect if isinstance(aspect, str) and aspect else None,
            private=bool(data.get("private", False)),
            suffix=str(data.get("suffix") or "")[:MAX_SUFFIX_CHARS],
        )


@dataclass(frozen=True, slots=True)
class Account:
    """What the service knows of a user: assigned tier, ban, preferences and this
    month's fast-lane use (``fast_budget_s`` None: unlimited)."""

    user_id: int
    assigned_tier: str | None
    banned: bool
    ban_reason: str | None
    preferences: Preferences
    fast_used_s: float
    jobs_this_month: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action: who, what, on whom and when."""

    at_ms: int
    actor_id: int
    action: str
    target: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delivery:
    """A job the front end follows: where its progress message is and how its user is
    reached (an interaction token until it expires, then the bot's own token)."""

    job_id: str
    user_id: int
    channel_id: int | None
    message_id: int | None
    application_id: int | None
    interaction_token: str | None
    token_expires_at_ms: int | None
    private: bool
    delivered: bool
    created_at_ms: int = 0

    def token_valid(self, now_ms: int, margin_ms: int = 30_000) -> bool:
        """Whether the interaction token still works, with ``margin_ms`` to spare."""
        return (
            self.interaction_token is not None
            and self.token_expires_at_ms is not None
            and now_ms + margin_ms < self.token_expires_at_ms
        )


class Community:
    """Accounts, moderation and delivery records over the system of record."""

    def __init__(self, db: Database, scheduler: SchedulerSettings) -> None:
        self._db = db
        self._scheduler = scheduler
        self._words: BannedWords | None = None
        self._words_lock = asyncio.Lock()

    # -- accounts ----------------------------------------------------------------------

    async def check_user(self, user_id: int) -> None:
        """Raise BannedUserError if the user is banned (one indexed read, no parsing)."""
        user = await self._db.users.get(user_id)
        if user is not None and user.banned:
            raise BannedUserError(user_id, user.ban_reason)

    async def account(self, user_id: int) -> Account:
        """The user's account (created on first sight)."""
        user = await self._db.users.ensure(user_id)
        usage = await self._db.usage.get(user_id, usage_month(wall_ms()))
        return Account(
            user_id=user_id,
            assigned_tier=user.tier if user.tier_set_by is not None else None,
            banned=user.banned,
            ban_reason=user.ban_reason,
            preferences=Preferences.from_dict(user.settings.get("preferences", {})),
            fast_used_s=usage.fast_gpu_s,
            jobs_this_month=usage.jobs,
        )

    def fast_budget_s(self, tier: str) -> float | None:
        """The tier's monthly fast-lane allowance in GPU-seconds; None: unlimited."""
        settings = self._scheduler.tiers.get(tier)
        return settings.fast_budget_gpu_s if settings is not None else None

    async def set_preferences(self, user_id: int, preferences: Preferences) -> Preferences:
        """Store the user's preferences; a suffix is checked for banned words first."""
        if len(preferences.suffix) > MAX_SUFFIX_CHARS:
            raise BadInputError(f"a prompt suffix holds at most {MAX_SUFFIX_CHARS} characters")
        if preferences.suffix:
            await self.check_prompt(preferences.suffix, user_id)
        user = await self._db.users.ensure(user_id)
        settings = {**user.settings, "preferences": preferences.to_dict()}
        await self._db.users.update_settings(user_id, settings)
        return preferences

    async def set_tier(self, actor_id: int, user_id: int, tier: str | None) -> None:
        """Assign ``tier`` (None: drop the assignment, roles decide again); audited."""
        if tier is None:
            await self._db.users.clear_tier(user_id, self._scheduler.default_tier)
        else:
            if tier not in self._scheduler.tiers:
                names = ", ".join(sorted(self._scheduler.tiers))
                raise BadInputError(f"unknown tier {tier!r}; tiers: {names}")
            await self._db.users.set_tier(user_id, tier, set_by=actor_id)
        await self.record(actor_id, "tier.set", str(user_id), {"tier": tier})

    async def ban(self, actor_id: int, user_id: int, reason: str | None) -> None:
        """Ban the user (their next request is refused at once); audited."""
        await self._db.users.set_banned(user_id, True, reason)
        await self.record(actor_id, "ban", str(user_id), {"reason": reason})

    async def unban(self, actor_id: int, user_id: int) -> bool:
        """Lift the user's ban; False if they were not banned. Audited."""
        user = await self._db.users.get(user_id)
        was = user is not None and user.banned
        await self._db.users.set_banned(user_id, False)
        await self.record(actor_id, "unban", str(user_id), {"was_banned": was})
        return was

    # -- banned words ------------------------------------------------------------------

    async def check_prompt(self, text: str, user_id: int | None = None) -> None:
        """Raise BannedWordError if ``text`` holds a banned word (logged with the match)."""
        words = await self._banned_words()
        match = words.find(text)
        if match is not None:
            log.warning("banned_word", user_id=user_id, entry=match.entry, matched=match.matched)
            raise BannedWordError(match.entry, match.matched)

    async def add_banned_word(self, actor_id: int, word: str) -> bool:
        """Ban ``word`` (normalised as prompts are); False if it already was. Audited."""
        try:
            entry = normalise_entry(word)
        except ValueError as exc:
            raise BadInputError(f"cannot ban {word!r}: {exc}") from exc
        added = await self._db.banned_words.add(entry, actor_id)
        await self.record(actor_id, "banned_words.add", None, {"word": entry, "added": added})
        self._words = None
        return added

    async def remove_banned_word(self, actor_id: int, word: str) -> bool:
        """Unban ``word``; False if it was not banned. Audited."""
        try:
            entry = normalise_entry(word)
        except ValueError as exc:
            raise BadInputError(f"{word!r} is not a banned word: {exc}") from exc
        removed = await self._db.banned_words.remove(entry)
        await self.record(
            actor_id, "banned_words.remove", None, {"word": entry, "removed": removed}
        )
        self._words = None
        return removed

    async def banned_words(self) -> list[str]:
        """Every banned word, sorted."""
        return await self._db.banned_words.list()

    async def _banned_words(self) -> BannedWords:
        async with self._words_lock:
            if self._words is None:
                self._words = BannedWords(await self._db.banned_words.list())
            return self._words

    # -- audit -------------------------------------------------------------------------

    async def record(
        self,
        actor_id: int,
        action: str,
        target: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append an admin action to the audit log (and the log)."""
        await record_admin_action(self._db, actor_id, action, target, detail)

    async def audit_log(self, limit: int = 20) -> list[AuditEntry]:
        """The ``limit`` latest admin actions, newest first."""
        rows = await self._db.audit.recent(limit)
        return [AuditEntry(r.at_ms, r.actor_id, r.action, r.target, r.detail) for r in rows]

    # -- deliveries, clicks, notes -----------------------------------------------------

    async def follow(
        self,
        job_id: str,
        user_id: int,
        *,
        channel_id: int | None,
        application_id: int | None,
        interaction_token: str | None,
        token_expires_at_ms: int | None,
        private: bool,
    ) -> None:
        """Remember to deliver ``job_id`` (idempotent)."""
        await self._db.deliveries.record(
            job_id,
            user_id,
            channel_id=channel_id,
            application_id=application_id,
            interaction_token=interaction_token,
            token_expires_at_ms=token_expires_at_ms,
            private=private,
        )

    async def unfollow(self, job_id: str) -> None:
        """Drop the record of a job that was refused before it was stored."""
        await self._db.deliveries.forget(job_id)

    async def delivery(self, job_id: str) -> Delivery | None:
        """The job's delivery record, or None if the front end never followed it."""
        row = await self._db.deliveries.get(job_id)
        return _delivery(row) if row is not None else None

    async def pending_deliveries(self) -> list[Delivery]:
        """Followed jobs whose result has not reached its user, oldest first."""
        return [_delivery(row) for row in await self._db.deliveries.pending()]

    async def progress_message_posted(
        self, job_id: str, channel_id: int | None, message_id: int
    ) -> None:
        """The job's progress message is ``message_id`` in ``channel_id``."""
        await self._db.deliveries.set_message(job_id, channel_id, message_id)

    async def delivered(self, job_id: str, message_id: int | None) -> bool:
        """The job's result reached its user; False if that was recorded before."""
        first = await self._db.deliveries.mark_delivered(job_id, message_id)
        if first:
            await self._db.jobs.mark_delivered(job_id)
        return first

    async def claim_click(self, job_id: str, action: str, user_id: int, new_job_id: str) -> str:
        """The job this click makes: ``new_job_id`` the first time, the earlier one after."""
        return await self._db.clicks.claim(job_id, action, user_id, new_job_id)

    async def release_click(self, job_id: str, action: str, user_id: int) -> None:
        """Forget a click whose job was refused, so a later click can try again."""
        await self._db.clicks.release(job_id, action, user_id)

    async def add_note(self, user_id: int, text: str) -> None:
        """Keep ``text`` for the user's next command (their direct messages are closed)."""
        await self._db.notes.add(user_id, text)

    async def take_notes(self, user_id: int) -> list[str]:
        """The user's notes not shown yet, oldest first; each is handed out once."""
        return [note.text for note in await self._db.notes.take(user_id)]


async def record_admin_action(
    db: Database,
    actor_id: int,
    action: str,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append an admin action to the audit log, and log it as ``admin_action``."""
    await db.audit.record(actor_id, action, target, detail)
    log.info("admin_action", actor_id=actor_id, action=action, target=target, detail=detail)


def _delivery(row: DeliveryRow) -> Delivery:
    return Delivery(
        job_id=row.job_id,
        user_id=row.user_id,
        channel_id=row.channel_id,
        message_id=row.message_id,
        application_id=row.application_id,
        interaction_token=row.interaction_token,
        token_expires_at_ms=row.token_expires_at_ms,
        private=row.private,
        delivered=row.delivered_at_ms is not None,
        created_at_ms=row.created_at_ms,
    )
