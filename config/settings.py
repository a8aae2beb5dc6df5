"""Typed settings: defaults in code, an optional TOML file, then ``IMAGINE_*`` variables.

Built once at start-up with :func:`load_settings` and passed down; nothing imports a
settings singleton. A bad value raises :class:`SettingsError`, whose message names the
key, the value and what is allowed, in one line.
"""

from __future__ import annotations

import os
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "IMAGINE_"
ENV_NESTED = "__"
CONFIG_ENV = "IMAGINE_CONFIG"
BUILTIN_TINY = "builtin:tiny"
BUILTIN_SHAPES = "builtin:shapes"
MASK = "**********"
# What redis-py's ``from_url`` connects to: TCP, TLS, or a Unix socket.
REDIS_SCHEMES = ("redis", "rediss", "unix")


class SettingsError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""

    exit_status = 2


def default_data_dir() -> Path:
    """Where jobs, images and built models live unless configured: the XDG data home."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "imagine"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogFormat(StrEnum):
    """How log lines are rendered; ``auto`` picks console on a terminal, JSON otherwise."""

    AUTO = "auto"
    CONSOLE = "console"
    JSON = "json"


class LogSettings(_Section):
    """Log level and renderer (``auto``: console on a terminal, JSON otherwise)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: LogFormat = LogFormat.AUTO


class DiscordSettings(_Section):
    """The Discord application; only ``imagine bot`` needs the token."""

    token: SecretStr | None = None
    guild_ids: tuple[int, ...] = ()


class QueueBackend(StrEnum):
    """Where queued work (and the shared admission and degradation state) lives."""

    MEMORY = "memory"
    REDIS = "redis"


