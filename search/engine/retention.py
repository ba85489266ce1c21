"""Keep the checkpoint a search's saved state points at until a newer state is saved.

Tune keeps ``tune.keep_checkpoints`` checkpoints per trial and deletes the others as soon as a new
checkpoint is registered, then saves the experiment state (the file ``mtbert-search resume``
restores from) a moment later. A search killed in between leaves a saved state whose trial
"continues from" a checkpoint that is gone, and that trial cannot be resumed.

``KeepRestorable`` closes the gap: just before Tune registers a trial's new checkpoint (and may
delete the previous one), it hard-links the trial's current latest checkpoint to
``.kept-<name>`` in the trial folder (no copy of the data; the files stay until both names are
gone). The state saved after that registration points at the new checkpoint, so at the next
checkpoint the older kept copy is dropped: each running trial holds at most one kept copy.
``restore_kept`` puts a kept copy back under its own name when the original is missing (before a
resume), ``drop_kept`` removes them all (when a search or resume has finished).

On a URI storage path (``s3://...``) the kept copy is a copy the storage makes itself (S3's
server-side copy: nothing passes through this machine), and ``restore_kept`` and ``drop_kept`` work
on the storage of a working copy (``search.storage``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ray.tune import Callback

from search import storage

PREFIX = ".kept-"


def _local_dir(checkpoint: Any) -> Path | None:
    """The checkpoint's folder when it is on a local file system, else None."""
    fs = getattr(checkpoint, "filesystem", None)
    if fs is None or getattr(fs, "type_name", "local") != "local":
        return None
    return Path(checkpoint.path)


def link_tree(src: Path, dest: Path) -> None:
    """``dest`` with hard links to every file of ``src`` (a copy where links are not possible)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dest, copy_function=link)


class KeepRestorable(Callback):
    """A Tune callback: see the module doc."""

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        current = trial.checkpoint  # not yet replaced by ``checkpoint``: Tune registers it after the callbacks
        if current is None:
            return
        folder = _local_dir(current)
        if folder is None:
            _keep_on_storage(current.filesystem, current.path)
            return
        if not folder.is_dir():
            return
        keep = folder.parent / f"{PREFIX}{folder.name}"
        for old in folder.parent.glob(f"{PREFIX}*"):
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
        if not keep.exists():
            link_tree(folder, keep)


def _keep_on_storage(fs: Any, path: str) -> None:
    parent, _, name = path.rstrip("/").rpartition("/")
    keep = f"{parent}/{PREFIX}{name}"
    for old in storage.folders(fs, parent):
        if old.startswith(PREFIX) and old != f"{PREFIX}{name}":
            storage.delete_folder(fs, f"{parent}/{old}")
    if f"{PREFIX}{name}" not in storage.folders(fs, parent):
        storage.copy_folder(fs, path, keep)


def _on_storage(experiment: Path) -> tuple[Any, str, list[tuple[str, str]]] | None:
    """For a working copy: its storage's filesystem, path, and (trial folder, kept copy) pairs there."""
    uri = storage.remote_of(experiment)
    if uri is None:
        return None
    fs, root = storage.open_uri(uri)
    pairs = [(trial, kept) for trial in storage.folders(fs, root) if trial.startswith("trial_")
             for kept in storage.folders(fs, f"{root}/{trial}") if kept.startswith(PREFIX)]  # fmt: skip
    return fs, root, pairs


def kept_copies(experiment: Path) -> list[Path]:
    return sorted(Path(experiment).glob(f"*/{PREFIX}*"))


def restore_kept(experiment: Path) -> list[Path]:
    """Put each kept copy whose checkpoint is missing back under its name; drop the others.
    Returns the checkpoints put back."""
    restored: list[Path] = []
    remote = _on_storage(experiment)
    if remote is not None:
        fs, root, pairs = remote
        for trial, kept in pairs:
            original = kept.removeprefix(PREFIX)
            if original not in storage.folders(fs, f"{root}/{trial}"):
                storage.copy_folder(fs, f"{root}/{trial}/{kept}", f"{root}/{trial}/{original}")
                restored.append(experiment / trial / original)
            storage.delete_folder(fs, f"{root}/{trial}/{kept}")
        return restored
    for keep in kept_copies(experiment):
        original = keep.parent / keep.name.removeprefix(PREFIX)
        if original.exists():
            shutil.rmtree(keep, ignore_errors=True)
        else:
            keep.rename(original)
            restored.append(original)
    return restored


def drop_kept(experiment: Path) -> None:
    remote = _on_storage(experiment)
    if remote is not None:
        fs, root, pairs = remote
        for trial, kept in pairs:
            storage.delete_folder(fs, f"{root}/{trial}/{kept}")
    for keep in kept_copies(experiment):
        shutil.rmtree(keep, ignore_errors=True)
