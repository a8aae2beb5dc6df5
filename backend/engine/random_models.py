"""Pipelines of the real model families with random weights, built offline.

``tiny`` keeps a family's block layout (block types, attention per block, text
encoders, 8x latent scale) with small channels, so the whole engine path runs on a
CPU in seconds; ``full`` has the real configuration (SD1.5's 860M-parameter UNet,
SDXL's UNet and both of its text encoders), so shape bugs of the real models show
without downloading them. Weights are drawn in fp32 from a seed (the same bytes
anywhere); ``full`` is written in fp16 to keep the folder at half size. Tokenizers
are the project's own BPE, written in CLIP's file layout.
"""

from __future__ import annotations

import errno
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from backend.engine.hardware import untyped_diffusers
from backend.engine.tiny import (
    MARKER_FILENAME,
    MAX_PROMPT_TOKENS,
    SD15_DOWN_BLOCKS,
    SD15_SCHEDULER,
    SD15_UP_BLOCKS,
    build_tiny_pipeline,
    staged_build,
)
from backend.engine.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    END_TOKEN,
    PROMPT_CORPUS,
    START_TOKEN,
    train_bpe,
    write_clip_tokenizer,
)
from backend.errors import BackendError
from config.settings import ModelFamily

log = structlog.get_logger(__name__)

TEMP_PREFIX = ".random-model-"
CLIP_VOCAB_SIZE = 49408  # CLIP's vocabulary; the own tokenizer uses its first ids only
DISK_MARGIN_BYTES = 64 * 2**20

SDXL_DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
SDXL_UP_BLOCKS = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")


class ModelSize(StrEnum):
    """How large a random model is: small channels, or the real configuration."""

    TINY = "tiny"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class TextEncoderShape:
    """A CLIP text transformer's dimensions; ``with_projection`` for SDXL's second one."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    act: str = "quick_gelu"
    projection: int | None = None
    with_projection: bool = False


@dataclass(frozen=True, slots=True)
class Architecture:
    """Every constructor argument of a family's components at one size.

    ``vocab_size`` ``None`` sizes the text encoders to the own tokenizer.
    """

    family: ModelFamily
    size: ModelSize
    unet: Mapping[str, Any]
    vae: Mapping[str, Any]
    text_encoders: tuple[TextEncoderShape, ...]
    vocab_size: int | None
    fp16: bool


class NotEnoughDiskError(BackendError):
    """The destination's file system has less free space than the build needs."""

    def __init__(self, path: Path, needed_bytes: int, free_bytes: int) -> None:
        self.path, self.needed_bytes, self.free_bytes = path, needed_bytes, free_bytes
        super().__init__(
            f"building needs about {needed_bytes / 2**30:.1f} GiB but {path} has "
            f"{free_bytes / 2**30:.1f} GiB free"
        )


def _vae(channels: tuple[int, ...], layers: int, groups: int, sdxl: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": 4,
        "norm_num_groups": groups,
        "sample_size": 1024 if sdxl else 512,
        "scaling_factor": 0.13025 if sdxl else 0.18215,
    }
    if sdxl:
        config["force_upcast"] = True
    return config


def _sdxl_unet(
    channels: tuple[int, ...],
    heads: tuple[int, ...],
    depth: tuple[int, ...],
    text: tuple[TextEncoderShape, TextEncoderShape],
    time_embed_dim: int,
    layers: int,
    groups: int,
) -> dict[str, Any]:
    pooled = text[1].projection or text[1].hidden
    return {
        "sample_size": 128,  # 1024 px, as SDXL
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": SDXL_DOWN_BLOCKS,
        "up_block_types": SDXL_UP_BLOCKS,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "attention_head_dim": heads,
        "transformer_layers_per_block": depth,
        "cross_attention_dim": text[0].hidden + text[1].hidden,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": time_embed_dim,
        "projection_class_embeddings_input_dim": 6 * time_embed_dim + pooled,
        "norm_num_groups": groups,
    }