class QueueSettings(_Section):
    """Where queued work lives: in this process (``memory``) or shared in Redis."""

    backend: QueueBackend = QueueBackend.MEMORY
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    namespace: str = Field(default="imagine", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    lease_s: float = Field(default=60.0, gt=0)
    # Redis mode: how often each process checks that Redis still has the queue's data,
    # and queues again the jobs it lost (a restart without persistence, a flush).
    reconcile_interval_s: float = Field(default=10.0, ge=0.1, le=3600)

    @field_validator("redis_url")
    @classmethod
    def _known_scheme(cls, url: SecretStr) -> SecretStr:
        # Checked here, not at the first connection: a typo must stop start-up, before
        # anything is written.
        problem = redis_url_problem(url.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return url


class ModelFamily(StrEnum):
    """The pipeline architecture a model's components follow."""

    SD15 = "sd15"
    SD2 = "sd2"
    SDXL = "sdxl"


class ModelSettings(_Section):
    """One model: where it loads from and the defaults a prompt may override."""

    source: str = Field(
        min_length=1, description="Hub id, local folder, builtin:shapes or builtin:tiny"
    )
    family: ModelFamily = ModelFamily.SD15
    # auto: bfloat16 on GPUs that support it, else float16 on CUDA; float32 on the CPU.
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    default_steps: int = Field(default=30, ge=1, le=500)
    default_guidance: float = Field(default=7.0, ge=0, le=30)
    scheduler: str = "euler"
    # The model's native area: --ar picks a size of about this many pixels, each side a
    # multiple of size_multiple. None: prompt.pixel_budget (SD1.5's 512x512 by default).
    pixel_budget: int | None = Field(default=None, ge=16 * 16, le=4096 * 4096)
    size_multiple: int = Field(default=64, ge=8, le=256, multiple_of=8)


def _builtin_models() -> dict[str, ModelSettings]:
    return {
        # Trained by `imagine model train-shapes`; draws coloured shapes at 32x32.
        "shapes": ModelSettings(
            source=BUILTIN_SHAPES,
            default_steps=20,
            default_guidance=7.5,
            scheduler="euler",
            pixel_budget=32 * 32,
            size_multiple=8,
        ),
        # Random weights in SD1.5's layout: fast plumbing checks, noise for pictures.
        "tiny": ModelSettings(source=BUILTIN_TINY, default_steps=8),
    }


class EngineSettings(_Section):
    """Devices and models."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    default_model: str = "shapes"
    models: dict[str, ModelSettings] = Field(default_factory=_builtin_models)
    # Continuous batching: UNet rows per step (a guided sample takes two), and how
    # long an idle device waits for near-simultaneous jobs to start together.
    max_batch_rows: int = Field(default=16, ge=1, le=256)
    batch_window_ms: int = Field(default=50, ge=0, le=200)
    # CUDA only: the UNet in channels-last memory format (faster convolutions on tensor
    # cores), and optionally compiled with torch.compile (slow first steps while it
    # compiles; the time is logged).
    channels_last: bool = True
    compile_unet: bool = False
    # Images with more pixels than this are decoded by the VAE in tiles (large upscales
    # would otherwise need the decoder's activations for the whole image at once).
    vae_tiling_above_px: int = Field(default=2048 * 2048, ge=64 * 64)
    # Loaded models per device are unloaded least-recently-used beyond this (MiB);
    # None: no limit on CPU, 90% of the GPU's memory on CUDA.
    memory_budget_mb: int | None = Field(default=None, ge=64)
    # Previews: a cheap latent projection every N steps (0: none); a real decode every
    # M steps (0: none), through the TAESD-architecture model in preview_decoder if set.
    preview_every_steps: int = Field(default=1, ge=0, le=1000)
    decoded_preview_every_steps: int = Field(default=0, ge=0, le=1000)
    preview_decoder: str | None = None
    preview_max_side: int = Field(default=512, ge=64, le=2048)
    # Image-to-image: how much of the schedule a variation and an upscale redo.
    variation_strength: float = Field(default=0.6, gt=0, le=1)
    upscale_strength: float = Field(default=0.3, gt=0, le=1)
    upscale_factor: int = Field(default=2, ge=2, le=4)
    # Largest img2img source accepted, in pixels.
    max_source_pixels: int = Field(default=4096 * 4096, ge=64 * 64)
    # The grid shown to users: tiles smaller than this many pixels on their shorter
    # side are scaled up to it (stored samples keep their own pixels); 0: never.
    grid_min_tile_px: int = Field(default=256, ge=0, le=2048)
    grid_resample: Literal["nearest", "lanczos"] = "lanczos"

    @field_validator("models", mode="before")
    @classmethod
    def _over_the_builtins(cls, models: object) -> object:
        # Declared models are added to the built-in ones; a declared "shapes" or "tiny"
        # changes only the keys it names (a retrained shapes folder as its source keeps
        # the native size and defaults).
        if not isinstance(models, dict):
            return models
        merged: dict[str, object] = {
            name: model.model_dump() for name, model in _builtin_models().items()
        }
        for name, declared in models.items():
            builtin = merged.get(name)
            if isinstance(builtin, dict) and isinstance(declared, dict):
                merged[name] = {**builtin, **declared}
            else:
                merged[name] = declared
        return merged

    @field_validator("models")
    @classmethod
    def _names_are_plain(cls, models: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
        for name in models:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
                raise ValueError(f"model name {name!r} must match [A-Za-z0-9][A-Za-z0-9._-]*")
        if not models:
            raise ValueError("at least one model must be declared")
        return models


class PromptSettings(_Section):
    """Limits the prompt parser enforces."""

    max_prompt_chars: int = Field(default=1000, ge=1, le=10_000)
    pixel_budget: int = Field(default=512 * 512, ge=64 * 64, le=4096 * 4096)
    max_aspect: float = Field(default=4.0, ge=1.0, le=16.0)
    max_steps: int = Field(default=150, ge=1, le=1000)
    max_guidance: float = Field(default=30.0, ge=0, le=100)
    default_n: int = Field(default=4, ge=1, le=16)
    max_n: int = Field(default=8, ge=1, le=16)


class SpeedName(StrEnum):
    """Lanes a prompt may ask for (mirrors ``backend.models.Speed``; config imports no backend)."""

    FAST = "fast"
    RELAX = "relax"
    TURBO = "turbo"


class GuildSettings(_Section):
    """How the bot behaves in one guild (``[bot.guilds.<guild id>]``), or in every guild
    not listed (``[bot.guild_defaults]``)."""

    # Channels /imagine works in (empty: every channel); elsewhere it names them.
    allowed_channels: tuple[int, ...] = ()
    # The speed a job gets when neither its prompt nor its user's settings name one.
    default_speed: SpeedName | None = None
    # Whether anyone may press the buttons under someone else's job (U, V, reroll);
    # cancel is always the owner's (and an admin's).
    others_may_press: bool = True
    # Discord role id -> tier: a member with several such roles gets the tier with the
    # largest weight; a tier an admin assigned in the database wins over roles.
    role_tiers: dict[int, str] = Field(default_factory=dict)
    # Roles whose members may use /admin besides those with Manage Server.
    admin_roles: tuple[int, ...] = ()


class BotSettings(_Section):
    """The Discord front end: message etiquette, guild behaviour, the local device."""

    # A progress message is edited at most once per this many seconds (only its newest
    # state is sent). Messages written with the bot's own token (after the interaction
    # token expired, or in DMs) share a budget per channel: at most channel_edit_budget
    # writes per channel_edit_window_s, as Discord limits them; writes through an
    # interaction token are limited per token by Discord, so per message here.
    edit_interval_s: float = Field(default=3.0, ge=0.05, le=60)
    channel_edit_budget: int = Field(default=5, ge=1, le=50)
    channel_edit_window_s: float = Field(default=5.0, gt=0, le=60)
    # Whether `imagine bot` runs a device worker in its own process; unset: yes with
    # the memory queue, no with Redis (set it on the GPU hosts' processes).
    local_worker: bool | None = None
    guild_defaults: GuildSettings = GuildSettings()
    guilds: dict[int, GuildSettings] = Field(default_factory=dict)

    def guild(self, guild_id: int | None) -> GuildSettings:
        """The settings of ``guild_id`` (the defaults for unlisted guilds and DMs)."""
        if guild_id is None:
            return self.guild_defaults
        return self.guilds.get(guild_id, self.guild_defaults)


class TierSettings(_Section):
    """One user tier: its fair share, limits and the lanes it may use."""

    weight: float = Field(gt=0, le=1000, description="fair-share weight against other tiers")
    rate_per_min: float = Field(gt=0, description="jobs a user may submit per minute")
    burst: int | None = Field(default=None, ge=1, description="bucket size (default: a minute)")
    max_running: int = Field(ge=1, le=1000)
    max_queued: int = Field(ge=1, le=100_000)
    speeds: frozenset[SpeedName] = frozenset({SpeedName.FAST, SpeedName.RELAX})
    # Monthly fast-lane allowance in measured GPU-seconds; None: unlimited.
    fast_budget_gpu_s: float | None = Field(default=None, ge=0)
    paid: bool = False


def _default_tiers() -> dict[str, TierSettings]:
    fast_relax = frozenset({SpeedName.FAST, SpeedName.RELAX})
    every = frozenset(SpeedName)
    return {
        "free": TierSettings(
            weight=1,
            rate_per_min=10,
            # Two: a quick job of the user may run next to their long one.
            max_running=2,
            max_queued=4,
            speeds=fast_relax,
            fast_budget_gpu_s=1800,
        ),
        "basic": TierSettings(
            weight=2,
            rate_per_min=100,
            max_running=3,
            max_queued=10,
            speeds=fast_relax,
            fast_budget_gpu_s=3.3 * 3600,
            paid=True,
        ),
        "pro": TierSettings(
            weight=4,
            rate_per_min=100,
            max_running=6,
            max_queued=20,
            speeds=every,
            fast_budget_gpu_s=30 * 3600,
            paid=True,
        ),
        "admin": TierSettings(
            weight=8,
            rate_per_min=1000,
            max_running=12,
            max_queued=100,
            speeds=every,
            fast_budget_gpu_s=None,
            paid=True,
        ),
    }


class SchedulerSettings(_Section):
    """Lanes, fair queuing, aging and preemption."""

    # A job's lane from its estimated device seconds (running alone): at most
    # realtime_max_cost_s is realtime, at most batch_max_cost_s is batch, else background.
    realtime_max_cost_s: float = Field(default=15.0, gt=0)
    batch_max_cost_s: float = Field(default=180.0, gt=0)
    # The longest a queued job of each lane should wait; aging moves a job ahead of
    # everything once it has waited aging_fraction of its bound.
    realtime_max_wait_s: float = Field(default=30.0, gt=0)
    batch_max_wait_s: float = Field(default=300.0, gt=0)
    background_max_wait_s: float = Field(default=3600.0, gt=0)
    aging_fraction: float = Field(default=0.5, gt=0, le=1)
    # Within a lane, of the jobs whose fair finish time is at most this many virtual
    # seconds (device-seconds per unit of tier weight) after the first one's, the
    # cheapest goes first: no user falls further behind their fair share for it.
    fair_size_slack_s: float = Field(default=30.0, ge=0)
    # Preemption: running jobs make way at a step boundary for a waiting job of a more
    # urgent rank (aged, then lanes in order), or of the same rank and smaller. Up to
    # preempt_pause_rows rows are paused in place on the device (nothing saved), for a
    # job costing less than 1/preempt_pause_ratio of their remaining work; the rest are
    # evicted with their checkpoint, for a job of at most 1/preempt_size_ratio of it,
    # at most preempt_max_per_job times per job. A paused job keeps its latents and
    # sampler state on the device (under 1 MiB per sample at 1024 px).
    preemption: bool = True
    preempt_min_steps: int = Field(default=1, ge=1, description="steps a job runs between two")
    preempt_max_per_job: int = Field(default=10, ge=0)
    preempt_size_ratio: float = Field(default=4.0, ge=1)
    preempt_pause_ratio: float = Field(default=1.0, ge=1)
    preempt_pause_rows: int = Field(default=64, ge=0)
    # A job below the realtime lane (and not aged) joins a running batch only when
    # batching saves at least this fraction of the device time the two would take
    # apart; otherwise it waits for the batch rather than lengthen every step that
    # realtime work waits for (0: always join when there is room).
    batch_min_gain: float = Field(default=0.05, ge=0, lt=1)
    # The cost model before any step was measured: seconds per step of one 512x512
    # row is step_fixed_s + step_row_s * rows * (pixels / 512^2) ** step_pixel_exponent.
    step_fixed_s: float = Field(default=0.015, ge=0)
    step_row_s: float = Field(default=0.009, gt=0)
    step_pixel_exponent: float = Field(default=1.15, ge=1, le=2)
    default_tier: str = "free"
    tiers: dict[str, TierSettings] = Field(default_factory=_default_tiers)


class AdmissionSettings(_Section):
    """Token buckets beyond each user's tier: per guild and for the whole service."""

    guild_per_min: float = Field(default=600.0, gt=0)
    global_per_min: float = Field(default=3000.0, gt=0)


class DegradeSettings(_Section):
    """The degradation ladder: normal, light, medium, heavy (defaults after the seed)."""

    auto: bool = True
    # Light degradation runs this fraction of the requested steps (at least one).
    light_steps_factor: float = Field(default=0.6, gt=0, le=1)
    # One level up when the queue is longer than escalate_queue_len, or the device
    # utilization and the p95 wait both exceed theirs, for escalate_after_s.
    escalate_queue_len: int = Field(default=100, ge=1)
    escalate_utilization: float = Field(default=0.9, gt=0, le=1)
    escalate_p95_wait_s: float = Field(default=60.0, gt=0)
    escalate_after_s: float = Field(default=300.0, ge=0)
    # One level down when the queue is shorter than relax_queue_len for relax_after_s,
    # or the utilization stays under relax_utilization for relax_utilization_after_s.
    relax_queue_len: int = Field(default=20, ge=0)
    relax_after_s: float = Field(default=900.0, ge=0)
    relax_utilization: float = Field(default=0.5, ge=0, le=1)
    relax_utilization_after_s: float = Field(default=1800.0, ge=0)
    # The load is sampled every sample_interval_s; the p95 wait and the utilization are
    # measured over the last sample_window_s.
    sample_interval_s: float = Field(default=5.0, gt=0, le=300)
    sample_window_s: float = Field(default=300.0, gt=0)


class Settings(BaseSettings):
    """Everything the service can be told; see ``config/imagine.example.toml``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    log: LogSettings = LogSettings()
    discord: DiscordSettings = DiscordSettings()
    bot: BotSettings = BotSettings()
    queue: QueueSettings = QueueSettings()
    engine: EngineSettings = EngineSettings()
    prompt: PromptSettings = PromptSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    admission: AdmissionSettings = AdmissionSettings()
    degrade: DegradeSettings = DegradeSettings()

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_given(cls, value: object) -> object:
        # An empty string would become Path("."): the data written wherever the command
        # happens to run. Unset the variable to get the default instead.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty; unset it to use the default data directory")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Sources by precedence: the environment, then the file's values (passed as init
        arguments); no dotenv or secrets directory."""
        return (env_settings, init_settings)

    @property
    def database_path(self) -> Path:
        """The SQLite system of record, inside the data directory."""
        return self.data_dir / "imagine.db"

    @property
    def images_dir(self) -> Path:
        """Where generated images are stored, inside the data directory."""
        return self.data_dir / "images"

    @property
    def models_dir(self) -> Path:
        """Where built models (the tiny one) live, inside the data directory."""
        return self.data_dir / "models"

    def require_discord_token(self) -> str:
        """The bot token, or a clear error when it is not configured."""
        if self.discord.token is None or not self.discord.token.get_secret_value().strip():
            raise SettingsError(
                "discord.token is required to run the bot: set IMAGINE_DISCORD__TOKEN "
                "or [discord] token in the config file"
            )
        return self.discord.token.get_secret_value()

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, every secret replaced by a mask."""
        data = self.model_dump(mode="json")
        data["discord"]["token"] = MASK if self.discord.token is not None else None
        data["queue"]["redis_url"] = mask_url(self.queue.redis_url.get_secret_value())
        return data


def redis_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a Redis URL (its scheme), or None; the answer shows
    the scheme only, never the URL and its password."""
    scheme, separator, _rest = url.partition("://")
    if separator and scheme.lower() in REDIS_SCHEMES:
        return None
    shown = f" (got {scheme}://)" if separator and len(scheme) <= 16 else ""
    allowed = ", ".join(f"{name}://" for name in REDIS_SCHEMES)
    return f"must start with one of {allowed}{shown}"


def mask_url(url: str) -> str:
    """Hide the password (or the whole user part) of a URL such as ``redis://:pw@host``."""
    return re.sub(r"(?<=://)([^/@]*)@", lambda m: f"{MASK}@" if m.group(1) else "@", url)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings from defaults, the TOML file (argument or ``IMAGINE_CONFIG``) and
    the environment, in increasing priority. ``overrides`` win over everything (tests)."""
    path = config_file if config_file is not None else os.environ.get(CONFIG_ENV) or None
    file_values = _read_toml(Path(path)) if path else {}
    try:
        settings = Settings(**file_values)
        if overrides:
            # Validated like everything else; model_validate reads no environment.
            merged = _deep_merge(settings.model_dump(), overrides)
            settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc
    _check_consistency(settings)
    return settings


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise SettingsError(f"config file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "settings"
    env = ENV_PREFIX + ENV_NESTED.join(loc).upper()
    value = error.get("input")
    shown = MASK if _looks_secret(key) else repr(value)
    if error["type"] == "extra_forbidden":
        return f"unknown setting {key} (from the config file or {env})"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    # pydantic prefixes the message of a validator's ValueError; the key already says where.
    problem = error["msg"].removeprefix("Value error, ")
    return f"invalid setting {key}={shown} ({env}): {problem}{more}"


def _looks_secret(key: str) -> bool:
    return any(word in key for word in ("token", "password", "secret", "redis_url"))


def _check_consistency(settings: Settings) -> None:
    engine, prompt = settings.engine, settings.prompt
    if engine.default_model not in engine.models:
        names = ", ".join(sorted(engine.models))
        raise SettingsError(
            f"invalid setting engine.default_model={engine.default_model!r}: "
            f"not among the declared models ({names})"
        )
    scheduler = settings.scheduler
    if scheduler.default_tier not in scheduler.tiers:
        names = ", ".join(sorted(scheduler.tiers))
        raise SettingsError(
            f"invalid setting scheduler.default_tier={scheduler.default_tier!r}: "
            f"not among the declared tiers ({names})"
        )
    _check_role_tiers(settings)
    if scheduler.batch_max_cost_s < scheduler.realtime_max_cost_s:
        raise SettingsError(
            f"invalid setting scheduler.batch_max_cost_s={scheduler.batch_max_cost_s}: "
            f"must be at least scheduler.realtime_max_cost_s={scheduler.realtime_max_cost_s}"
        )
    if prompt.default_n > prompt.max_n:
        raise SettingsError(
            f"invalid setting prompt.default_n={prompt.default_n}: "
            f"must not exceed prompt.max_n={prompt.max_n}"
        )


def _check_role_tiers(settings: Settings) -> None:
    tiers = settings.scheduler.tiers
    guilds = {"guild_defaults": settings.bot.guild_defaults}
    guilds.update({f"guilds.{gid}": guild for gid, guild in settings.bot.guilds.items()})
    for where, guild in guilds.items():
        for role, tier in guild.role_tiers.items():
            if tier not in tiers:
                names = ", ".join(sorted(tiers))
                raise SettingsError(
                    f"invalid setting bot.{where}.role_tiers.{role}={tier!r}: "
                    f"not among the declared tiers ({names})"
                )
