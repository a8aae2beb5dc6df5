"""``imagine model train-shapes``: train the built-in shapes model, score it, write its card.

The model is built in a hidden folder beside DIR and renamed into place only when
training, scoring and the card are all done, so DIR is either absent or whole.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from backend.errors import BadInputError
from cli.common import EXIT_OK, at_least, positive_int, settings_for

if TYPE_CHECKING:
    from backend.shapes.evaluate import Accuracy
    from backend.shapes.train import TrainPlan, TrainReport

BAR_WIDTH = 30
LOG_EVERY = 0.1  # a log line per tenth of a stage when stderr is not a terminal


def add_parser(
    model_commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``imagine model train-shapes``."""
    train = model_commands.add_parser(
        "train-shapes",
        parents=[common],
        help="train the built-in shapes model into DIR (about 25 minutes on 2 cores)",
        description=(
            "Draw coloured shapes procedurally, train an autoencoder and then a UNet with a "
            "CLIP text encoder on them, score the result on held-out prompts and save it "
            "with a model card into DIR (new or empty). The same seed and steps give the "
            "same weights on the same machine."
        ),
    )
    train.add_argument("dir", type=Path)
    train.add_argument("--seed", type=at_least(0), default=0, help="default: 0")
    train.add_argument(
        "--steps", type=positive_int, default=4400, help="UNet training steps (default: 4400)"
    )
    train.add_argument(
        "--vae-steps",
        type=positive_int,
        default=1200,
        help="autoencoder training steps (default: 1200)",
    )
    train.add_argument(
        "--samples", type=at_least(8), default=16384, help="drawn images (default: 16384)"
    )
    train.add_argument(
        "--threads",
        type=positive_int,
        default=2,
        help="torch CPU threads; part of what decides the bytes (default: 2)",
    )
    train.add_argument(
        "--eval-seeds",
        type=positive_int,
        default=8,
        help="seeds per prompt when scoring (default: 8)",
    )
    train.set_defaults(func=_cmd_train_shapes)


def _cmd_train_shapes(args: argparse.Namespace) -> int:
    settings_for(args)  # validates settings and sets up logging, as every command
    target: Path = args.dir
    _check_target(target)
    from backend.shapes.train import TrainPlan

    plan = TrainPlan(
        seed=args.seed,
        unet_steps=args.steps,
        vae_steps=args.vae_steps,
        samples=args.samples,
        threads=args.threads,
    )
    # SIGTERM unwinds like Ctrl-C, so the half-built folder is removed on the way out.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        report, scores = train_into(target, plan, args.eval_seeds, sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
    held, seen = scores["held_out"], scores["seen"]
    print(
        f"{target}: trained in {report.total_s / 60:.1f} min; held-out prompts: background "
        f"{held.background:.0%}, colour {held.color:.0%}, shape {held.shape:.0%}; seen: "
        f"background {seen.background:.0%}, colour {seen.color:.0%}, shape {seen.shape:.0%}"
    )
    return EXIT_OK


def _terminated(signum: int, _frame: object) -> None:
    print("imagine: terminated; the partly trained model was removed", file=sys.stderr)
    raise SystemExit(128 + signum)


def _check_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BadInputError(f"{target} exists and is not an empty directory; choose a new one")
    if not target.parent.is_dir():
        raise BadInputError(f"{target.parent} is not a directory")


def train_into(
    target: Path, plan: TrainPlan, eval_seeds: int, stream: TextIO
) -> tuple[TrainReport, dict[str, Accuracy]]:
    """Train, score, write the card and seal, in a staging folder renamed to ``target``."""
    from backend.shapes.card import write_card
    from backend.shapes.evaluate import evaluate
    from backend.shapes.shipped import seal
    from backend.shapes.train import train

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        staging.chmod(0o755)
        bar = StageBar(stream)
        report = train(staging, plan, bar.update)
        started = time.perf_counter()
        scores = evaluate(
            staging, eval_seeds, progress=lambda done, total: bar.update("score", done, total)
        )
        report.stage_s["score"] = time.perf_counter() - started
        write_card(staging, report, scores, eval_seeds)
        seal(staging)
        if target.exists():
            target.rmdir()  # checked empty before training
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report, scores


class StageBar:
    """A progress bar per training stage with its ETA on a terminal; otherwise a log
    line at every tenth of a stage."""

    def __init__(self, stream: TextIO) -> None:
        from config.logging import is_terminal

        self._stream = stream
        self._tty = is_terminal(stream)
        self._stage = ""
        self._started = 0.0
        self._logged = -1

    def update(self, stage: str, step: int, total: int, loss: float = float("nan")) -> None:
        """Show ``step`` of ``total`` in ``stage`` (a new stage starts a new bar)."""
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._started, self._logged = stage, now, -1
        elapsed = now - self._started
        eta = elapsed / step * (total - step) if step else 0.0
        loss_text = "" if loss != loss else f" loss {loss:.4f}"
        if self._tty:
            filled = BAR_WIDTH * step // max(total, 1)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            line = f"\r{stage:>11} [{bar}] {step}/{total}{loss_text} ETA {_clock(eta)}  "
            self._stream.write(line + ("\n" if step >= total else ""))
            self._stream.flush()
            return
        tenth = int(step / max(total, 1) / LOG_EVERY)
        if tenth != self._logged:
            self._logged = tenth
            self._stream.write(
                f"{stage}: {step}/{total}{loss_text}, {_clock(elapsed)} elapsed, "
                f"ETA {_clock(eta)}\n"
            )
            self._stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{secs:02d}"
