"""Shared fixtures: isolated settings, the tiny model built once per session, the shared
Redis and a private one."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from structlog.testing import capture_logs

from tests.discord_emulator.fixtures import discord_emulator
from tests.redis_server import PrivateRedis

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["discord_emulator"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No IMAGINE_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("IMAGINE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline pipeline, built once for the whole session."""
    from backend.engine.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture
def engine_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> Path:
    """Environment for a fast real generation: own data dir, the session's tiny model,
    small images. Returns the data directory."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("IMAGINE_ENGINE__DEFAULT_MODEL", "tiny")
    monkeypatch.setenv("IMAGINE_ENGINE__MODELS__TINY__SOURCE", str(tiny_model_dir))
    monkeypatch.setenv("IMAGINE_ENGINE__MODELS__TINY__DEFAULT_STEPS", "2")
    monkeypatch.setenv("IMAGINE_ENGINE__DEVICE", "cpu")
    monkeypatch.setenv("IMAGINE_PROMPT__PIXEL_BUDGET", str(128 * 128))
    monkeypatch.setenv("IMAGINE_LOG__FORMAT", "json")
    return data_dir


@pytest.fixture
def shapes_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Environment for the product's default: own data dir, the shipped shapes model with
    its catalog defaults, the CPU. Returns the data directory."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("IMAGINE_ENGINE__DEVICE", "cpu")
    monkeypatch.setenv("IMAGINE_LOG__FORMAT", "json")
    return data_dir


REDIS_URL = os.environ.get("IMAGINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    """A client of the real Redis the suite runs against (127.0.0.1:6379 unless
    IMAGINE_TEST_REDIS_URL says otherwise)."""
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except OSError as exc:  # pragma: no cover - the CI script starts one
        pytest.fail(f"no Redis at {REDIS_URL}: {exc}")
    yield client
    await client.aclose()


@pytest.fixture
async def redis_namespace(redis_client: Redis) -> AsyncIterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    yield namespace
    keys = [key async for key in redis_client.scan_iter(match=f"{namespace}:*", count=1000)]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A started redis-server of this test alone on a free port (never the shared one),
    which it may stop and start again; killed when the test ends."""
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Captured structlog events, whatever level an earlier test configured."""
    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as entries:
            yield entries
    finally:
        structlog.configure(wrapper_class=wrapper)
