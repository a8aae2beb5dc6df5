"""Process boundaries: the front end and torch-free backend modules never import torch."""

from __future__ import annotations

import subprocess
import sys

TORCH_FREE = [
    "bot",
    "config.settings",
    "config.logging",
    "storage.db",
    "storage.images",
    "backend.models",
    "backend.prompt",
    "backend.catalog",
    "backend.events",
    "backend.grid",
    "backend.queue",
    "backend.service",
    "backend.worker.worker",
    "backend.app",
    "cli.generate",
    "cli",
    "backend.scheduling.fairness",
    "backend.scheduling.lanes",
    "backend.scheduling.preemption",
    "backend.scheduling.eta",
    "backend.degrade.controller",
    "backend.degrade.loadwatch",
    "backend.degrade.redis",
    "backend.events.memory",
    "backend.admission.limits",
    "backend.admission.redis",
    "backend.engine.types",
    "backend.engine.source",
    "backend.bench.sim",
    "backend.bench.scheduler",
    "backend.bench.trace",
    "backend.bench.report",
]


def test_torch_free_modules_do_not_import_torch() -> None:
    """Importing the bot and the backend's torch-free modules leaves torch unloaded."""
    code = (
        "import importlib, sys\n"
        f"for name in {TORCH_FREE!r}: importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""