CLIP_L = TextEncoderShape(hidden=768, layers=12, heads=12, intermediate=3072, projection=768)
OPENCLIP_BIGG = TextEncoderShape(
    hidden=1280,
    layers=32,
    heads=20,
    intermediate=5120,
    act="gelu",
    projection=1280,
    with_projection=True,
)
TINY_TEXT = TextEncoderShape(hidden=32, layers=2, heads=4, intermediate=64)
# Another width than the first encoder, so that a mix-up of the two cannot fit.
TINY_TEXT_2 = TextEncoderShape(
    hidden=48, layers=2, heads=4, intermediate=96, act="gelu", projection=48, with_projection=True
)

SD15_FULL = Architecture(
    family=ModelFamily.SD15,
    size=ModelSize.FULL,
    unet={
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": SD15_DOWN_BLOCKS,
        "up_block_types": SD15_UP_BLOCKS,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae=_vae((128, 256, 512, 512), 2, 32, sdxl=False),
    text_encoders=(CLIP_L,),
    vocab_size=CLIP_VOCAB_SIZE,
    fp16=True,
)
SDXL_FULL = Architecture(
    family=ModelFamily.SDXL,
    size=ModelSize.FULL,
    unet=_sdxl_unet((320, 640, 1280), (5, 10, 20), (1, 2, 10), (CLIP_L, OPENCLIP_BIGG), 256, 2, 32),
    vae=_vae((128, 256, 512, 512), 2, 32, sdxl=True),
    text_encoders=(CLIP_L, OPENCLIP_BIGG),
    vocab_size=CLIP_VOCAB_SIZE,
    fp16=True,
)
SDXL_TINY = Architecture(
    family=ModelFamily.SDXL,
    size=ModelSize.TINY,
    unet=_sdxl_unet((32, 64, 64), (2, 4, 4), (1, 2, 2), (TINY_TEXT, TINY_TEXT_2), 8, 1, 8),
    vae=_vae((8, 16, 32, 32), 1, 8, sdxl=True),
    text_encoders=(TINY_TEXT, TINY_TEXT_2),
    vocab_size=None,
    fp16=False,
)

_ARCHITECTURES = {
    (ModelFamily.SD15, ModelSize.FULL): SD15_FULL,
    (ModelFamily.SDXL, ModelSize.FULL): SDXL_FULL,
    (ModelFamily.SDXL, ModelSize.TINY): SDXL_TINY,
}


def architecture(family: ModelFamily, size: ModelSize) -> Architecture:
    """The component configuration of ``family`` at ``size``.

    SD1.5 at tiny size is the embedded tiny model (:mod:`backend.engine.tiny`) and has
    no entry here; raises ``ValueError`` for it and for families without a builder.
    """
    try:
        return _ARCHITECTURES[(family, size)]
    except KeyError:
        raise ValueError(f"no random {size.value} architecture for {family.value}") from None


def build_random_pipeline(
    dest: Path, family: ModelFamily, size: ModelSize = ModelSize.TINY, seed: int = 0
) -> Path:
    """Build a random-weight pipeline of ``family`` into the new folder ``dest``.

    The folder appears whole or not at all and loads with the family's diffusers
    pipeline ``from_pretrained``. Raises ``FileExistsError`` when ``dest`` exists and
    :class:`NotEnoughDiskError` before writing when its file system is too full.
    """
    if family is ModelFamily.SD15 and size is ModelSize.TINY:
        return build_tiny_pipeline(dest, seed)
    arch = architecture(family, size)
    if dest.exists():
        raise FileExistsError(errno.EEXIST, "model destination already exists", str(dest))
    check_disk(dest.parent, estimated_bytes(arch))
    started = time.perf_counter()
    staged_build(dest, lambda folder: _build_into(folder, arch, seed), TEMP_PREFIX)
    log.info(
        "random_model_built",
        path=str(dest),
        family=family.value,
        size=size.value,
        seed=seed,
        duration_s=round(time.perf_counter() - started, 2),
    )
    return dest


def check_disk(folder: Path, needed_bytes: int) -> None:
    """Raise :class:`NotEnoughDiskError` unless ``folder`` has ``needed_bytes`` free."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise NotEnoughDiskError(folder, needed_bytes, free)


def estimated_bytes(arch: Architecture) -> int:
    """About how many bytes the built folder takes (weights and a margin)."""
    per_value = 2 if arch.fp16 else 4
    return sum(parameter_counts(arch).values()) * per_value + DISK_MARGIN_BYTES


def parameter_counts(arch: Architecture) -> dict[str, int]:
    """Parameters per component, counted on the meta device (nothing is allocated)."""
    import torch

    vocab_size = arch.vocab_size or DEFAULT_VOCAB_SIZE
    counts: dict[str, int] = {}
    with torch.device("meta"):
        for name in ("unet", "vae", *_encoder_names(arch)):
            module = _one_component(arch, name, vocab_size, 0, 1)
            counts[name] = sum(p.numel() for p in module.parameters())
    return counts


def _text_encoder_maker(
    shape: TextEncoderShape, vocab_size: int, bos_id: int, eos_id: int
) -> Callable[[], Any]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        max_position_embeddings=MAX_PROMPT_TOKENS,
        hidden_act=shape.act,
        projection_dim=shape.projection or shape.hidden,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    model_class = CLIPTextModelWithProjection if shape.with_projection else CLIPTextModel
    return lambda: model_class(config)


def _build_into(folder: Path, arch: Architecture, seed: int) -> None:
    import torch
    from transformers import CLIPTokenizer

    from backend.engine.hardware import quiet_model_libraries

    quiet_model_libraries()
    vocab, merges = train_bpe(PROMPT_CORPUS.splitlines(), DEFAULT_VOCAB_SIZE)
    names = ["tokenizer", "tokenizer_2"][: len(arch.text_encoders)]
    folders = [write_clip_tokenizer(folder / name, vocab, merges) for name in names]
    tokenizers = {
        name: CLIPTokenizer.from_pretrained(path) for name, path in zip(names, folders, strict=True)
    }
    components = _seeded_components(arch, len(vocab), vocab, seed)
    if arch.fp16:
        components = {name: module.to(torch.float16) for name, module in components.items()}
    pipe = _pipeline(arch.family, {**tokenizers, **components})
    pipe.save_pretrained(folder, safe_serialization=True)
    # save_pretrained leaves only tokenizer.json; keep CLIP's classic files beside it.
    for path in folders:
        write_clip_tokenizer(path, vocab, merges, MAX_PROMPT_TOKENS)
    marker = {
        "family": arch.family.value,
        "builder": f"imagine random {arch.size.value}",
        "seed": seed,
        "format": 1,
    }
    (folder / MARKER_FILENAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _pipeline(family: ModelFamily, parts: dict[str, Any]) -> Any:
    diffusers = untyped_diffusers()
    scheduler = diffusers.EulerDiscreteScheduler(**SD15_SCHEDULER)
    if family is ModelFamily.SDXL:
        return diffusers.StableDiffusionXLPipeline(scheduler=scheduler, **parts)
    return diffusers.StableDiffusionPipeline(
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **parts,
    )


def _seeded_components(
    arch: Architecture, tokens: int, vocab: Mapping[str, int], seed: int
) -> dict[str, Any]:
    import torch

    # Drawn on the CPU in fp32 with the same seed per component, so that a seed gives
    # the same bytes anywhere; the forked RNG leaves the caller's global seed alone.
    vocab_size = arch.vocab_size or tokens
    bos_id, eos_id = vocab[START_TOKEN], vocab[END_TOKEN]
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        previous_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            built: dict[str, Any] = {}
            for name in ("unet", "vae", *_encoder_names(arch)):
                torch.manual_seed(seed)
                built[name] = _one_component(arch, name, vocab_size, bos_id, eos_id).eval()
        finally:
            torch.set_default_dtype(previous_dtype)
    return built


def _encoder_names(arch: Architecture) -> list[str]:
    return ["text_encoder", "text_encoder_2"][: len(arch.text_encoders)]


def _one_component(arch: Architecture, name: str, vocab_size: int, bos: int, eos: int) -> Any:
    diffusers = untyped_diffusers()
    if name == "unet":
        return diffusers.UNet2DConditionModel(**arch.unet)
    if name == "vae":
        return diffusers.AutoencoderKL(**arch.vae)
    shape = arch.text_encoders[_encoder_names(arch).index(name)]
    return _text_encoder_maker(shape, vocab_size, bos, eos)()
