"""Logging: one output for structlog and the standard library, secrets redacted."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from config.logging import (
    REDACTED,
    configure_logging,
    is_terminal,
    redact_text,
    register_secret,
)

BOT_TOKEN = "MTA4NzY1NDMyMTA5ODc2NTQzMg.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"


@pytest.fixture
def json_stream() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    return stream


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_structlog_and_stdlib_share_json_output(json_stream: io.StringIO) -> None:
    """A structlog event and a stdlib record both come out as JSON lines with a level."""
    structlog.get_logger("t").info("job_started", job_id="j1")
    logging.getLogger("discord.client").warning("gateway %s", "closed")
    lines = _lines(json_stream)
    assert lines[0]["event"] == "job_started" and lines[0]["job_id"] == "j1"
    assert lines[1]["event"] == "gateway closed" and lines[1]["level"] == "warning"


def test_tokens_are_redacted_everywhere(json_stream: io.StringIO) -> None:
    """Bot tokens, secret-named fields, webhook tokens and registered secrets never appear."""
    register_secret("s3cr3t-value")
    log = structlog.get_logger("t")
    log.info("connecting", token="plain-token-value", note=f"Bot {BOT_TOKEN}")
    log.info("raw secret s3cr3t-value in text")
    logging.getLogger("discord.http").error(
        "POST https://x/api/v10/webhooks/123/%s/messages failed", "aW50ZXJhY3Rpb246MTIz.abc"
    )
    logging.getLogger("discord.client").info("logging in using static token %s", BOT_TOKEN)
    output = json_stream.getvalue()
    for secret in ("plain-token-value", BOT_TOKEN, "s3cr3t-value", "aW50ZXJhY3Rpb246MTIz"):
        assert secret not in output
    assert output.count(REDACTED) >= 4


def test_redact_text_keeps_ordinary_text() -> None:
    """Text without secrets is returned unchanged."""
    text = "job 7f3a finished in 1.2 s at redis://127.0.0.1:6379/0"
    assert redact_text(text) == text


def test_console_format_is_not_json() -> None:
    """The console renderer writes human lines, not JSON."""
    stream = io.StringIO()
    configure_logging("info", "console", stream)
    structlog.get_logger("t").info("hello", a=1)
    line = stream.getvalue().strip()
    assert "hello" in line and not line.startswith("{")


def test_level_filters(json_stream: io.StringIO) -> None:
    """Events below the configured level are dropped."""
    configure_logging("warning", "json", json_stream)
    structlog.get_logger("t").info("quiet")
    structlog.get_logger("t").warning("loud")
    events = [line["event"] for line in _lines(json_stream)]
    assert events == ["loud"]


def test_is_terminal_only_for_a_live_tty() -> None:
    """A plain buffer, a closed stream and an object without isatty are not terminals."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    closed = io.StringIO()
    closed.close()
    assert is_terminal(Terminal())
    assert not is_terminal(io.StringIO())
    assert not is_terminal(closed)
    assert not is_terminal(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secrets_are_redacted_in_tracebacks(fmt: str) -> None:
    """A registered secret, a bot token and URL credentials inside an exception's text are
    redacted in the rendered traceback, for structlog and stdlib records, in both formats."""
    register_secret("hunter2-password")
    stream = io.StringIO()
    configure_logging("info", fmt, stream)
    try:
        raise ConnectionError(
            f"AUTH hunter2-password refused at redis://:pw-in-url@cache:6379 for {BOT_TOKEN}"
        )
    except ConnectionError:
        structlog.get_logger("t").exception("redis_failed")
        logging.getLogger("redis.connection").exception("connection lost")
    output = stream.getvalue()
    assert output.count("ConnectionError") >= 2  # both tracebacks were rendered
    for secret in ("hunter2-password", "pw-in-url", BOT_TOKEN):
        assert secret not in output
    assert output.count(REDACTED) >= 6
