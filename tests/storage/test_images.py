"""The content-addressed image store: naming, deduplication and atomic writes."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from storage.images import ImageStore

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def test_file_is_named_by_content_hash(tmp_path: Path) -> None:
    """Bytes land at root/<sha[:2]>/<sha><suffix>, holding exactly those bytes."""
    store = ImageStore(tmp_path / "images")
    stored = store.write(PNG)
    sha = hashlib.sha256(PNG).hexdigest()
    assert stored.sha256 == sha
    assert stored.path == tmp_path / "images" / sha[:2] / f"{sha}.png"
    assert stored.path == store.path_for(sha, ".png")
    assert stored.size_bytes == len(PNG)
    assert stored.path.read_bytes() == PNG


def test_same_bytes_share_one_file_written_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing equal bytes twice returns the same path and renames a file into place once."""
    renames: list[str] = []
    real_replace = os.replace

    def counting_replace(src: str, dst: str) -> None:
        renames.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", counting_replace)
    store = ImageStore(tmp_path)
    first = store.write(PNG)
    second = store.write(PNG)
    assert first == second
    assert len(renames) == 1
    assert files_under(tmp_path) == [first.path]


def test_different_bytes_get_different_files(tmp_path: Path) -> None:
    """Different content gives different paths, and a different suffix a different file."""
    store = ImageStore(tmp_path)
    a = store.write(PNG)
    b = store.write(PNG + b"!")
    c = store.write(PNG, ".webp")
    assert len({a.path, b.path, c.path}) == 3
    assert a.sha256 == c.sha256
    assert c.path.suffix == ".webp"


def test_no_temporary_files_are_left(tmp_path: Path) -> None:
    """After successful writes only the final, non-hidden files remain."""
    store = ImageStore(tmp_path)
    written = {store.write(bytes([n]) * 100).path for n in range(10)}
    assert set(files_under(tmp_path)) == written
    assert not [p for p in files_under(tmp_path) if p.name.startswith(".")]


def test_failed_rename_propagates_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the rename fails, the error reaches the caller and no temporary or final file stays."""

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    store = ImageStore(tmp_path)
    with pytest.raises(OSError, match="No space left"):
        store.write(PNG)
    assert files_under(tmp_path) == []
    assert not store.path_for(hashlib.sha256(PNG).hexdigest()).exists()


def test_written_files_are_world_readable(tmp_path: Path) -> None:
    """Files are 0644, not mkstemp's 0600, so another process can serve them."""
    stored = ImageStore(tmp_path).write(PNG)
    assert stat.S_IMODE(stored.path.stat().st_mode) == 0o644


@pytest.mark.parametrize("suffix", ["png", ".PNG", ".toolong", "./png", ".p/g", "", ".png\n"])
def test_bad_suffix_is_refused(tmp_path: Path, suffix: str) -> None:
    """A suffix must be '.' and 1-5 lowercase letters or digits; nothing is written otherwise."""
    store = ImageStore(tmp_path)
    with pytest.raises(ValueError, match="suffix"):
        store.write(PNG, suffix)
    assert files_under(tmp_path) == []


def test_path_for_refuses_a_bad_hash(tmp_path: Path) -> None:
    """path_for only accepts 64 lowercase hex digits, so no path escapes the root."""
    with pytest.raises(ValueError, match="sha256"):
        ImageStore(tmp_path).path_for("../" + "a" * 61)


async def test_write_async_matches_write(tmp_path: Path) -> None:
    """write_async stores the same file as write, off the event loop."""
    store = ImageStore(tmp_path)
    stored = await store.write_async(PNG, ".png")
    assert stored == store.write(PNG)
    assert stored.path.read_bytes() == PNG
