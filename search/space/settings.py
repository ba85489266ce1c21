"""A space file's ``tune:`` section: how the search runs (trials, ASHA, resources, where results go).

Read in layers, each checked where it was written so an error names the right key: the file's
``tune:``, then the chosen profile (``tune.profiles.<name>``), then ``--smoke``, then ``--set
tune.KEY=VALUE``. ``TuneSettings`` is the merged result; ``SOURCES`` say which layer gave each value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.space.dimensions import read_number
from search.errors import SpaceError, did_you_mean, show

FINAL_EVAL = ("best", "all", "none")
Rule = Callable[[str, Any], "str | None"]


@dataclass
class TuneSettings:
    metric: str = "overall"  # a dev metric the trainer reports at every evaluation
    mode: str = "max"
    num_samples: int = 16  # trials
    grace_period: int = 1  # ASHA: evaluations every trial gets before it can be stopped
    reduction_factor: float = 3  # ASHA: 1 in reduction_factor trials goes on at each rung
    max_t: int | None = None  # ASHA's last rung, in evaluations; null: as many as a full trial reports
    max_concurrent: int | None = None  # null: as many as the resources allow
    cpus_per_trial: float = 1
    # A fraction packs several trials on one GPU (0.5: two). A trial trains on the GPU Ray gives it
    # (train.device: auto), and fails with a clear error if torch cannot use that GPU.
    gpus_per_trial: float = 0
    time_budget_s: float | None = None  # the whole search; null: no limit
    seed: int = 0  # the Optuna sampler's seed (each trial's own seed is train.seed)
    storage_path: str = "results"  # made absolute against the current directory when read
    name: str | None = None  # the experiment folder under storage_path; null: the space file's stem
    # Retries of a failed trial, each from its last checkpoint. A failure is an exception in the
    # trial or the loss of its node (only an autoscaler's drain of a preempted node is not counted):
    # the default 2 lets a lost node's trials go on elsewhere, on a cluster of spot instances too. A
    # trial whose loss stops being finite ends itself (stop_reason) and is not retried.
    max_failures: int = 2
    keep_checkpoints: int = 1  # per trial: 1 keeps the best, 2 keeps the best and the last
    eval_subset: int | None = None  # dev rows per task in the evaluations (data.max_eval_per_task)
    # After the search: "best" scores the best trial's checkpoint on the full dev sets and writes
    # its predictions, "all" lets every trial do so itself (train.final_eval), "none" skips it.
    final_eval: str = "best"


FIELDS = tuple(f.name for f in dataclasses.fields(TuneSettings))
PROFILE_KEYS = (*FIELDS, "set", "search")


def metrics(extra_sst: bool) -> tuple[str, ...]:
    """The dev metrics every evaluation reports (``mtbert.evaluate.Scores`` plus ``overall``)."""
    from mtbert.evaluate import Scores

    names = (*(f.name for f in dataclasses.fields(Scores)), "overall")
    return (*names, "cfimdb_acc") if extra_sst else names


# ---- rules: each returns what is wrong, in Optuna's words ("x is 1, but must be >= 2") -----------


def _integer(minimum: int | None = None, optional: bool = False) -> Rule:
    def rule(name: str, v: Any) -> str | None:
        if v is None and optional:
            return None
        ok = isinstance(v, int) and not isinstance(v, bool) and (minimum is None or v >= minimum)
        need = "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or null" if optional else "")
        return None if ok else f"{name} is {show(v)}, but must be {need}"

    return rule


def _number(minimum: float, strict: bool = False, optional: bool = False) -> Rule:
    def rule(name: str, v: Any) -> str | None:
        if v is None and optional:
            return None
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        finite = number and math.isfinite(v)
        if finite and (v > minimum if strict else v >= minimum):
            return None
        need = f"{'>' if strict else '>='} {minimum:g}" + (" or null" if optional else "")
        return f"{name} is {show(v)}, but must be {need if finite else 'a finite number ' + need}"

    return rule


def _one_of(*choices: Any) -> Rule:
    def rule(name: str, v: Any) -> str | None:
        if v in choices and not isinstance(v, bool):
            return None
        return f"{name} is {show(v)}, but must be {' or '.join(map(str, choices))}"

    return rule


def _gpus(name: str, v: Any) -> str | None:
    problem = _number(0)(name, v)
    if problem or v <= 1 or float(v).is_integer():
        return problem
    return f"{name} is {v}, but must be a fraction up to 1 (trials sharing a GPU) or a whole number of GPUs"


def _text(name: str, v: Any) -> str | None:
    return None if isinstance(v, str) and v else f"{name} is {show(v)}, but must be a non-empty string"


def _folder_name(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v or "/" in v or "\\" in v or v in (".", ".."):
        return f"{name} is {show(v)}, but must be a folder name (no '/'), or null for the space file's stem"
    return None


RULES: dict[str, Rule] = {
    "mode": _one_of("max", "min"),
    "num_samples": _integer(1),
    "grace_period": _integer(1),
    "reduction_factor": _number(2),
    "max_t": _integer(1, optional=True),
    "max_concurrent": _integer(1, optional=True),
    "cpus_per_trial": _number(0, strict=True),
    "gpus_per_trial": _gpus,
    "time_budget_s": _number(0, strict=True, optional=True),
    "seed": _integer(),
    "storage_path": _text,
    "name": _folder_name,
    "max_failures": _integer(0),
    "keep_checkpoints": _one_of(1, 2),
    "eval_subset": _integer(1, optional=True),
    "final_eval": _one_of(*FINAL_EVAL),
}


# ---- reading -----------------------------------------------------------------------------------


@dataclass
class TuneLayers:
    """The raw tune values merged so far, each with the key path it came from."""

    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)

    def update(self, values: dict[str, Any], prefix: str) -> None:
        for key, value in values.items():
            self.values[key] = read_number(value)
            self.sources[key] = f"{prefix}.{key}" if prefix else key


def read_tune(raw: Any, path: Path) -> tuple[TuneLayers, dict[str, dict[str, Any]]]:
    """The file's ``tune:`` values and its profiles (``{name: {tune keys..., set:, search:}}``)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpaceError(path, "tune", f"must be a mapping of search settings, got {show(raw)}")
    layers, profiles = TuneLayers(), {}
    for key, value in raw.items():
        if key == "profiles":
            profiles = _read_profiles(value, path)
            continue
        check_key(key, "tune", path)
    layers.update({k: v for k, v in raw.items() if k != "profiles"}, "tune")
    return layers, profiles


