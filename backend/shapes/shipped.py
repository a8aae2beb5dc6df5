"""The shipped shapes pipeline: where it lives and whether its files are whole.

Its folder holds a standard ``save_pretrained`` layout plus ``imagine_model.json``,
which records how it was trained and the SHA-256 of every other file. Checking the
hashes costs milliseconds and turns a truncated, corrupted or missing file into one
line that says how to get a good copy back, instead of a deep loader traceback.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final

from backend.errors import ModelLoadError
from config.settings import BUILTIN_SHAPES

PIPELINE_DIR: Final = Path(__file__).resolve().parent / "pipeline"
"""The shipped pipeline's folder, inside the installed package."""

MARKER: Final = "imagine_model.json"
BUILDER: Final = "imagine shapes"
"""The ``builder`` a trained shapes folder's marker names."""
CARD: Final = "README.md"
REBUILD_HINT: Final = (
    "rebuild it with `imagine model train-shapes DIR` (about 25 minutes on 2 cores) and "
    "set engine.models.shapes.source to DIR, or restore the file from the release"
)


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` except the marker and the model card."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative not in (MARKER, CARD):
            hashes[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def seal(folder: Path) -> None:
    """Record the hashes of ``folder``'s files in its marker (written by training)."""
    marker = read_marker(folder)
    marker["files"] = file_hashes(folder)
    write_marker(folder, marker)


def write_marker(folder: Path, marker: dict[str, Any]) -> None:
    """Write ``folder``'s marker (indented JSON)."""
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def read_marker(folder: Path) -> dict[str, Any]:
    """The folder's marker: how the model was trained and, once sealed, its file hashes."""
    marker: dict[str, Any] = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    return marker


def is_shapes_model(source: str) -> bool:
    """Whether ``source`` is the shipped shapes model or a folder ``train-shapes`` wrote."""
    if source == BUILTIN_SHAPES:
        return True
    try:
        return bool(read_marker(Path(source)).get("builder") == BUILDER)
    except (OSError, ValueError, AttributeError):
        return False


def checked_pipeline(name: str, folder: Path | None = None) -> Path:
    """``folder`` (the shipped one by default) once every file its marker lists is
    present and unchanged.

    Raises :class:`ModelLoadError` naming the first missing or damaged file and how to
    rebuild it.
    """
    folder = folder if folder is not None else PIPELINE_DIR
    source = BUILTIN_SHAPES
    marker_path = folder / MARKER
    try:
        expected = _listed_files(read_marker(folder))
    except FileNotFoundError:
        raise ModelLoadError(name, source, f"{marker_path} is missing; {REBUILD_HINT}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            name, source, f"{marker_path} is unreadable ({exc}); {REBUILD_HINT}"
        ) from None
    for relative, digest in expected.items():
        path = folder / relative
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            raise ModelLoadError(name, source, f"{path} is missing; {REBUILD_HINT}") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ModelLoadError(
                name, source, f"{path} is unreadable ({reason}); {REBUILD_HINT}"
            ) from None
        if actual != digest:
            raise ModelLoadError(
                name, source, f"{path} is corrupt (its checksum changed); {REBUILD_HINT}"
            )
    return folder


def _listed_files(marker: object) -> dict[str, str]:
    """The marker's file hashes; ValueError unless it lists at least one, as text."""
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, dict) or not files:
        raise ValueError("it lists no files")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ValueError("its file list is malformed")
    return files
