"""The one way ntng writes a file or folder whole: to a temporary sibling (`.<name>.tmp-<pid>`), renamed into place.

A reader, or a resume after a kill, sees the old file or the new one, never half of one. A killed writer leaves
only `.*.tmp-*` siblings, which whoever owns the folder may drop (`remove_temporaries`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

TEMPORARY_GLOB = ".*.tmp-*"  # what a killed writer leaves behind


def temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: Path, make_parent: bool = False):
    """Yields a temporary sibling of `path` for a writer that wants a path of its own (a tokenizer's save, a
    dataset's `save_to_disk`); renames it onto `path` (a file, or a folder replacing the old one) when the block
    ends without an error, and removes it otherwise. The folder it goes in must exist unless `make_parent` (a run
    directory removed under a running run is an error, not a folder to make again)."""
    path = Path(path)
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            remove(path)
        os.replace(tmp, path)
    finally:
        remove(tmp)


def write_bytes_atomic(path: Path, payload: bytes, make_parent: bool = False) -> None:
    with atomic_path(path, make_parent) as tmp, open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def write_text_atomic(path: Path, text: str, make_parent: bool = False) -> None:
    write_bytes_atomic(path, text.encode(), make_parent)


def remove(path: Path) -> None:
    """A file or a folder, gone; nothing if it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_temporaries(root: Path, recursive: bool = False) -> None:
    """Drop what killed writers left under `root` (never read)."""
    for tmp in (root.rglob if recursive else root.glob)(TEMPORARY_GLOB):
        remove(tmp)
