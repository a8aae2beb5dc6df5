"""The embedded tiny model: a Stable-Diffusion-1.5-shaped pipeline with random weights.

Built offline and deterministically from a seed, so the service, its tests and a fresh
install can run real diffusers code end to end without downloading anything. The
shapes follow SD1.5 (block layout, 8x latent scale, CLIP text encoder, Euler schedule
over 1000 training steps); the channels are small enough to build and run on a CPU in
seconds. The images it makes are noise-like: it proves the plumbing, not the art.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from backend.engine.hardware import untyped_diffusers
from backend.engine.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    END_TOKEN,
    PROMPT_CORPUS,
    START_TOKEN,
    train_bpe,
    write_clip_tokenizer,
)

log = structlog.get_logger(__name__)

TINY_MODEL_DIRNAME = "tiny-sd"
MARKER_FILENAME = "imagine_model.json"
TEMP_PREFIX = ".tiny-sd-"
MAX_PROMPT_TOKENS = 77

SD15_DOWN_BLOCKS = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
SD15_UP_BLOCKS = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
SD15_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def build_tiny_pipeline(dest: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline into the new folder ``dest``; returns ``dest``.

    The folder appears whole or not at all (see :func:`staged_build`). Raises
    ``FileExistsError`` when ``dest`` already exists.
    """
    started = time.perf_counter()
    staged_build(dest, lambda folder: _build_into(folder, seed), TEMP_PREFIX)
    log.info(
        "tiny_model_built",
        path=str(dest),
        seed=seed,
        duration_s=round(time.perf_counter() - started, 2),
    )
    return dest


def staged_build(dest: Path, build: Callable[[Path], None], temp_prefix: str) -> Path:
    """Run ``build`` on a hidden temporary folder beside ``dest`` (named ``temp_prefix``
    and a random tail), then rename it to ``dest``; returns ``dest``.

    The temporary folder is removed on any failure. Raises ``FileExistsError`` when
    ``dest`` exists before or after the build.
    """
    if dest.exists():
        raise FileExistsError(errno.EEXIST, "model destination already exists", str(dest))
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix, dir=dest.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the model folder is not
        build(staging)
        _rename_no_replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def ensure_tiny_model(models_dir: Path) -> Path:
    """The tiny model's folder under ``models_dir``, built there on first use.

    Safe when several processes race: the losers of the final rename use the winner's
    folder. Hidden ``.tiny-sd-*`` folders left by a crashed build are never taken for
    the model.
    """
    target = models_dir / TINY_MODEL_DIRNAME
    if is_complete(target):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        return build_tiny_pipeline(target)
    except FileExistsError:
        if is_complete(target):
            return target
        raise


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a finished tiny model (it is renamed in only when whole)."""
    return (folder / "model_index.json").is_file() and (folder / MARKER_FILENAME).is_file()


def _rename_no_replace(source: Path, dest: Path) -> None:
    # os.rename replaces an empty directory silently; refuse that, and report a
    # non-empty one (another builder won the race) as the FileExistsError it is.
    if dest.exists():
        raise FileExistsError(errno.EEXIST, "tiny model destination already exists", str(dest))
    try:
        os.rename(source, dest)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(exc.errno, "tiny model destination appeared", str(dest)) from exc
        raise


def _build_into(folder: Path, seed: int) -> None:
    import torch
    from transformers import CLIPTokenizer

    from backend.engine.hardware import quiet_model_libraries

    quiet_model_libraries()
    vocab, merges = train_bpe(PROMPT_CORPUS.splitlines(), DEFAULT_VOCAB_SIZE)
    tokenizer_dir = write_clip_tokenizer(folder / "tokenizer", vocab, merges, MAX_PROMPT_TOKENS)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)

    # Weights are drawn on the CPU in fp32 so that a seed gives the same bytes anywhere;
    # the forked RNG leaves the caller's global torch seed alone.
    components: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        previous_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            for name, make in (
                ("unet", _make_unet),
                ("vae", _make_vae),
                ("text_encoder", lambda: _make_text_encoder(vocab)),
            ):
                torch.manual_seed(seed)
                components[name] = make().eval()
        finally:
            torch.set_default_dtype(previous_dtype)
    pipe = untyped_diffusers().StableDiffusionPipeline(
        tokenizer=tokenizer,
        scheduler=_make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **components,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # save_pretrained leaves only tokenizer.json and its own config; restore the
    # classic vocab.json/merges.txt files and a config free of load-time flags.
    write_clip_tokenizer(tokenizer_dir, vocab, merges, MAX_PROMPT_TOKENS)
    marker = {"family": "sd15", "builder": "imagine tiny", "seed": seed, "format": 1}
    (folder / MARKER_FILENAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _make_unet() -> Any:
    return untyped_diffusers().UNet2DConditionModel(
        sample_size=64,  # latents; 64 * 8 = 512 px by default, as SD1.5
        in_channels=4,
        out_channels=4,
        down_block_types=SD15_DOWN_BLOCKS,
        up_block_types=SD15_UP_BLOCKS,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def _make_vae() -> Any:
    return untyped_diffusers().AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=512,
        scaling_factor=0.18215,
    )


def _make_text_encoder(vocab: dict[str, int]) -> Any:
    return clip_text_encoder(vocab, width=32)


def clip_text_encoder(vocab: dict[str, int], width: int, layers: int = 2, heads: int = 4) -> Any:
    """A small CLIP text model over ``vocab`` (the project's BPE tokenizer), 77 positions,
    MLP twice as wide as ``width``, random weights from torch's current seed."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_PROMPT_TOKENS,
        projection_dim=width,
        bos_token_id=vocab[START_TOKEN],
        eos_token_id=vocab[END_TOKEN],
        pad_token_id=vocab[END_TOKEN],
    )
    return CLIPTextModel(config)


def _make_scheduler() -> Any:
    return untyped_diffusers().EulerDiscreteScheduler(**SD15_SCHEDULER)
