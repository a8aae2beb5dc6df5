"""structlog, configured once; the standard library's loggers go through the same output.

Secrets never reach the output: values under secret-looking keys, Discord bot tokens,
interaction/webhook tokens inside URLs and any string registered with
:func:`register_secret` are replaced before rendering, for structlog events and for
plain ``logging`` records (discord.py, aiosqlite) alike.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
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
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=is_terminal(out))
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _stdlib_message],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_processor,
            *([structlog.processors.format_exc_info] if json_output else []),
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
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
