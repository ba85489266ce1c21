"""The kept copy of a trial's latest checkpoint: made before Tune registers (and may delete) it,
put back when a resume finds the checkpoint gone, dropped at the end."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs

from search.engine.retention import PREFIX, KeepRestorable, drop_kept, kept_copies, restore_kept


@dataclass
class FakeCheckpoint:  # the two attributes of ray.tune.Checkpoint the callback reads
    path: str
    filesystem: object


@dataclass
class FakeTrial:
    checkpoint: FakeCheckpoint | None


def make_checkpoint(trial_dir: Path, index: int) -> FakeCheckpoint:
    folder = trial_dir / f"checkpoint_{index:06d}"
    (folder / "encoder").mkdir(parents=True)
    (folder / "heads.safetensors").write_bytes(bytes([index]) * 64)
    (folder / "encoder" / "model.safetensors").write_bytes(bytes([index]) * 128)
    return FakeCheckpoint(str(folder), pyarrow.fs.LocalFileSystem())


def register(callback: KeepRestorable, trial: FakeTrial, new: FakeCheckpoint) -> None:
    """What Tune does with a new checkpoint: the callbacks, then the new one becomes the latest and
    (keep_checkpoints 1, the older one no longer best) the previous latest is deleted."""
    callback.on_checkpoint(iteration=0, trials=[trial], trial=trial, checkpoint=new)
    previous = trial.checkpoint
    trial.checkpoint = new
    if previous is not None:
        shutil.rmtree(previous.path)


def test_the_checkpoint_the_saved_state_names_survives_its_deletion(tmp_path):
    trial_dir = tmp_path / "exp" / "trial_a"
    trial = FakeTrial(None)
    callback = KeepRestorable()
    register(callback, trial, make_checkpoint(trial_dir, 0))
    assert kept_copies(tmp_path / "exp") == []  # nothing was latest before
    saved_state_names = trial.checkpoint  # the state saved after this registration names checkpoint 0
    register(callback, trial, make_checkpoint(trial_dir, 1))
    # killed here: checkpoint 0 is deleted, the saved state still names it
    assert not Path(saved_state_names.path).exists()
    assert restore_kept(tmp_path / "exp") == [Path(saved_state_names.path)]
    restored = Path(saved_state_names.path)
    assert (restored / "heads.safetensors").read_bytes() == bytes([0]) * 64
    assert (restored / "encoder" / "model.safetensors").read_bytes() == bytes([0]) * 128
    assert kept_copies(tmp_path / "exp") == []


def test_each_trial_holds_one_kept_copy_and_a_present_checkpoint_is_not_replaced(tmp_path):
    trial_dir = tmp_path / "exp" / "trial_a"
    trial = FakeTrial(None)
    callback = KeepRestorable()
    for i in range(4):
        register(callback, trial, make_checkpoint(trial_dir, i))
    kept = kept_copies(tmp_path / "exp")
    assert [p.name for p in kept] == [f"{PREFIX}checkpoint_000002"]  # the latest before the last one
    assert (kept[0] / "heads.safetensors").read_bytes() == bytes([2]) * 64
    # the linked files share their data with the original until it is deleted: no copy on disk
    latest = Path(trial.checkpoint.path)
    assert (latest / "heads.safetensors").stat().st_nlink == 1
    (trial_dir / "checkpoint_000002").mkdir()  # present: the kept copy is dropped, not moved back
    assert restore_kept(tmp_path / "exp") == []
    assert kept_copies(tmp_path / "exp") == []
    assert not any((trial_dir / "checkpoint_000002").iterdir())


def test_linked_copies_share_files_and_drop_kept_leaves_the_checkpoints(tmp_path):
    trial_dir = tmp_path / "exp" / "trial_b"
    trial = FakeTrial(make_checkpoint(trial_dir, 5))
    callback = KeepRestorable()
    callback.on_checkpoint(iteration=0, trials=[trial], trial=trial, checkpoint=make_checkpoint(trial_dir, 6))
    kept = trial_dir / f"{PREFIX}checkpoint_000005"
    assert (kept / "heads.safetensors").stat().st_ino == (trial_dir / "checkpoint_000005" / "heads.safetensors").stat().st_ino
    drop_kept(tmp_path / "exp")
    assert not kept.exists()
    assert sorted(p.name for p in trial_dir.iterdir()) == ["checkpoint_000005", "checkpoint_000006"]


def test_checkpoints_on_other_storage_are_kept_by_a_copy_the_storage_makes(tmp_path):
    # a pyarrow filesystem that is not the local one (as s3:// is), here over a folder: the kept copy
    # is made through the filesystem (S3: a copy the server makes), the older one dropped
    fs = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())
    trial_dir = tmp_path / "trial_a"
    for index in (0, 1):
        (trial_dir / f"checkpoint_00000{index}").mkdir(parents=True)
        (trial_dir / f"checkpoint_00000{index}" / "heads.safetensors").write_bytes(bytes([index]) * 8)
    callback = KeepRestorable()
    trial = FakeTrial(FakeCheckpoint("trial_a/checkpoint_000000", fs))
    callback.on_checkpoint(iteration=0, trials=[trial], trial=trial, checkpoint=None)
    assert (trial_dir / f"{PREFIX}checkpoint_000000" / "heads.safetensors").read_bytes() == bytes([0]) * 8
    trial = FakeTrial(FakeCheckpoint("trial_a/checkpoint_000001", fs))
    callback.on_checkpoint(iteration=1, trials=[trial], trial=trial, checkpoint=None)
    assert sorted(p.name for p in trial_dir.glob(f"{PREFIX}*")) == [f"{PREFIX}checkpoint_000001"]
    assert (trial_dir / f"{PREFIX}checkpoint_000001" / "heads.safetensors").read_bytes() == bytes([1]) * 8
