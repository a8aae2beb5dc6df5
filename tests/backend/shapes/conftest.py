"""Fixtures of the shapes-model tests: the shipped pipeline, checked once."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.shapes.shipped import checked_pipeline


@pytest.fixture(scope="session")
def shapes_pipeline_dir() -> Path:
    """The shipped shapes pipeline's folder, every file checked against its marker."""
    return checked_pipeline("shapes")
