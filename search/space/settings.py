"""A space file's ``tune:`` section: how the search runs (trials, ASHA, resources, where results go).

Read in layers, each checked where it was written so an error names the right key: the file's
``tune:``, then the chosen profile (``tune.profiles.<name>``), then ``--smoke``, then ``--set
tune.KEY=VALUE``. ``TuneSettings`` is the merged result; ``TuneLayers.sources`` say which layer gave
each value.

Each setting is declared once, as a ``TuneSettings`` field with its default and its rule, the way
the run config declares its own (``mtbert.config.check``); a rule returns the constraint a value
breaks (``"must be an integer >= 1"``) and the message names the key where the value was written.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtbert.config import check
from mtbert.errors import did_you_mean, one_of, show, unknown_setting
from search.errors import SpaceError
from search.space.dimensions import read_number
from search.space.sampler import read_sampler
from search.space.schedulers import SchedulerSettings
from search.space.schedulers import check as check_scheduler
from search.space.schedulers import merge as merge_scheduler
from search.space.trackers import read_trackers

FINAL_EVAL = ("best", "all", "none")

# ---- rules, as mtbert.config's: each returns the constraint a value breaks ("must be >= 2"), or None.
# A tune value is checked as written (no type coercion), so each rule checks the type too.

Rule = Callable[[Any], "str | None"]


def integer(minimum: int | None = None, optional: bool = False) -> Rule:
    def rule(v: Any) -> str | None:
        if v is None and optional:
            return None
        ok = isinstance(v, int) and not isinstance(v, bool) and (minimum is None or v >= minimum)
        need = "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or null" if optional else "")
        return None if ok else f"must be {need}"

    return rule


def number(minimum: float, strict: bool = False, optional: bool = False) -> Rule:
    def rule(v: Any) -> str | None:
        if v is None and optional:
            return None
        finite = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if finite and (v > minimum if strict else v >= minimum):
            return None
        need = f"{'>' if strict else '>='} {minimum:g}" + (" or null" if optional else "")
        return f"must be {need if finite else 'a finite number ' + need}"

    return rule


def either(*choices: Any, boolean: bool = False) -> Rule:
    def rule(v: Any) -> str | None:
        ok = v in choices and isinstance(v, bool) == boolean
        return None if ok else f"must be {' or '.join(str(c).lower() if boolean else str(c) for c in choices)}"

    return rule


def gpus(v: Any) -> str | None:
    problem = number(0)(v)
    if problem or v <= 1 or float(v).is_integer():
        return problem
    return "must be a fraction up to 1 (trials sharing a GPU) or a whole number of GPUs"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "must be a non-empty string"


STUDY_STORAGES = (
    "sqlite (the default: <search folder>/study.db), sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DATABASE, "
    "journal:PATH (an Optuna journal file), or null (no database: the study only in the searcher's saved state)"
)


def study_storage(v: Any) -> str | None:
    """The form of ``tune.study_storage`` (``search.engine.study`` checks that it can be used)."""
    if v is None or v in ("sqlite", "none"):
        return None
    if isinstance(v, str):
        for scheme in ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "journal:"):
            if v.startswith(scheme) and len(v) > len(scheme):
                return None
    return f"must be {STUDY_STORAGES}"


def folder_name(v: Any) -> str | None:
    if v is None or (isinstance(v, str) and v and "/" not in v and "\\" not in v and v not in (".", "..")):
        return None
    return "must be a folder name (no '/'), or null for the space file's stem"


# ---- the settings --------------------------------------------------------------------------------


@dataclass
class TuneSettings:
    # a dev metric the trainer reports at every evaluation; checked by build_settings, since which
    # metrics there are depends on data.extra_sst
    metric: str = "overall"
    mode: str = check("max", either("max", "min"))
    num_samples: int = check(16, integer(1))  # trials
    grace_period: int = check(1, integer(1))  # ASHA: evaluations every trial gets before it can be stopped
    reduction_factor: float = check(3, number(2))  # ASHA: 1 in reduction_factor trials goes on at each rung
    # ASHA's last rung, in evaluations; null: as many as a full trial reports
    max_t: int | None = check(None, integer(1, optional=True))
    max_concurrent: int | None = check(None, integer(1, optional=True))  # null: as many as the resources allow
    cpus_per_trial: float = check(1, number(0, strict=True))
    # A fraction packs several trials on one GPU (0.5: two). A trial trains on the GPU Ray gives it
    # (train.device: auto), and fails with a clear error if torch cannot use that GPU.
    gpus_per_trial: float = check(0, gpus)
    time_budget_s: float | None = check(None, number(0, strict=True, optional=True))  # the whole search; null: no limit
    seed: int = check(0, integer())  # the Optuna sampler's seed (each trial's own seed is train.seed)
    storage_path: str = check("results", text)  # made absolute against the current directory when read
    name: str | None = check(None, folder_name)  # the experiment folder under storage_path; null: the space file's stem
    # A local storage_path that every node of a cluster mounts at the same path, on a file system the
    # search does not recognise as shared (search.storage.SHARED_TYPES: NFS, EFS, Lustre, ...); on a
    # cluster a local storage_path is refused unless it is on one of those, or this is true.
    storage_shared: bool = check(False, either(True, False, boolean=True))
    # Retries of a failed trial, each from its last checkpoint. A failure is an exception in the
    # trial or the loss of its node (only an autoscaler's drain of a preempted node is not counted):
    # the default 2 lets a lost node's trials go on elsewhere, on a cluster of spot instances too. A
    # trial whose loss stops being finite ends itself (stop_reason) and is not retried.
    max_failures: int = check(2, integer(0))
    keep_checkpoints: int = check(1, either(1, 2))  # per trial: 1 keeps the best, 2 keeps the best and the last
    eval_subset: int | None = check(
        None, integer(1, optional=True)
    )  # dev rows per task in the evaluations (data.max_eval_per_task)
    # After the search: "best" scores the best trial's checkpoint on the full dev sets and writes
    # its predictions, "all" lets every trial do so itself (train.final_eval), "none" skips it.
    final_eval: str = check("best", either(*FINAL_EVAL))
    # With final_eval best: the top final_top_k trials by their selection score are scored on the
    # full dev sets, and the best of them there becomes the search's best (search.summary).
    final_top_k: int = check(3, integer(1))
    # asha (default), hyperband, pbt or fifo, or {kind: ..., options}: search.space.schedulers
    scheduler: SchedulerSettings = dataclasses.field(default=SchedulerSettings())
    # The Optuna sampler: a kind (tpe, random, qmc, gp, cmaes) or {kind: ..., its options}, read by
    # search.space.sampler; null: TPE, multivariate with group: true, random for the first
    # max(2, num_samples // 4) finished trials (warm-start trials count), seeded with seed.
    sampler: dict[str, Any] | None = None
    # What the search starts from (search.space.warm_start): base, mappings of values, run-config or
    # space files (points: the first trials, in order), earlier searches' folders (their trials join the study).
    warm_start: list[Any] | None = None
    # Where the Optuna study is kept, written as trials report, for optuna.load_study and 'mtbert-search
    # dashboard' while the search runs (search.engine.study): sqlite (the search folder's study.db),
    # sqlite:///PATH, postgresql://..., journal:PATH, or null (only in the searcher's saved state).
    study_storage: str | None = check("sqlite", study_storage)
    # Where trials are logged as they run (search.space.trackers): tensorboard, mlflow, wandb, each a
    # name or {kind: ..., options}; null: [tensorboard]. Read into [{"kind": ..., options}, ...].
    trackers: list[dict[str, Any]] | None = None


FIELDS = tuple(f.name for f in dataclasses.fields(TuneSettings))
RULES: dict[str, Rule | None] = {f.name: f.metadata.get("rule") for f in dataclasses.fields(TuneSettings)}
PROFILE_KEYS = (*FIELDS, "set", "search")


def metrics(extra_sst: bool) -> tuple[str, ...]:
    """The dev metrics every evaluation reports (``mtbert.evaluate.Scores`` plus ``overall``)."""
    from mtbert.evaluate import Scores

    names = (*(f.name for f in dataclasses.fields(Scores)), "overall")
    return (*names, "cfimdb_acc") if extra_sst else names


# ---- reading -----------------------------------------------------------------------------------


@dataclass
class TuneLayers:
    """The raw tune values merged so far, each with the key path it came from."""

    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    # the same setting written twice in one layer (tune.grace_period and tune.scheduler.grace_period)
    conflicts: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def update(self, values: dict[str, Any], prefix: str) -> None:
        written: dict[str, str] = {}  # this layer's settings, where written
        for key, value in values.items():
            where = f"{prefix}.{key}" if prefix else key
            if key == "scheduler" or str(key).startswith("scheduler."):
                merge_scheduler(self.values, self.sources, key, value, where, self.conflicts, written)
                continue
            if key in written:
                self.conflicts.append((where, written[key]))
            self.values[key] = read_number(value)
            self.sources[key] = written[key] = where


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
    if key not in allowed and not (str(key).startswith("scheduler.") and "scheduler" in allowed):
        raise SpaceError(path, f"{where}.{key}", unknown_setting(key, allowed, allowed))


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
    checked: dict[str, Any] = {}  # values read into another form (tune.sampler's mapping)
    for key, value in layers.values.items():
        where = layers.sources[key]
        if key == "metric":
            allowed = metrics(extra_sst)
            if value not in allowed:
                hint = " (cfimdb_acc needs data.extra_sst)" if value == "cfimdb_acc" else did_you_mean(value, allowed)
                raise SpaceError(path, where, f"metric is {show(value)}{hint}, but {one_of(allowed)}")
            continue
        if key == "scheduler":
            continue
        if key == "sampler":
            checked[key] = read_sampler(value, where, path)
            continue
        if key == "trackers":
            checked[key] = read_trackers(value, where, path)
            continue
        if key == "warm_start":  # the entries are read with the dimensions (search.space.warm_start)
            if value is not None and not isinstance(value, list):
                raise SpaceError(path, where, f"is {show(value)}, but must be a list of entries: base, a mapping "
                                              "such as {optim.lr: 3.0e-5}, a run config or space file, or an earlier "
                                              "search's folder")  # fmt: skip
            continue
        problem = RULES[key](value)
        if problem:
            raise SpaceError(path, where, f"{key} is {show(value)}, but {problem}")
    if layers.conflicts:
        where, other = layers.conflicts[0]
        raise SpaceError(path, where, f"is the same setting as {other}, given in the same place; give one of them")
    scheduler = check_scheduler(layers.values.get("scheduler"), layers.sources, path)
    return TuneSettings(**{**layers.values, **checked, "scheduler": scheduler})
