"""The shapes model's card (``README.md`` in its folder): data, command, seed, steps, scores."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from backend.shapes.shipped import CARD, read_marker, write_marker
from backend.shapes.vocab import (
    BACKGROUNDS,
    HELD_OUT,
    SHAPE_COLORS,
    SHAPES,
    TEMPLATES,
    Position,
    Size,
    combinations,
)

if TYPE_CHECKING:
    from backend.shapes.evaluate import Accuracy
    from backend.shapes.train import TrainReport


def vocabulary_line() -> str:
    """What the model understands, in one line."""
    return (
        f"shapes: {', '.join(SHAPES)}; shape colours: {', '.join(SHAPE_COLORS)}; "
        f"backgrounds: {', '.join(BACKGROUNDS)}; sizes: {', '.join(Size)}; "
        f"positions: {', '.join(p for p in Position)}"
    )


def write_card(
    folder: Path, report: TrainReport, scores: Mapping[str, Accuracy], eval_seeds: int
) -> None:
    """Write the card and add the scores to the folder's marker."""
    from backend.shapes.evaluate import Sampling

    plan = report.plan
    sampling = Sampling.builtin_defaults()
    marker = read_marker(folder)
    marker["training"] = report.as_dict()
    marker["scores"] = {name: accuracy.as_dict() for name, accuracy in scores.items()}
    marker["sampling"] = {
        "steps": sampling.steps,
        "guidance": sampling.guidance,
        "scheduler": "euler",
        "size_px": sampling.size_px,
        "seeds_per_prompt": eval_seeds,
    }
    write_marker(folder, marker)
    command = f"imagine model train-shapes DIR --seed {plan.seed} --steps {plan.unet_steps}"
    if plan.vae_steps != 1200:
        command += f" --vae-steps {plan.vae_steps}"
    if plan.samples != 16384:
        command += f" --samples {plan.samples}"
    if plan.threads != 2:
        command += f" --threads {plan.threads}"
    rows = "\n".join(
        f"| {name.replace('_', '-')} | {a.samples} | {a.background:.1%} | {a.color:.1%} | "
        f"{a.shape:.1%} |"
        for name, a in scores.items()
    )
    stages = ", ".join(
        f"{stage} {seconds / 60:.1f} min" for stage, seconds in report.stage_s.items()
    )
    parameters = ", ".join(f"{name} {count:,}" for name, count in report.parameters.items())
    templates = "\n".join(f"- `{template}`" for template in TEMPLATES)
    text = f"""---
library_name: diffusers
pipeline_tag: text-to-image
license: mit
tags:
- stable-diffusion
- toy
---

# shapes: the built-in toy model

A Stable-Diffusion-architecture text-to-image model trained from scratch on procedurally
drawn coloured shapes, at 32x32 pixels. It is a toy for trying the product offline: it
knows one picture, a single shape on a flat background, and nothing else. Real models
are configured by Hub id or folder (see the project's docs/models.md).

Understands: {vocabulary_line()}.

## Data

Every image is drawn on the fly (8x supersampled, box-filtered to 32 px, with a little
random jitter of position, size and rotation): one filled shape on a flat background,
never in the background's colour. Captions come from these templates, with size and
position words left out at random:

{templates}

{len(HELD_OUT)} of the {len(combinations())} colour/shape/background combinations are never
drawn for training; they measure whether the model combines words it learned separately.

## Training

Command: `{command}` ({report.plan.samples} drawn images, {report.threads} CPU threads).

Stages: {stages}; {report.total_s / 60:.1f} min in all.

1. Autoencoder (`AutoencoderKL`, channels 32/64/64, 4x latent scale, 4 latent channels):
   {plan.vae_steps} steps of batch {plan.vae_batch}, L1 + MSE + 1e-6 KL, AdamW lr {plan.vae_lr:g}.
2. UNet (`UNet2DConditionModel`, channels 32/64/64, cross-attention 64) and a 2-layer CLIP
   text encoder of width 64, trained together on latents encoded once: {plan.unet_steps} steps
   of batch {plan.unet_batch}, epsilon prediction on SD1.5's noise schedule, min-SNR
   weighting (gamma 5), one caption in ten emptied for classifier-free guidance, EMA
   0.999, AdamW lr {plan.unet_lr:g} halved at mid-run.

Parameters: {parameters}. Weights are stored in float16; the same command and seed give
the same bytes on the same machine.

## Scores

Read back by the project's scorer (`backend/shapes/score.py`, numpy and PIL) from
{eval_seeds} seeds per prompt, with the catalog defaults: {sampling.steps} Euler steps,
guidance {sampling.guidance:g}, {sampling.size_px}x{sampling.size_px} pixels. "held-out": the
combinations never drawn for training, as "a COLOUR SHAPE on a BACKGROUND background";
"seen": an even sample of trained combinations.

| prompts | samples | background | shape colour | shape |
|---|---|---|---|---|
{rows}
"""
    (folder / CARD).write_text(text, encoding="utf-8")
