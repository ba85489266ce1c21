"""The space file: one YAML file holds a base run config, a ``search:`` section and ``tune:`` settings.

    space = load_space("spaces/pcgrad.yaml", {"tune.num_samples": "4"}, profile="cpu")
    OptunaSearch(space=space.define_by_run, ...)      # suggests the active dimensions by dotted key
    config = space.config_for(trial_params)            # the trial's validated RunConfig

Everything that can be wrong with a space is found here, before Ray starts or any folder exists:
the base run config (``mtbert.config``'s checks and ``mtbert.validation``), the dimensions' format
and conditions (``search.space.dimensions``, ``search.space.conditions``), the tune settings
(``search.space.settings``), and what the dimensions do to the run (``search.space.checks``): each
dimension's extreme values (both ends of a range, every choice), and those of each pair of choice and int dimensions, are applied to the base and validated as a run
config, with the dimensions they depend on or switch on set accordingly. Every number is finite
(no .inf or .nan in a bound, step, choice, run setting or tune value). A bad value fails as one
``SpaceError`` naming the file, the key path and what is allowed.

An empty file is refused. A space with no dimensions is a fixed point: its trials would all be the
same run, so it runs one trial, and asking for more (``tune.num_samples`` in the file, a profile or
``--set``) is refused.

Layers, each checked where it was written: the file, then the profile (``tune.profiles.<name>``:
tune values, ``set:`` run values, ``search:`` dimensions), then ``smoke``, then ``--set``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtbert.config import (
    ConfigError,
    DuplicateKey,
    RunConfig,
    evaluations,
    load_yaml,
    parse_value,
    refused_tag,
    set_dotted,
)
from mtbert.errors import did_you_mean, show
from search.errors import SpaceError
from search.space.checks import check_dimensions, check_ratio_grid, check_search_key
from search.space.conditions import order
from search.space.dimensions import Dimension, non_finite, parse_search
from search.space.sampler import describe as describe_sampler
from search.space.schedulers import describe as describe_scheduler
from search.space.schedulers import finish as finish_scheduler
from search.space.settings import FIELDS, TuneLayers, TuneSettings, build_settings, check_key, read_tune
from search.space.smoke import SMOKE_RUN, SMOKE_TUNE, is_smoke_key, shrink, shrink_data, tiny_layers
from search.space.values import build, run_key_problem, set_values, value_at
from search.space.warm_start import WarmPoint, point, read_entries
from search.space.warm_start import describe as describe_warm
from search.storage import HOW as STORAGE_HOW
from search.storage import URI_SCHEMES, is_uri, join, local_path, shown

__all__ = ["Dimension", "Space", "SpaceError", "TuneSettings", "detect_profile", "evaluations", "load_space"]

FIXED_POINT = "a fixed point: no search dimensions"


@dataclass
class Space:
    path: Path
    base: RunConfig  # what every trial starts from: the file's run config after profile, smoke and --set
    dimensions: list[Dimension]  # conditions before the dimensions they guard
    tune: TuneSettings  # merged and checked; max_t, name and storage_path filled in
    profile: str  # the profile asked for or detected ("cpu", "gpu" or one the file names)
    smoke: bool = False
    notes: list[str] = field(default_factory=list)  # human lines for the CLI to print first
    max_evals: int = field(default=1, repr=False)
    max_steps: int = field(default=1, repr=False)
    warm: list[Any] | None = field(default=None, repr=False)  # tune.warm_start read (``warm_start``); None: not yet
    warm_where: str = field(default="tune.warm_start", repr=False)  # where tune.warm_start was written

    def define_by_run(self, trial: Any) -> None:
        """For ``OptunaSearch(space=...)``: suggest every active dimension, named by its key."""
        values: dict[str, Any] = {}
        for d in self.dimensions:
            if d.key not in values and d.active(values):
                values[d.key] = d.suggest(trial)

    def chosen(self, params: dict[str, Any]) -> list[tuple[Dimension, Any]]:
        """The active dimensions and their real values; ``params`` is keyed by parameter name (as
        suggested) or by dotted key (as ``decode`` gives). A dimension left out keeps the base value."""
        values: dict[str, Any] = {}
        out = []
        for d in self.dimensions:
            if d.key in values or not d.active(values):
                continue
            name = d.name if d.name in params else d.key
            if name not in params:
                continue
            values[d.key] = d.decode(params[name])
            out.append((d, values[d.key]))
        return out

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """``{dotted key: real value}`` of the active dimensions, for display and export."""
        return {d.key: value for d, value in self.chosen(params)}

    def params_for(self, values: dict[str, Any]) -> dict[str, Any]:
        """Optuna's parameters for ``values`` (``{dotted key: real value}``; a searched key left out
        takes its base value), named and encoded as ``define_by_run`` suggests them: the inverse of
        ``decode``. A value its dimension cannot take is a ``SpaceError``."""
        finish = (lambda data: shrink_data(data, like=self.base)) if self.smoke else None
        return point(self.dimensions, self.base.to_dict(), values, "values", self.path, finish=finish)[1]

    def warm_start(self) -> list[Any]:
        """``tune.warm_start`` read and checked (``search.space.warm_start``): its points
        (``WarmPoint``, each a trial's valid run config) and earlier searches (``EarlierSearch``), in
        order. Read once: when the space loads, or on first use for a space loaded without it."""
        if self.warm is None:
            finish = (lambda data: shrink_data(data, like=self.base)) if self.smoke else None  # as config_for does
            entries = read_entries(self.tune.warm_start, self.warm_where, self.path, self.base.to_dict(),
                                   self.dimensions, finish)  # fmt: skip
            for entry in entries:
                if isinstance(entry, WarmPoint):
                    try:
                        self.config_for(entry.params)
                    except SpaceError as e:
                        raise SpaceError(self.path, entry.where, f"{e.key}: {e.message}") from None
            self.warm = entries
        return self.warm

    def config_for(self, params: dict[str, Any], fixed: dict[str, Any] | None = None) -> RunConfig:
        """The base with the sampled values, validated; dimensions whose condition is unmet are ignored.
        ``fixed``: dotted settings every trial shares, set as they are after the sampled values.

        One pass over the base's data (sampled values, then the smoke sizes, then ``fixed``) and one
        build, so a trial's config is made and checked once."""
        data = self.base.to_dict()
        try:
            set_values(data, self.chosen(params))
            if self.smoke:
                shrink_data(data, like=self.base)
            for key, value in (fixed or {}).items():
                set_dotted(data, key, value, None)
            return build(data)
        except ConfigError as e:
            raise SpaceError(self.path, e.key, f"{e.message} (trial values: {self.decode(params)})") from None

    def max_evaluations(self) -> int:
        """Evaluations the longest trial reports (ASHA's max_t unless tune.max_t says otherwise)."""
        return self.max_evals


def detect_profile() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def load_space(
    path: str | Path, overrides: dict[str, str] | None = None, *, profile: str | None = None, smoke: bool = False,
    read_warm_start: bool = True,
) -> Space:
    """Read, merge (file, profile, smoke, ``overrides``) and check a space file; see the module doc.
    ``read_warm_start=False`` leaves the files and folders ``tune.warm_start`` names unread until
    ``Space.warm_start()`` is called: a search folder's saved copy of its space, whose searcher
    already holds them (and whose relative paths were relative to the original file)."""
    path = Path(path)
    raw = _read(path)
    if not raw:
        raise SpaceError(path, "file", f"is empty; {HOLDS}")
    base = _run_config({k: v for k, v in raw.items() if k not in ("search", "tune")}, path)
    layers, profiles = read_tune(raw.get("tune"), path)
    entries = _search_entries(raw.get("search"), path)
    name, chosen_profile = _choose_profile(profiles, profile, path)
    if chosen_profile is not None:
        where = f"tune.profiles.{name}"
        layers.update({k: v for k, v in chosen_profile.items() if k not in ("set", "search")}, where)
        base = _override(base, chosen_profile.get("set", {}), path, f"{where}.set")
        _merge_search(entries, chosen_profile.get("search", {}), f"{where}.search", path)
    pinned: dict[str, str] = {}  # key -> why its dimension is not searched
    if smoke:
        layers.update(SMOKE_TUNE, "smoke")
        base = shrink(base)
    base = _apply_set(overrides or {}, base, layers, entries, pinned, path)
    if smoke:
        pinned.update({k: "smoke" for k in entries if k not in pinned and is_smoke_key(k)})
    for key, (spec, origin) in entries.items():
        check_search_key(key, spec, f"{origin}.{key}", path)
    dims = order(parse_search(entries, path), path)
    dims = _pin(dims, pinned, base, smoke)
    check_ratio_grid(dims, path)
    settings = build_settings(layers, path, extra_sst=base.data.extra_sst is not None)
    one = not dims and settings.num_samples > 1 and _trials_not_asked_for(layers)
    if one:  # no dimension: every trial would be the same run
        settings = dataclasses.replace(settings, num_samples=1)
    elif not dims and settings.num_samples > 1:
        raise _same_trials(settings.num_samples, layers, entries, pinned, path)
    base = _settings_into_run(base, settings)
    max_evals, max_steps = check_dimensions(path, base, dims)
    settings = _finish_settings(settings, layers, max_evals, path, smoke)
    scheduler, scheduler_notes = finish_scheduler(settings, dims, layers.sources, path, smoke)
    settings = dataclasses.replace(settings, scheduler=scheduler)
    _check_gpus(base, dims, settings, path)
    space = Space(path, base, dims, settings, name, smoke, max_evals=max_evals, max_steps=max_steps)
    space.warm_where = layers.sources.get("warm_start", space.warm_where)
    if read_warm_start:
        space.warm_start()
    space.notes = _notes(space, chosen_profile is not None, profile is not None, pinned) + scheduler_notes
    space.notes += _start_notes(space)
    if one:
        asked = layers.values.get("num_samples", TuneSettings.num_samples)
        space.notes = [f"{n}, so 1 trial, not {asked}: every trial would be the same run" if n == FIXED_POINT else n
                       for n in space.notes]  # fmt: skip
    return space


# ---- nothing to search -------------------------------------------------------------------------

HOLDS = (
    "a space file holds a run config (model:, train:, ... as mtbert-train reads it), a search: section of "
    "dimensions such as optim.lr: {loguniform: [1.0e-5, 1.0e-4]}, and a tune: section (see spaces/pcgrad.yaml)"
)


def _trials_not_asked_for(layers: TuneLayers) -> bool:
    """tune.num_samples is the default, or the smoke test's: nobody asked for several trials."""
    source = layers.sources.get("num_samples")
    return source is None or source.startswith("smoke.")


def _same_trials(
    n: int, layers: TuneLayers, entries: dict[str, tuple[Any, str]], pinned: dict[str, str], path: Path
) -> SpaceError:
    """Several trials asked for, and no dimension: each would train the same run (the same seed too)."""
    fixed = [k for k in entries if k in pinned]
    why = f" ({', '.join(fixed)} fixed by {', '.join(dict.fromkeys(pinned[k] for k in fixed))})" if fixed else ""
    return SpaceError(
        path,
        "search",
        f"has no dimensions{why}, but {layers.sources['num_samples']} is {n}: every trial would be the same run; "
        "add a dimension under search:, or set tune.num_samples: 1 to train this one point",
    )


# ---- the run config ----------------------------------------------------------------------------


def _run_config(data: dict[str, Any], path: Path) -> RunConfig:
    _refuse_non_finite(data, "", path)
    try:
        return build(data)
    except ConfigError as e:
        raise SpaceError(path, e.key, e.message) from None


def _override(base: RunConfig, values: dict[str, Any], path: Path, where: str) -> RunConfig:
    """``base`` with dotted ``values`` (already YAML-typed); errors are named under ``where``."""
    if not values:
        return base
    for key, value in values.items():
        _refuse_non_finite(value, f"{where} {key}" if where.startswith("--") else f"{where}.{key}" if where else key,
                           path)  # fmt: skip
    data = base.to_dict()
    try:
        for key, value in values.items():
            set_dotted(data, str(key), value, None)
        return build(data)
    except ConfigError as e:
        key = f"{where} {e.key}" if where.startswith("--") else f"{where}.{e.key}" if where else e.key
        raise SpaceError(path, key, e.message) from None


def _refuse_non_finite(value: Any, key: str, path: Path) -> None:
    """Run settings are finite: an infinite or NaN number (.inf, .nan, 1.0e+400) anywhere in
    ``value`` is refused under its full key, where mtbert's own checks might let it through."""
    found = non_finite(value)
    if found is not None:
        inner, number = found
        full = f"{key}.{inner}" if key and inner else key or inner
        raise SpaceError(path, full, f"is {show(number)}, but must be a finite number (no .inf or .nan)")


def _settings_into_run(base: RunConfig, settings: TuneSettings) -> RunConfig:
    """Tune settings that are run settings of every trial. Both are checked as tune settings and no
    run check involves them, so they are set without building the config again."""
    train = dataclasses.replace(base.train, final_eval=settings.final_eval == "all")
    data = base.data
    if settings.eval_subset is not None:
        data = dataclasses.replace(data, max_eval_per_task=settings.eval_subset)
    return dataclasses.replace(base, train=train, data=data)


# ---- reading -----------------------------------------------------------------------------------


# mtbert's reader words a duplicate key "duplicate key 'lr' on line 5 (first on line 3); a key may
# appear once"; a space file says it as it always has, adding that several dimensions on one key
# are written as a list of alternatives.
def _yaml_problem(error: yaml.MarkedYAMLError) -> str | None:
    if isinstance(error, DuplicateKey):
        return (f"duplicate key {error.key!r} (first at line {error.first}); a key may appear once (several "
                "dimensions on one key are a list of alternatives)")  # fmt: skip
    return error.problem


def _check_gpus(base: Any, dims: list, settings: Any, path: Path) -> None:
    """A trial told to train on a GPU gets none from Ray unless ``tune.gpus_per_trial`` asks for one:
    found here, not in every trial after its retries."""
    if settings.gpus_per_trial or any(getattr(d, "key", None) == "train.device" for d in dims):
        return
    if str(base.train.device).startswith("cuda"):
        raise SpaceError(path, "tune.gpus_per_trial", f"is 0, but train.device is {base.train.device!r}: Ray gives a "
                                                      "trial no GPU unless gpus_per_trial asks for one (1, or 0.5 for "
                                                      "two trials a GPU); or set train.device: auto")  # fmt: skip


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpaceError(path, "file", "is a folder, not a space file" if path.is_dir() else "does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpaceError(path, "file", f"is not UTF-8 text ({e.reason} at byte {e.start}); a space file is YAML") from None
    except OSError as e:
        raise SpaceError(path, "file", f"cannot be read ({e.strerror or e})") from None
    try:
        data = load_yaml(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # !!python/object/...: the reader is a SafeLoader, which builds no Python objects
        raise SpaceError(path, "yaml", refused_tag(e) or f"not valid YAML{where}: {_yaml_problem(e)}") from None
    except yaml.YAMLError as e:
        raise SpaceError(path, "yaml", f"not valid YAML: {e}") from None
    if data is None:  # nothing but comments, or nothing at all
        return {}
    if not isinstance(data, dict):
        raise SpaceError(
            path,
            "top level",
            f"must be a mapping of sections (data, model, ..., search, tune), got {type(data).__name__}",
        )
    return data


def _search_entries(raw: Any, path: Path) -> dict[str, tuple[Any, str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpaceError(
            path,
            "search",
            "must be a mapping of dotted run settings to dimensions, e.g. "
            f"optim.lr: {{loguniform: [1.0e-5, 1.0e-4]}}; got {show(raw)}",
        )
    return {str(k): (v, "search") for k, v in raw.items()}


def _merge_search(entries: dict[str, tuple[Any, str]], updates: dict[str, Any], origin: str, path: Path) -> None:
    """Add or replace dimensions; ``null`` removes one."""
    for key, spec in updates.items():
        if spec is not None:
            entries[str(key)] = (spec, origin)
        elif entries.pop(str(key), None) is None:
            raise SpaceError(
                path,
                f"{origin}.{key}",
                f"is null, which removes a dimension, but {key} is not in search{did_you_mean(key, entries)}",
            )


def _choose_profile(profiles: dict[str, dict[str, Any]], asked: str | None, path: Path) -> tuple[str, Any]:
    if asked is None:
        name = detect_profile()
    else:
        name = asked
        allowed = sorted({"cpu", "gpu", *profiles})
        if name not in allowed:
            raise SpaceError(
                path,
                "tune.profiles",
                f"has no profile {show(name)}{did_you_mean(name, allowed)}; choose from: {', '.join(allowed)}",
            )
    return name, profiles.get(name)


def _apply_set(
    overrides: dict[str, Any],
    base: RunConfig,
    layers: TuneLayers,
    entries: dict[str, tuple[Any, str]],
    pinned: dict[str, str],
    path: Path,
) -> RunConfig:
    """``--set`` pairs: ``tune.KEY``, ``search.KEY`` (a dimension, or null to drop it), or a run
    setting, which also pins it: a dimension on that very key is no longer searched."""
    run: dict[str, Any] = {}
    for key, text in overrides.items():
        value = parse_value(text) if isinstance(text, str) else text
        if key.startswith("tune."):
            check_key(key[len("tune.") :], "--set tune", path)
            layers.update({key[len("tune.") :]: value}, "--set tune")
        elif key.startswith("search."):
            _merge_search(entries, {key[len("search.") :]: value}, "--set search", path)
        else:
            problem = run_key_problem(key, extra=[f"tune.{f}" for f in FIELDS] + [f"search.{k}" for k in entries])
            if problem:
                raise SpaceError(path, f"--set {key}", problem)
            run[key] = value
            pinned[key] = "--set"
    return _override(base, run, path, "--set")


def _pin(dims: list[Dimension], pinned: dict[str, str], base: RunConfig, smoke: bool) -> list[Dimension]:
    """Drop the dimensions on pinned keys; a condition on a pinned key is decided by its value now."""
    data = base.to_dict()
    kept: list[Dimension] = []
    for d in dims:
        if d.key in pinned:
            continue
        if smoke and d.key == "model.freeze_depth":
            d = d.up_to(tiny_layers())
            if d is None:
                pinned["model.freeze_depth"] = "smoke"
                continue
        when, drop = {}, False
        for key, values in d.when.items():
            if key in pinned:
                drop |= not any(value_at(data, key) == _normalized(data, key, v) for v in values)
            elif not any(k.key == key for k in kept):
                drop = True  # what it depends on is never searched now
            else:
                when[key] = values
        if not drop:
            kept.append(dataclasses.replace(d, when=when))
    return kept


def _normalized(data: dict[str, Any], key: str, value: Any) -> Any:
    """``value`` as the config holds it (``[multitask]`` becomes a list of phase mappings)."""
    data = copy.deepcopy(data)
    try:
        set_dotted(data, key, value, None)
        return value_at(build(data).to_dict(), key)
    except ConfigError:
        return value


# ---- the settings and the notes ----------------------------------------------------------------


def _finish_settings(
    settings: TuneSettings, layers: TuneLayers, max_evals: int, path: Path, smoke: bool
) -> TuneSettings:
    max_t = settings.max_t or max_evals
    if settings.grace_period > max_t:
        given = "" if settings.max_t else ": the evaluations of the longest trial"
        raise SpaceError(
            path,
            layers.sources.get("grace_period", "tune.grace_period"),
            f"grace_period is {settings.grace_period}, but must be <= max_t ({max_t}{given})",
        )
    storage = settings.storage_path
    if is_uri(storage):  # Ray's trials write there; a scheme pyarrow has no filesystem for is refused now
        scheme = storage.split("://", 1)[0].lower()
        if scheme not in URI_SCHEMES:
            raise SpaceError(path, layers.sources.get("storage_path", "tune.storage_path"),
                             f"storage_path is {storage!r}, whose scheme {scheme}:// no pyarrow filesystem opens; "
                             f"allowed: {STORAGE_HOW}")  # fmt: skip
    else:  # a folder is made absolute now
        storage = str(Path(local_path(storage)).expanduser().resolve())
    name = settings.name or (path.stem + ("-smoke" if smoke else ""))
    return TuneSettings(**{**settings.__dict__, "max_t": max_t, "storage_path": storage, "name": name})


def _notes(space: Space, has_profile: bool, asked: bool, pinned: dict[str, str]) -> list[str]:
    t = space.tune
    how = (
        f"profile {space.profile!r} (asked for)"
        if asked
        else ("GPU visible" if space.profile == "gpu" else "no GPU visible")
    )
    which = f"{space.profile} profile" if has_profile else f"no {space.profile!r} profile in the file, tune as written"
    resources = f"{t.cpus_per_trial:g} CPU" + (f", {t.gpus_per_trial:g} GPU" if t.gpus_per_trial else "")
    at_once = f"{t.max_concurrent} at a time" if t.max_concurrent else "as many at a time as fit"
    budget = f", stop after {t.time_budget_s:g} s" if t.time_budget_s else ""
    trials = f"{t.num_samples} trial{'s' * (t.num_samples != 1)}"
    if t.num_samples == 1:
        runs = f"1 trial of {space.max_steps} steps and {t.max_t} evaluations ({resources}){budget}"
    else:
        runs = (
            f"{trials} of up to {space.max_steps} steps, {at_once} ({resources} each), "
            f"{describe_scheduler(t)}{budget}"
        )
    lines = [f"{how}: {which}; {runs}"]
    if space.smoke:
        lines.append(
            f"smoke test: tiny encoder, {SMOKE_RUN['data.max_train_per_task']} training rows per task, "
            f"dev subsets of {space.base.data.max_eval_per_task}, no final evaluation"
        )
    keys = list(dict.fromkeys(d.key for d in space.dimensions))
    lines.append(f"{len(keys)} dimensions: {', '.join(keys)}" if keys else FIXED_POINT)
    if pinned:
        lines.append(
            "not searched, fixed by "
            + "; ".join(
                f"{why}: {', '.join(k for k, w in pinned.items() if w == why)}"
                for why in dict.fromkeys(pinned.values())
            )
        )
    final = {
        "best": f"the top {t.final_top_k} trial(s) by selection score are scored on the full dev sets, the best "
        "there is the search's best",
        "all": "every trial's best checkpoint is scored on the full dev sets, the best there is the search's best",
        "none": "no full-dev evaluation",
    }
    lines.append(f"results: {shown(join(t.storage_path, t.name)) if is_uri(t.storage_path) else Path(t.storage_path) / t.name}; after the search: {final[t.final_eval]}")
    return lines


def _start_notes(space: Space) -> list[str]:
    """How the trials are proposed: the sampler, and what the search starts from."""
    t = space.tune
    lines = []
    if space.dimensions and t.num_samples > 1:
        lines.append(describe_sampler(t.sampler, t.num_samples, t.seed, warm=bool(t.warm_start)))
    if space.warm:
        lines += describe_warm(space.warm, t.num_samples)
    return lines
