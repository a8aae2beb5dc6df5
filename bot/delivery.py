"""Keeps one progress message per job up to date and delivers its result, whatever
happens in between: the interaction token expiring, the bot restarting, Discord
answering 429 or 500.

Each followed job has a task that reads the job's events and offers frames (content,
preview, buttons) to an :class:`~bot.throttle.EditPump`, which sends at most one edit
per message per ``bot.edit_interval_s`` (the newest frame only) within a per-channel
budget. The final frame (the grid and its buttons, or the failure) goes out as soon as
the channel allows. While the interaction token is valid the bot edits through it
(ephemeral messages too); afterwards it edits with its own token, and a result goes out
as a new channel message, or for a private job as a direct message. A result is
recorded delivered only once Discord accepted it; until then it is retried, and a
restart picks it up again from the delivery records.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
import structlog

from backend.clock import wall_ms
from backend.community import Delivery
from backend.events import EventKind
from backend.models import JobState
from bot import render
from bot.buttons import buttons_view
from bot.render import ButtonSpec, Header
from bot.throttle import Due, EditPump, EditThrottle

if TYPE_CHECKING:
    from backend.service import JobView
    from bot.client import ImagineBot

log = structlog.get_logger(__name__)

# How often a queued job's position is looked up again for its message.
REFRESH_WAITING_S = 10.0
# A final event is followed by the job's final record within moments; it is looked up
# this many times this far apart.
FINAL_RECORD_TRIES = 20
FINAL_RECORD_WAIT_S = 0.25
# A delivery record whose job does not exist this long after it was written is dropped.
ORPHAN_AFTER_MS = 10 * 60 * 1000
# How often delivery records are swept for results that never went out.
SWEEP_S = 60.0
# How long closing waits for final frames already offered.
CLOSE_S = 10.0
# A final message whose send failed is tried again after each of these. discord.py
# has already waited inside the send (each 429's retry_after, a growing backoff on
# 5xx), so the first retries follow at once; then every 5 s for about ten minutes, and
# past that the sweep and the next start try again.
FINAL_RETRY_DELAYS_S = (*([0.5] * 20), *([5.0] * 120))


@dataclass(frozen=True, slots=True)
class Frame:
    """One state of a job's message: text, an optional preview image and buttons;
    ``final`` holds the finished job for the last one."""

    job_id: str
    content: str
    preview: bytes | None = None
    buttons: tuple[ButtonSpec, ...] = ()
    final: JobView | None = None


@dataclass(slots=True)
class _Followed:
    delivery: Delivery
    header: Header
    task: asyncio.Task[None] | None = None
    last_content: str = field(default="")


class Deliverer:
    """Follows jobs and delivers their results; an async context manager (:meth:`start`,
    :meth:`close`) owning one task per followed job, the edit pump and a sweeper."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        settings = bot.deps.settings.bot
        self._throttle: EditThrottle[Frame] = EditThrottle(
            settings.edit_interval_s, settings.channel_edit_budget, settings.channel_edit_window_s
        )
        self._pump: EditPump[Frame] = EditPump(
            self._throttle,
            self._send,
            final_retry_delays_s=FINAL_RETRY_DELAYS_S,
            drain_timeout_s=CLOSE_S,
        )
        self._followed: dict[str, _Followed] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Start the pump, resume every delivery a previous run left, and sweep."""
        await self._pump.start()
        await self.resume_pending()
        self._sweeper = asyncio.create_task(self._sweep(), name="delivery-sweeper")

    async def close(self) -> None:
        """Stop following; final frames already offered are still sent (bounded)."""
        self._closing = True
        tasks = [f.task for f in self._followed.values() if f.task is not None]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._pump.close()

    async def follow(self, delivery: Delivery, view: JobView, parent_link: str | None) -> None:
        """Start following a job whose progress message is ``delivery``'s."""
        if self._closing or delivery.job_id in self._followed:
            return
        followed = _Followed(delivery, Header.of(view, parent_link))
        self._followed[delivery.job_id] = followed
        followed.task = asyncio.create_task(
            self._run(followed), name=f"deliver-{delivery.job_id[:8]}"
        )

    async def resume_pending(self) -> int:
        """Follow every job whose result has not been delivered; how many."""
        resumed = 0
        service = self.bot.deps.service
        for delivery in await self.bot.deps.community.pending_deliveries():
            if delivery.job_id in self._followed:
                continue
            view = await service.job(delivery.job_id)
            if view is None:
                # Purged, or refused before it was stored: nothing left to deliver. A
                # young record may belong to a submit still under way.
                if wall_ms() - delivery.created_at_ms > ORPHAN_AFTER_MS:
                    await self.bot.deps.community.unfollow(delivery.job_id)
                continue
            await self.follow(delivery, view, None)
            resumed += 1
        if resumed:
            log.info("deliveries_resumed", count=resumed)
        return resumed

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                await self.resume_pending()
            except Exception:
                log.exception("delivery_sweep_failed")

    async def _run(self, followed: _Followed) -> None:
        job_id = followed.delivery.job_id
        service = self.bot.deps.service
        subscription = service.follow(job_id)
        try:
            view = await service.job(job_id)
            if view is None:
                return
            if not view.state.is_final:
                await self._offer_state(followed, view)
                view = await self._until_final(followed, subscription)
            if view is not None and view.state.is_final:
                self._offer_final(followed, view)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery_follow_failed", job_id=job_id)
        finally:
            subscription.close()
            # The record stays pending until the final frame was sent: a later sweep or
            # restart follows the job again if it never was.
            self._followed.pop(job_id, None)

    async def _until_final(self, followed: _Followed, subscription: Any) -> JobView | None:
        """Offer a frame per event until the job ends; its final view (None: purged).

        The next event is awaited as a task that outlives each refresh timeout:
        cancelling the subscription's iterator would end it."""
        service = self.bot.deps.service
        events = aiter(subscription)
        job_id = followed.delivery.job_id
        upcoming: asyncio.Task[Any] = asyncio.ensure_future(anext(events))
        try:
            while True:
                done, _ = await asyncio.wait({upcoming}, timeout=REFRESH_WAITING_S)
                if not done:
                    view = await service.job(job_id)
                    if view is None or view.state.is_final:
                        return view
                    await self._offer_state(followed, view)
                    continue
                try:
                    event = upcoming.result()
                except StopAsyncIteration:
                    return await self._final_view(job_id)
                if event.kind.is_final:
                    return await self._final_view(job_id)
                upcoming = asyncio.ensure_future(anext(events))
                self._offer_event(followed, event, await self._status_line(followed, event))
        finally:
            upcoming.cancel()

    async def _status_line(self, followed: _Followed, event: Any) -> str:
        header = followed.header
        if event.kind is EventKind.QUEUED:
            return render.waiting(header, await self.bot.deps.service.status(event.job_id))
        if event.kind is EventKind.PREEMPTED:
            return render.paused(header, event.step, event.total)
        return render.running(header, event.step, event.total)

    def _offer_event(self, followed: _Followed, event: Any, content: str) -> None:
        self._offer(followed, Frame(event.job_id, content, event.preview, _cancel_buttons()))

    async def _final_view(self, job_id: str) -> JobView | None:
        """The job's stored view once it is final (a final event may run a moment ahead
        of the record); None if it is gone or never becomes final within a few seconds,
        for the sweep to pick up."""
        service = self.bot.deps.service
        for _ in range(FINAL_RECORD_TRIES):
            view = await service.job(job_id)
            if view is None or view.state.is_final:
                return view
            await asyncio.sleep(FINAL_RECORD_WAIT_S)
        log.warning("delivery_final_not_recorded", job_id=job_id)
        return None

    async def _offer_state(self, followed: _Followed, view: JobView) -> None:
        header = followed.header
        if view.state is JobState.RUNNING:
            content = render.running(header, view.step, view.total_steps)
        else:
            content = render.waiting(header, await self.bot.deps.service.status(view.id))
        self._offer(followed, Frame(view.id, content, None, _cancel_buttons()))

    def _offer(self, followed: _Followed, frame: Frame) -> None:
        # An unchanged text with no new image is not worth an edit.
        if frame.preview is None and frame.content == followed.last_content:
            return
        followed.last_content = frame.content
        delivery = followed.delivery
        self._pump.offer(_bucket(delivery), delivery.job_id, frame, final=False)

    def _offer_final(self, followed: _Followed, view: JobView) -> None:
        header = followed.header
        if view.state is JobState.SUCCEEDED:
            frame = Frame(view.id, render.finished(header), None, (), view)
        elif view.state is JobState.CANCELLED:
            frame = Frame(view.id, render.cancelled(header), None, (), view)
        else:
            frame = Frame(view.id, render.failed(header, view.error, view.id), None, (), view)
        delivery = followed.delivery
        self._pump.offer(_bucket(delivery), delivery.job_id, frame, final=True)

    # -- sending -----------------------------------------------------------------------

    async def _send(self, due: Due[Frame]) -> None:
        frame = due.state
        delivery = await self.bot.deps.community.delivery(frame.job_id)
        if delivery is None or delivery.delivered:
            return
        if frame.final is None:
            await self._edit_progress(delivery, frame)
        else:
            await self._deliver(delivery, frame, frame.final)

    async def _edit_progress(self, delivery: Delivery, frame: Frame) -> None:
        if delivery.message_id is None:
            return
        files = [discord.File(io.BytesIO(frame.preview), "preview.webp")] if frame.preview else []
        view = buttons_view(list(frame.buttons), frame.job_id)
        if delivery.token_valid(wall_ms()):
            await self._webhook(delivery).edit_message(
                delivery.message_id, content=frame.content, attachments=files, view=view
            )
        elif not delivery.private and delivery.channel_id is not None:
            message = self.bot.get_partial_messageable(delivery.channel_id).get_partial_message(
                delivery.message_id
            )
            await message.edit(content=frame.content, attachments=files, view=view)
        # A private job's ephemeral message cannot be edited once its token expired.

    async def _deliver(self, delivery: Delivery, frame: Frame, view: JobView) -> None:
        files, buttons = self._result_parts(view)
        content = frame.content
        if view.state is JobState.SUCCEEDED and not files:
            content = render.failed(
                Header.of(view), "its image files are gone from the server's disk", view.id
            )
        result_view = buttons_view(buttons, view.id)
        message_id = await self._put_result(delivery, view, content, files, result_view)
        if await self.bot.deps.community.delivered(view.id, message_id):
            log.info("job_delivered", job_id=view.id, state=view.state.value, via=message_id)

    def _result_parts(self, view: JobView) -> tuple[list[discord.File], list[ButtonSpec]]:
        if view.state is not JobState.SUCCEEDED or not view.images:
            return [], []
        grid = Path(view.images[0])
        if not grid.is_file():
            return [], []
        return [discord.File(grid, "grid.png")], render.result_buttons(view)

    async def _put_result(
        self,
        delivery: Delivery,
        view: JobView,
        content: str,
        files: list[discord.File],
        result_view: discord.ui.View,
    ) -> int | None:
        """Send the final message the best way still open; the id of what was sent."""
        if delivery.token_valid(wall_ms()) and delivery.message_id is not None:
            await self._webhook(delivery).edit_message(
                delivery.message_id, content=content, attachments=files, view=result_view
            )
            return delivery.message_id
        if not delivery.private and delivery.channel_id is not None:
            return await self._post_in_channel(delivery, view, content, files, result_view)
        return await self._direct_message(delivery, content, files, result_view)

    async def _post_in_channel(
        self,
        delivery: Delivery,
        view: JobView,
        content: str,
        files: list[discord.File],
        result_view: discord.ui.View,
    ) -> int:
        assert delivery.channel_id is not None
        channel = self.bot.get_partial_messageable(delivery.channel_id)
        sent = await channel.send(content=content, files=files, view=result_view)
        if delivery.message_id is not None:
            link = render.message_link(view.guild_id, delivery.channel_id, sent.id)
            header = Header.of(view)
            with contextlib.suppress(discord.HTTPException):
                await channel.get_partial_message(delivery.message_id).edit(
                    content=render.moved(header, link), attachments=[], view=None
                )
        return sent.id

    async def _direct_message(
        self,
        delivery: Delivery,
        content: str,
        files: list[discord.File],
        result_view: discord.ui.View,
    ) -> int | None:
        try:
            user = await self.bot.fetch_user(delivery.user_id)
            sent = await user.send(content=content, files=files, view=result_view)
        except discord.Forbidden:
            await self.bot.deps.community.add_note(
                delivery.user_id,
                f"Your job `{delivery.job_id}` finished while I could not message you "
                f"(your direct messages are closed). See it with `/show {delivery.job_id}`.",
            )
            log.info("delivery_dm_refused", job_id=delivery.job_id, user_id=delivery.user_id)
            return None
        return sent.id

    def _webhook(self, delivery: Delivery) -> discord.Webhook:
        assert delivery.application_id is not None
        assert delivery.interaction_token is not None
        return discord.Webhook.partial(
            delivery.application_id, delivery.interaction_token, client=self.bot
        )


def _bucket(delivery: Delivery) -> int:
    """The rate-limit bucket a message's writes share. Discord limits writes with the
    bot's token per channel, so those share the channel's budget; writes through an
    interaction token are limited per token, so each such message has a bucket of its
    own (a negative number, never a channel id) and only the per-message interval holds
    them back."""
    if delivery.token_valid(wall_ms()) or delivery.channel_id is None:
        return -int(delivery.job_id[:15], 16) - 1
    return delivery.channel_id


def _cancel_buttons() -> tuple[ButtonSpec, ...]:
    return tuple(render.progress_buttons())