def check_key(key: Any, where: str, path: Path, allowed: tuple[str, ...] = FIELDS) -> None:
    if key not in allowed:
        listed = ", ".join(allowed)
        raise SpaceError(path, f"{where}.{key}", f"unknown setting{did_you_mean(key, allowed)}; allowed here: {listed}")


def _read_profiles(raw: Any, path: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise SpaceError(
            path, "tune.profiles", f"must be a mapping of profile names (cpu, gpu) to settings, got {show(raw)}"
        )
    for name, profile in raw.items():
        where = f"tune.profiles.{name}"
        if not isinstance(profile, dict):
            raise SpaceError(path, where, f"must be a mapping of tune settings and set:, got {show(profile)}")
        for key in profile:
            check_key(key, where, path, PROFILE_KEYS)
        for section in ("set", "search"):
            if not isinstance(profile.get(section, {}), dict):
                raise SpaceError(
                    path, f"{where}.{section}", f"must be a mapping of dotted settings, got {show(profile[section])}"
                )
    return {str(k): dict(v) for k, v in raw.items()}


def build_settings(layers: TuneLayers, path: Path, extra_sst: bool) -> TuneSettings:
    """Check every value where it was written and build the settings."""
    for key, value in layers.values.items():
        where = layers.sources[key]
        if key == "metric":
            allowed = metrics(extra_sst)
            if value not in allowed:
                hint = " (cfimdb_acc needs data.extra_sst)" if value == "cfimdb_acc" else did_you_mean(value, allowed)
                raise SpaceError(
                    path, where, f"metric is {show(value)}{hint}, but must be one of: {', '.join(allowed)}"
                )
            continue
        problem = RULES[key](key, value)
        if problem:
            raise SpaceError(path, where, problem)
    return TuneSettings(**layers.values)
