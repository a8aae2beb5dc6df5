"""structlog, configured once; the standard library's loggers go through the same output.

Secrets never reach the output: values under secret-looking keys, Discord bot tokens,
interaction/webhook tokens inside URLs and any string registered with
:func:`register_secret` are replaced before rendering, for structlog events and for
plain ``logging`` records (discord.py, aiosqlite) alike, in their tracebacks too.

A status line drawn on the log stream (``imagine generate``'s progress bar) registers
with :func:`set_status_line`, and is ended before each record is written.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

REDACTED = "[redacted]"
_SECRET_KEYS = re.compile(r"token|password|passwd|secret|authorization|api_key|cookie", re.I)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Discord bot tokens: base64 user id, timestamp, HMAC.
    (re.compile(r"[MNO][A-Za-z\d_-]{23,27}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,}"), REDACTED),
    # Interaction and webhook tokens travel in URL paths.
    (re.compile(r"(/webhooks/\d+/)[A-Za-z0-9_.-]+"), r"\1" + REDACTED),
    (re.compile(r"(/interactions/\d+/)[A-Za-z0-9_.-]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(\bBot\s+)[A-Za-z0-9_.-]{20,}"), r"\1" + REDACTED),
    # Credentials inside connection URLs (redis://:pw@host).
    (re.compile(r"(?<=://)[^/\s@]*:[^/\s@]*@"), REDACTED + "@"),
)
_registered: set[str] = set()
_status_line_end: Callable[[], None] | None = None


def register_secret(value: str | None) -> None:
    """Redact this exact string wherever it would appear in a log line."""
    if value and len(value) >= 4:
        _registered.add(value)


def redact_text(text: str) -> str:
    """Replace every known secret and secret-looking pattern in ``text``."""
    for secret in _registered:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        return REDACTED if _SECRET_KEYS.search(key) and value else redact_text(value)
    if isinstance(value, MutableMapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(key, v) for v in value)
    return value


def redact_processor(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact every field of the event."""
    for key, value in list(event_dict.items()):
        if key == "event" and isinstance(value, str):
            event_dict[key] = redact_text(value)
        elif key not in ("timestamp", "level", "logger"):
            event_dict[key] = _redact_value(key, value)
    return event_dict


def set_status_line(end: Callable[[], None] | None) -> None:
    """Call ``end`` before writing each log record, so that a line being redrawn in place
    (a progress bar) is finished first; ``None`` removes it."""
    global _status_line_end
    _status_line_end = end


class _Handler(logging.StreamHandler[TextIO]):
    """A stream handler that ends the status line, if any, before each record."""

    def emit(self, record: logging.LogRecord) -> None:
        end = _status_line_end
        if end is not None:
            end()
        super().emit(record)


def _stdlib_message(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    # The formatter has already rendered the message with its arguments (so they are
    # redacted with it); name the stdlib logger it came from.
    record = event_dict.get("_record")
    if record is not None and event_dict.get("_from_structlog") is False:
        event_dict.setdefault("logger", record.name)
    return event_dict


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog and the root logger once for the process (idempotent)."""
    out = stream if stream is not None else sys.stderr
    json_output = fmt == "json" or (fmt == "auto" and not is_terminal(out))
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks become text before redaction, in both formats: a secret in an
    # exception's message (or a source line) is replaced like any other. Plain text,
    # not rich's: it would show local variables and could wrap a token across lines.
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(
            colors=is_terminal(out), exception_formatter=structlog.dev.plain_traceback
        )
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _stdlib_message],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
    )
    handler = _Handler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric)
    # discord.py's gateway chatter at debug level is only noise for operators.
    for noisy in _quiet_loggers():
        logging.getLogger(noisy).setLevel(max(numeric, logging.INFO))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )


def _quiet_loggers() -> Iterable[str]:
    return ("discord.gateway", "discord.http", "aiosqlite", "PIL", "urllib3", "httpx")


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal; a stream without ``isatty`` or a
    closed one is not."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
