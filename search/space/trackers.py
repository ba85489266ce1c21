"""A space file's ``tune.trackers``: where the trials' settings and curves are logged as the search runs.

    tune:
      trackers: [tensorboard]                           # the default
      trackers: [tensorboard, mlflow, wandb]            # names alone: each tracker's defaults
      trackers:
        - tensorboard
        - {kind: mlflow, tracking_uri: http://mlflow.example:5000, experiment: pcgrad}
        - {kind: wandb, project: mtbert, entity: my-team, mode: online}

``tensorboard`` writes event files into each trial's folder (``search.engine.tensorboard``); ``mlflow``
and ``wandb`` log one parent run per search and one child run per trial (``search.engine.trackers``,
where each option's default is described). An empty list logs to none of them (Tune's CSV and JSON
files are written whatever the list says). Each entry is checked here, before Ray starts: an unknown
kind or option, a value of the wrong type, a tracker named twice, or one whose library is not
installed (``pip install "mtbert-search[trackers]"``) is an error naming the entry.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from mtbert.errors import did_you_mean, show
from search.errors import SpaceError

# the options each kind takes; every option is a non-empty string, or null for its default
OPTIONS: dict[str, tuple[str, ...]] = {
    "tensorboard": (),
    "mlflow": ("tracking_uri", "experiment"),
    "wandb": ("project", "entity", "mode"),
}
KINDS = tuple(sorted(OPTIONS))
DEFAULT = ({"kind": "tensorboard"},)
WANDB_MODES = ("offline", "online")
# the module a kind imports, and the package that provides it
LIBRARIES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny (or mlflow)"),
             "wandb": ("wandb", "wandb")}  # fmt: skip


def read_trackers(value: Any, where: str, path: Path | str) -> list[dict[str, Any]]:
    """``tune.trackers`` as written, as ``[{"kind": ..., option: value}, ...]`` (null: the default,
    TensorBoard alone). ``where`` is the key the value was written under (``tune.trackers``,
    ``--set tune.trackers``, ``tune.profiles.gpu.trackers``)."""
    if value is None:
        return [dict(t) for t in DEFAULT]
    if not isinstance(value, list):
        raise SpaceError(path, where, f"is {show(value)}, but must be a list of trackers, such as "
                                      f"[tensorboard, mlflow, wandb]; choose from: {', '.join(KINDS)}")  # fmt: skip
    trackers: list[dict[str, Any]] = []
    for i, entry in enumerate(value):
        tracker = read_entry(entry, f"{where}[{i}]", path)
        named = kinds(trackers)
        if tracker["kind"] in named:
            first = f"{where}[{named.index(tracker['kind'])}]"
            raise SpaceError(path, f"{where}[{i}]", f"{tracker['kind']} is already {first}; name each tracker once")
        trackers.append(tracker)
    return trackers


def read_entry(entry: Any, where: str, path: Path | str) -> dict[str, Any]:
    at = where
    if isinstance(entry, str):
        entry = {"kind": entry}
    elif isinstance(entry, dict) and "kind" in entry:
        at = f"{where}.kind"
    if not isinstance(entry, dict) or "kind" not in entry:
        raise SpaceError(path, where, f"is {show(entry)}, but must be a tracker ({', '.join(KINDS)}) or a mapping "
                                      "such as {kind: mlflow, tracking_uri: sqlite:///mlflow.db}")  # fmt: skip
    kind = entry["kind"]
    if not isinstance(kind, str):  # a list or a mapping cannot even be looked up
        raise SpaceError(path, at, f"is {show(kind)}, but must be a tracker's name; choose from: {', '.join(KINDS)}")
    if kind not in OPTIONS:
        raise SpaceError(path, at, f"unknown tracker {show(kind)}{did_you_mean(kind, KINDS)}; "
                                   f"choose from: {', '.join(KINDS)}")  # fmt: skip
    allowed = OPTIONS[kind]
    options = {}
    for key, option in entry.items():
        if key == "kind":
            continue
        if key not in allowed:
            takes = f"takes: {', '.join(allowed)}" if allowed else "takes no options"
            raise SpaceError(path, f"{where}.{key}", f"unknown option{did_you_mean(key, allowed)}; {kind} {takes}")
        if option is not None and not (isinstance(option, str) and option):
            raise SpaceError(path, f"{where}.{key}", f"is {show(option)}, but must be a non-empty string or null")
        if key == "mode" and option is not None and option not in WANDB_MODES:
            raise SpaceError(path, f"{where}.{key}", f"is {show(option)}, but must be one of: {', '.join(WANDB_MODES)}")
        options[str(key)] = option
    module, package = LIBRARIES[kind]
    if importlib.util.find_spec(module) is None:
        raise SpaceError(path, at, f"{kind} needs the package {package}, which is not installed; "
                                   'install it with: pip install "mtbert-search[trackers]"')  # fmt: skip
    return {"kind": kind, **options}


def kinds(trackers: list[dict[str, Any]] | None) -> list[str]:
    """The kinds named, in order (the default's when ``trackers`` is None)."""
    return [t["kind"] for t in (DEFAULT if trackers is None else trackers)]
