"""SIGTERM and Ctrl-C for a command that runs an embedded worker (``imagine generate``).

The first SIGTERM or SIGINT prints one line saying what is being saved, has the running
jobs checkpointed and requeued at their next step, and ends the command with status
128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM). A second one quits at once
with that status: every job is then either queued with its checkpoint, or still
``running`` in SQLite, which the next start reconciles and resumes from its last
checkpoint. Neither way leaves a traceback or a core dump (a KeyboardInterrupt raised
while the device thread runs can abort the interpreter).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from backend.app import Backend

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
QUITTING = "imagine: quitting now; unsaved jobs resume from their last checkpoint on the next start"

# What signal.signal accepts and returns (None: a handler set outside Python).
_Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def exit_status(signum: int) -> int:
    """What a shell reports for a command stopped by ``signum``: 128 plus its number."""
    return 128 + signum


@contextlib.asynccontextmanager
async def saving_on_signals(
    opening: AbstractAsyncContextManager[Backend],
) -> AsyncIterator[Backend]:
    """Enter ``opening`` (:func:`backend.app.open_backend`) with SIGTERM and SIGINT
    handled as the module says, from its start-up to the end of its exit.

    Raises SystemExit with the signal's status once the backend is closed, unless the
    block had already finished (its job done) when the signal came. Outside the main
    thread, where Python cannot handle signals, it only enters ``opening``.
    """
    if threading.current_thread() is not threading.main_thread():
        async with opening as backend:
            yield backend
        return
    stopper = _Stopper(asyncio.get_running_loop(), asyncio.current_task())
    stopper.install()
    try:
        async with opening as backend:
            stopper.backend = backend
            try:
                yield backend
            finally:
                stopper.leaving = True
    except asyncio.CancelledError:
        if not stopper.cancelled:
            raise
        stopper.uncancel()
        raise SystemExit(stopper.exit()) from None
    finally:
        # After a signal the handlers stay: a second one must still quit at once
        # while the process winds down.
        if stopper.signum is None:
            stopper.restore()
    if stopper.interrupted:
        raise SystemExit(stopper.exit())


class _Stopper:
    """The signal handlers of one :func:`saving_on_signals` block, and what they did."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> None:
        self._loop = loop
        self._task = task
        self._previous: dict[int, _Handler] = {}
        self.backend: Backend | None = None
        self.signum: int | None = None
        self.leaving = False  # the block is over: the backend is closing
        self.interrupted = False  # the signal came while the block ran
        self.cancelled = False  # the block's task was cancelled for it
        self._exit_status: int | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None

    def install(self) -> None:
        """Handle the stop signals here, keeping the handlers they replace."""
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        self._wake_on_signals()
        atexit.register(self._skip_teardown)

    def restore(self) -> None:
        """Give the stop signals back to the handlers they had before."""
        atexit.unregister(self._skip_teardown)
        for signum, handler in self._previous.items():
            # None: set outside Python; the default is the best that can be restored.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if self._wakeup is not None:
            reader, writer = self._wakeup
            self._wakeup = None
            signal.set_wakeup_fd(-1)
            with contextlib.suppress(Exception):
                self._loop.remove_reader(reader.fileno())
            reader.close()
            writer.close()

    def _wake_on_signals(self) -> None:
        """Have every signal wake the loop. A handler runs between two bytecodes, so a
        signal that lands just before the loop blocks in its selector (after the last
        check, before the system call) would otherwise wait there for the next event:
        a second Ctrl-C could go unanswered while the loop sleeps. Python writes each
        signal's number to the wakeup fd; the loop watches its other end. Where a wakeup
        fd is set already (asyncio's own signal handling), that one serves."""
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        if previous != -1:
            signal.set_wakeup_fd(previous)
            reader.close()
            writer.close()
            return
        self._loop.add_reader(reader.fileno(), _drain, reader)
        self._wakeup = (reader, writer)

    def uncancel(self) -> None:
        """Withdraw the cancellation this stopper asked for (it has been turned into an
        exit status)."""
        if self._task is not None and self.cancelled:
            self._task.uncancel()

    def exit(self) -> int:
        """The status to end the command with, the backend closed after a signal."""
        assert self.signum is not None, "no signal came"
        self._exit_status = exit_status(self.signum)
        return self._exit_status

    def _skip_teardown(self) -> None:
        """At exit, once a signal's stop is done (jobs saved, stores closed): end the
        process without the interpreter's teardown, which takes a second or more with
        torch loaded and runs after Python gives the signals back to their defaults."""
        if self._exit_status is None:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(self._exit_status)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes, whatever the loop is doing:
        # write with os.write and hand the rest to the loop.
        if self.signum is not None:
            _say(QUITTING)
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(exit_status(signum))
        self.signum = signum
        self.interrupted = not self.leaving
        _say(self._announcement(signum))
        try:
            self._loop.call_soon_threadsafe(self._stop)
        except RuntimeError:  # the loop is closed: nothing is left to save
            os._exit(exit_status(signum))

    def _announcement(self, signum: int) -> str:
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        held = self.backend.held_jobs if self.backend is not None else 0
        if held == 0:
            saving = "stopping"
        elif held == 1:
            saving = "stopping: saving 1 running job at its next step"
        else:
            saving = f"stopping: saving {held} running jobs at their next step"
        return f"imagine: {saving} ({again} again to quit now)"

    def _stop(self) -> None:
        """On the loop: save what the backend holds; end the block if it still runs."""
        if self.backend is not None:
            self.backend.interrupt()
        if not self.leaving and self._task is not None:
            self.cancelled = True
            self._task.cancel()


def _drain(reader: socket.socket) -> None:
    """Empty the wakeup socket (the signal's handler has run, or runs next)."""
    with contextlib.suppress(OSError):
        while reader.recv(4096):
            pass


def _say(line: str) -> None:
    """Write one line to stderr from a signal handler (no buffered stream involved)."""
    prefix = "\n" if sys.stderr.isatty() else ""  # after the terminal's ^C or a progress bar
    with contextlib.suppress(OSError):
        os.write(sys.stderr.fileno(), f"{prefix}{line}\n".encode())
