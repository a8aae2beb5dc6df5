"""Admission control: the settings turned into buckets per user (by tier), per guild and
global, and refusals turned into :class:`RefusedError`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backend.admission.base import Bucket, BucketStore, Charge, Scope
from backend.errors import BadInputError, RefusedError

if TYPE_CHECKING:
    from config.settings import AdmissionSettings, TierSettings


@dataclass(frozen=True, slots=True)
class _Limit:
    """A bucket as admission uses it, with the words that explain it to a refused user."""

    bucket: Bucket
    text: str


def _describe_rate(who: str, rate_per_min: float, burst: int | None) -> str:
    text = f"{who} allows {rate_per_min:g} jobs per minute"
    if burst is not None and burst != rate_per_min:
        text += f" in bursts of up to {burst}"
    return text


class Admission:
    """Decides whether a new job may enter the queue; raises :class:`RefusedError` if not.

    Checked in order: the user's queued jobs against the tier's cap (which takes no
    token), then one token each from the user's, the guild's and the global bucket,
    all or nothing. ``tiers`` size the users' buckets and caps, ``settings`` the guilds'
    and the global one.
    """

    def __init__(
        self,
        tiers: Mapping[str, TierSettings],
        settings: AdmissionSettings,
        store: BucketStore,
    ) -> None:
        self._store = store
        self._tiers = tiers
        self._users = {
            name: _Limit(
                Bucket.per_minute(tier.rate_per_min, tier.burst),
                _describe_rate(f"tier {name}", tier.rate_per_min, tier.burst),
            )
            for name, tier in self._tiers.items()
        }
        self._guild = _Limit(
            Bucket.per_minute(settings.guild_per_min),
            _describe_rate("this server", settings.guild_per_min, None),
        )
        self._global = _Limit(
            Bucket.per_minute(settings.global_per_min),
            _describe_rate("the service", settings.global_per_min, None),
        )

    async def admit(
        self, *, user_id: int, tier: str, guild_id: int | None, queued_for_user: int
    ) -> None:
        """Let one job of ``user_id`` in, or raise :class:`RefusedError` saying why and
        when to retry; an unknown ``tier`` is a :class:`BadInputError`."""
        settings = self._tiers.get(tier)
        if settings is None:
            known = ", ".join(sorted(self._tiers))
            raise BadInputError(f"unknown tier {tier!r}; known tiers: {known}")
        if queued_for_user >= settings.max_queued:
            limit = f"tier {tier} allows {settings.max_queued} queued jobs per user"
            raise RefusedError(Scope.QUEUED.value, limit, None)
        limits = {Charge(Scope.USER, str(user_id), self._users[tier].bucket): self._users[tier]}
        if guild_id is not None:
            limits[Charge(Scope.GUILD, str(guild_id), self._guild.bucket)] = self._guild
        limits[Charge(Scope.GLOBAL, "all", self._global.bucket)] = self._global
        refusal = await self._store.take(list(limits))
        if refusal is not None:
            charge = refusal.charge
            raise RefusedError(charge.scope.value, limits[charge].text, refusal.retry_after_s)
