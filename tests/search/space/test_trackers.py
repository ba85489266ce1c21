"""``tune.trackers`` in a space file: the names and options it takes, read through ``load_space``, and
every mistake an error naming the entry and what is allowed, before anything starts."""

from __future__ import annotations

import sys
from pathlib import Path

import helpers
import pytest

from search.space.file import SpaceError, load_space
from search.space.trackers import kinds

BASE = "model: {encoder: tiny}\ntrain: {max_steps: 40, eval_every: 10}\nsearch:\n"
LR = "  optim.lr: {loguniform: [1.0e-5, 1.0e-4]}\n"


def space_with(tmp_path: Path, trackers: str | None, overrides: dict[str, str] | None = None):
    text = BASE + LR + (f"tune:\n  trackers: {trackers}\n" if trackers is not None else "")
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_space(path, overrides)


def test_tensorboard_alone_is_the_default(tmp_path):
    # (the callbacks each list gives: tests/search/engine/test_trackers.py)
    space = space_with(tmp_path, None)
    assert space.tune.trackers is None and kinds(space.tune.trackers) == ["tensorboard"]


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("[tensorboard, mlflow, wandb]", [{"kind": "tensorboard"}, {"kind": "mlflow"}, {"kind": "wandb"}]),
        ("[mlflow]", [{"kind": "mlflow"}]),
        ("[]", []),
        (
            "[{kind: mlflow, tracking_uri: 'sqlite:///x.db', experiment: runs}, {kind: wandb, mode: online}]",
            [
                {"kind": "mlflow", "tracking_uri": "sqlite:///x.db", "experiment": "runs"},
                {"kind": "wandb", "mode": "online"},
            ],
        ),
    ],
)
def test_names_and_options_are_read(tmp_path, written, read):
    assert space_with(tmp_path, written).tune.trackers == read


def test_set_on_the_command_line(tmp_path):
    space = space_with(tmp_path, "[tensorboard]", {"tune.trackers": "[tensorboard, mlflow]"})
    assert [t["kind"] for t in space.tune.trackers] == ["tensorboard", "mlflow"]


@pytest.mark.parametrize(
    ("written", "key", "message"),
    [
        ("[tensorboard, mlfow]", "tune.trackers[1]",
         "unknown tracker 'mlfow' (did you mean 'mlflow'?); choose from: mlflow, tensorboard, wandb"),
        ("[{kind: neptune}]", "tune.trackers[0].kind",
         "unknown tracker 'neptune'; choose from: mlflow, tensorboard, wandb"),
        ("[{kind: [mlflow]}]", "tune.trackers[0].kind",
         "is ['mlflow'], but must be a tracker's name; choose from: mlflow, tensorboard, wandb"),
        ("[{kind: {a: 1}}]", "tune.trackers[0].kind", "is {'a': 1}, but must be a tracker's name"),
        ("[{kind: true}]", "tune.trackers[0].kind", "is true, but must be a tracker's name"),
        ("mlflow", "tune.trackers", "must be a list of trackers, such as [tensorboard, mlflow, wandb]"),
        ("[3]", "tune.trackers[0]", "is 3, but must be a tracker (mlflow, tensorboard, wandb) or a mapping"),
        ("[{tracking_uri: x}]", "tune.trackers[0]", "must be a tracker"),
        ("[{kind: mlflow, tracking_url: x}]", "tune.trackers[0].tracking_url",
         "unknown option (did you mean 'tracking_uri'?); mlflow takes: tracking_uri, experiment"),
        ("[{kind: tensorboard, logdir: x}]", "tune.trackers[0].logdir", "tensorboard takes no options"),
        ("[{kind: wandb, mode: cloud}]", "tune.trackers[0].mode", "is 'cloud', but must be one of: offline, online"),
        ("[{kind: wandb, project: 3}]", "tune.trackers[0].project", "is 3, but must be a non-empty string or null"),
        ("[mlflow, wandb, mlflow]", "tune.trackers[2]", "mlflow is already tune.trackers[0]; name each tracker once"),
    ],
)  # fmt: skip
def test_bad_trackers_name_the_entry(tmp_path, written, key, message):
    with pytest.raises(SpaceError) as e:
        space_with(tmp_path, written)
    assert e.value.key == key and message in e.value.message, str(e.value)


def test_a_library_that_is_not_installed_is_named_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python marks a module that cannot be imported
    with pytest.raises(SpaceError) as e:
        space_with(tmp_path, "[tensorboard, wandb]")
    assert e.value.key == "tune.trackers[1]"
    assert e.value.message == ('wandb needs the package wandb, which is not installed; install it with: '
                               'pip install "mtbert-search[trackers]"')  # fmt: skip


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[tensorboard, mlfow]", "--set tune.trackers[1]: unknown tracker 'mlfow' (did you mean 'mlflow'?); choose"),
        ("[{kind: [mlflow]}]", "--set tune.trackers[0].kind: is ['mlflow'], but must be a tracker's name"),
    ],
)  # fmt: skip
def test_the_cli_refuses_a_bad_tracker_before_anything_starts(tmp_path, data_dir, token_cache, value, message):
    space = helpers.write_space(tmp_path, data_dir, token_cache, name="bad")
    out = helpers.cli(str(space), "--set", f"tune.trackers={value}", timeout=120)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "results").exists()
