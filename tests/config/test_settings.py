"""Settings: defaults, file, environment, errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from config.settings import (
    MASK,
    QueueBackend,
    Settings,
    SettingsError,
    load_settings,
    mask_url,
)

EXAMPLE = Path(__file__).parents[2] / "config" / "imagine.example.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("IMAGINE_"):
            monkeypatch.delenv(name)


def test_defaults_need_no_file_and_no_token() -> None:
    """With nothing configured the embedded default loads: memory queue, the shipped shapes
    model with its own native size and defaults (the random tiny one beside it), no token."""
    settings = load_settings()
    assert settings.queue.backend is QueueBackend.MEMORY
    assert settings.engine.default_model == "shapes"
    shapes = settings.engine.models["shapes"]
    assert shapes.source == "builtin:shapes"
    assert (shapes.pixel_budget, shapes.size_multiple) == (32 * 32, 8)
    assert (shapes.default_steps, shapes.default_guidance, shapes.scheduler) == (20, 7.5, "euler")
    assert settings.engine.models["tiny"].source == "builtin:tiny"
    assert settings.discord.token is None


def test_file_values_apply_and_environment_overrides_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TOML file sets values; IMAGINE_ variables (nested with __) override the file."""
    config = tmp_path / "imagine.toml"
    config.write_text('[log]\nlevel = "debug"\n[prompt]\nmax_steps = 40\n')
    monkeypatch.setenv("IMAGINE_PROMPT__MAX_STEPS", "60")
    settings = load_settings(config)
    assert settings.log.level == "debug"
    assert settings.prompt.max_steps == 60


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """IMAGINE_CONFIG names the file when no argument does."""
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "d"}"\n')
    monkeypatch.setenv("IMAGINE_CONFIG", str(config))
    assert load_settings().data_dir == tmp_path / "d"


def test_bad_value_names_key_value_and_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value fails in one line naming the key, the value and what is allowed."""
    monkeypatch.setenv("IMAGINE_QUEUE__BACKEND", "rabbit")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "queue.backend" in message
    assert "'rabbit'" in message
    assert "'memory'" in message and "'redis'" in message
    assert "\n" not in message


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    """A typo in the file is an error naming the key, not silently ignored."""
    config = tmp_path / "c.toml"
    config.write_text("[log]\nlevle = 'debug'\n")
    with pytest.raises(SettingsError, match=r"log\.levle"):
        load_settings(config)


def test_malformed_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    """Invalid TOML and a missing file each raise SettingsError naming the file."""
    broken = tmp_path / "broken.toml"
    broken.write_text("[log\nlevel = 1\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(broken)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_default_model_must_be_declared(monkeypatch: pytest.MonkeyPatch) -> None:
    """engine.default_model naming an undeclared model is refused with the declared names."""
    monkeypatch.setenv("IMAGINE_ENGINE__DEFAULT_MODEL", "sdxl")
    with pytest.raises(SettingsError, match=r"engine\.default_model='sdxl'.*shapes.*tiny"):
        load_settings()


def test_token_required_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """require_discord_token fails clearly without a token and returns it when set."""
    with pytest.raises(SettingsError, match="IMAGINE_DISCORD__TOKEN"):
        load_settings().require_discord_token()
    monkeypatch.setenv("IMAGINE_DISCORD__TOKEN", "abc.def.ghi")
    assert load_settings().require_discord_token() == "abc.def.ghi"


def test_masked_hides_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The printable settings carry no token and no password from the Redis URL."""
    monkeypatch.setenv("IMAGINE_DISCORD__TOKEN", "very-secret-token")
    monkeypatch.setenv("IMAGINE_QUEUE__REDIS_URL", "redis://user:hunter2@cache:6379/1")
    shown = repr(load_settings().masked())
    assert "very-secret-token" not in shown
    assert "hunter2" not in shown
    assert MASK in shown
    assert "cache:6379/1" in shown


def test_mask_url_keeps_urls_without_credentials() -> None:
    """A URL without credentials is unchanged; one with them loses them."""
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url("redis://:pw@h:1/0") == f"redis://{MASK}@h:1/0"


def test_empty_data_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """IMAGINE_DATA_DIR set but empty (or blank, in the file too) is an error, not "."."""
    monkeypatch.setenv("IMAGINE_DATA_DIR", "")
    with pytest.raises(SettingsError, match=r"data_dir='' \(IMAGINE_DATA_DIR\): must not be empty"):
        load_settings()
    monkeypatch.delenv("IMAGINE_DATA_DIR")
    config = tmp_path / "c.toml"
    config.write_text('data_dir = "  "\n')
    with pytest.raises(SettingsError, match="must not be empty"):
        load_settings(config)


@pytest.mark.parametrize(
    "url", ["http://:hunter2@cache:6379/0", "cache:6379", "hunter2@cache", "redis:/cache"]
)
def test_redis_url_with_a_wrong_scheme_is_refused(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """A Redis URL that is not redis://, rediss:// or unix:// fails as the settings load,
    in one line that names the key and never shows the URL."""
    monkeypatch.setenv("IMAGINE_QUEUE__REDIS_URL", url)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "queue.redis_url" in message and "redis://, rediss://, unix://" in message
    assert "hunter2" not in message and "cache" not in message and "\n" not in message


@pytest.mark.parametrize(
    "url",
    ["redis://:pw@cache:6379/0", "rediss://cache:6380", "unix:///run/redis.sock", "REDIS://h"],
)
def test_redis_url_schemes_redis_understands_load(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """redis://, rediss:// and unix:// URLs (any case) are accepted unchanged."""
    monkeypatch.setenv("IMAGINE_QUEUE__REDIS_URL", url)
    assert load_settings().queue.redis_url.get_secret_value() == url


def _keys(data: dict[str, object], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        keys.add(path)
        if isinstance(value, dict):
            keys |= _keys(value, f"{path}.")
    return keys


def test_example_file_documents_every_key_and_loads() -> None:
    """The example config loads as is and mentions every settings key."""
    load_settings(EXAMPLE)
    text = EXAMPLE.read_text()
    dumped = Settings().model_dump(mode="json")
    for key in _keys(dumped):
        leaf = key.rsplit(".", 1)[-1]
        assert leaf in text, f"{key} is not documented in {EXAMPLE.name}"
    parsed = tomllib.loads(text)
    assert set(parsed) <= set(dumped)


def test_reconcile_interval_must_leave_redis_time_between_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """queue.reconcile_interval_s under 0.1 s (Redis checked in a busy loop) is refused,
    naming the key; 0.2 s loads."""
    monkeypatch.setenv("IMAGINE_QUEUE__RECONCILE_INTERVAL_S", "0")
    with pytest.raises(SettingsError, match=r"queue\.reconcile_interval_s"):
        load_settings()
    monkeypatch.setenv("IMAGINE_QUEUE__RECONCILE_INTERVAL_S", "0.2")
    assert load_settings().queue.reconcile_interval_s == 0.2
