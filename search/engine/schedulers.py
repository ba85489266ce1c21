"""The Tune scheduler of a search (``tune.scheduler``, checked in ``search.space.schedulers``):
ASHA (``search.engine.rungs.ResumableASHA``, its rungs kept for ``resume``), HyperBand, FIFO, or
Population Based Training with each trial's lineage recorded (``LineagePBT``).

PBT here works with the search's Optuna searcher, which Ray's ``PopulationBasedTraining`` refuses
(it raises for any search algorithm): Optuna proposes the initial population (warm starts
included) and learns from each trial's results as reported under its initial values; it never
hears of the values PBT changes later. A trial that exploits another continues, in the same Tune
trial, from a copy of the donor's checkpoint with the donor's settings, each mutated key then
changed (``search.space.schedulers`` says how); ``search.engine.trainable.run_trial`` resumes the
run from that checkpoint with the new settings, so its step count goes on from the donor's and the
learning-rate schedule continues at that step with the new base rates.

Lineage: each exploit appends one entry to ``lineage.json`` in the recipient's trial folder
(``LINEAGE_FILE``; a JSON list, rewritten whole through a temporary file, through Tune's storage
file system, so object storage works as a local folder does)::

    {"exploit": 1, "time": 1700000000.0,
     "donor": "a1b2c3d4", "donor_iteration": 2, "donor_step": 4, "donor_score": 0.41,
     "iteration": 2, "step": 4, "score": 0.37,            # the recipient when it exploited
     "mutated": ["optim.lr"], "operations": {"optim.lr": "* 1.2"},
     "before": {...}, "donor_values": {...}, "after": {...}}  # every searched setting, dotted keys

``before`` holds the recipient's own settings, ``donor_values`` the donor's and ``after`` what the
recipient runs with from the donor's step on (the donor's, the mutated keys changed). The trial
then reports ``donor_iteration + 1``, ``donor_iteration + 2``, ... : Tune counts its evaluations on
from the donor's checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import FIFOScheduler, HyperBandScheduler, PopulationBasedTraining
from ray.tune.schedulers.pbt import _PBTTrialState

from search.engine.rungs import ResumableASHA
from search.engine.trainable import COMPLETE_KEY, TRAINING_ITERATION
from search.lineage import LINEAGE_FILE

# A copy of the donor's checkpoint in the recipient's trial folder: what the recipient goes on from,
# kept until its next exploit or its end (the donor's own may be deleted by Tune meanwhile).
CLONE_PREFIX = "pbt-clone-"
STEP_KEY = "step"
# Int ranges with up to this many values are mutated as a list (moved to a neighbour); larger ones as numbers.
MAX_LISTED = 1000
logger = logging.getLogger(__name__)
# What a top-quantile trial's PBT state holds for its checkpoint: its latest, when it is cloned.
_LATEST = "latest"


def build_scheduler(space: Any, budget: int) -> Any:
    """The scheduler ``space.tune.scheduler`` asks for; ``budget`` is a trial's evaluations (max_t)."""
    t = space.tune
    kind = t.scheduler.kind
    if kind == "asha":
        return ResumableASHA(
            time_attr=TRAINING_ITERATION, max_t=budget, grace_period=min(t.grace_period, budget),
            reduction_factor=t.reduction_factor, metric=t.metric, mode=t.mode,
        )  # fmt: skip
    if kind == "hyperband":
        # stop_last_trials=False: a trial past its bracket's last halving runs on to its end and
        # returns (Optuna: COMPLETE); Ray's default pauses it at max_t until its whole bracket is
        # there, and a bracket that never fills leaves it paused, and Optuna's trial PRUNED.
        return HyperBand(time_attr=TRAINING_ITERATION, max_t=budget, reduction_factor=t.reduction_factor,
                         metric=t.metric, mode=t.mode, stop_last_trials=False)  # fmt: skip
    if kind == "fifo":
        return FIFOScheduler()
    if kind == "pbt":
        return LineagePBT(space, budget)
    raise ValueError(f"unknown scheduler kind {kind!r}")  # the space's checks allow none


class HyperBand(HyperBandScheduler):
    """Ray's HyperBand, with the trials it stops while they are paused (those a halving drops)
    saved as TERMINATED: Tune rewrites a trial in its saved state only when it is marked, and its
    ``stop_trial`` does not mark a paused trial it stops, so ``status`` and ``resume`` would see it
    PAUSED."""

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_remove(tune_controller, trial)
        mark = getattr(tune_controller, "_mark_trial_to_checkpoint", None)  # Tune's controller, not its wrapper
        if mark is not None:
            mark(trial)


# ---- PBT's mutations ------------------------------------------------------------------------------


def mutated_dimensions(space: Any) -> dict[str, Any]:
    """``{Optuna parameter name: Dimension}`` of the keys PBT mutates (every alternative of a key)."""
    keys = set(space.tune.scheduler.mutations or ())
    return {d.name: d for d in space.dimensions if d.key in keys}


def distribution(d: Any) -> Any:
    """What Ray's PBT mutates a parameter within: a list (a neighbour, or any, is picked) for a
    choice (its values as Optuna holds them) and a small int range, else a Tune domain (the value
    times 0.8 or 1.2, or drawn anew)."""
    if d.kind == "choice":
        return [d.encode(c) for c in d.choices]
    low, high = d.low, d.high
    if d.kind == "int":
        step = int(d.step or 1)
        if (high - low) // step + 1 <= MAX_LISTED and not d.log:
            return list(range(int(low), int(high) + 1, step))
        return tune.lograndint(int(low), int(high) + 1) if d.log else tune.qrandint(int(low), int(high), step)
    if d.kind == "loguniform":
        return tune.loguniform(low, high)
    return tune.quniform(low, high, d.step) if d.step else tune.uniform(low, high)


def inside(d: Any, value: Any) -> Any:
    """``value`` (a perturbed number) brought back into ``d``'s range and onto its step grid."""
    if d.kind == "choice" or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    value = min(max(value, d.low), d.high)
    if d.step:
        value = d.low + round((value - d.low) / d.step) * d.step
        value = min(value, d.high)
    return round(value) if d.kind == "int" else float(value)


class _KeepInside:
    """PBT's ``custom_explore_fn``: every mutated value within its dimension (Ray multiplies a
    number by 0.8 or 1.2 with no bounds). A class, not a closure: the scheduler is pickled."""

    def __init__(self, dims: dict[str, Any]):
        self.dims = dims

    def __call__(self, config: dict) -> dict:
        for name, d in self.dims.items():
            if name in config:
                config[name] = inside(d, config[name])
        return config


# ---- the scheduler --------------------------------------------------------------------------------


class LineagePBT(PopulationBasedTraining):
    """Ray's asynchronous PBT over ``training_iteration`` (evaluations), with the search's options,
    its Optuna searcher allowed, mutations only of the parameters a trial has (a conditional
    dimension may be inactive), the donor's checkpoint copied for the recipient, and each exploit
    recorded in the recipient's ``lineage.json``."""

    def __init__(self, space: Any, budget: int):
        t = space.tune
        s = t.scheduler
        self._space = space
        self._dims = mutated_dimensions(space)
        super().__init__(
            time_attr=TRAINING_ITERATION, metric=t.metric, mode=t.mode, perturbation_interval=s.interval(budget),
            hyperparam_mutations={name: distribution(d) for name, d in self._dims.items()},
            quantile_fraction=s.quantile_fraction, resample_probability=s.resample_probability,
            custom_explore_fn=_KeepInside(self._dims), log_config=True,
        )  # fmt: skip
        self._operations: dict[str, Any] = {}

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        # Ray's refuses any search algorithm, and fills parameters a trial lacks from the mutations
        # (an inactive conditional dimension would be drawn at random): neither is wanted here.
        if not self._metric or not self._metric_op:
            raise ValueError(f"{type(self).__name__} needs a metric and a mode")
        self._trial_state[trial] = _PBTTrialState(trial)

    def _checkpoint_or_exploit(self, trial: Any, tune_controller: Any, upper_quantile: list,
                               lower_quantile: list) -> None:  # fmt: skip
        """A trial in the top quantile may be cloned; one in the bottom clones one of them.

        Ray's version asks a top trial to save a checkpoint, but the trainable reports one with
        every result and Tune saves it right after this call: the extra save registers the same
        checkpoint twice, and Tune then deletes one of the two records' folder, the checkpoint
        itself (with tune.keep_checkpoints 1 or 2, as soon as a new one comes). So a top trial is
        only marked, and a recipient clones the donor's latest checkpoint, which Tune never
        deletes, and copies it at once (``_pin_clone``). A top trial whose latest checkpoint is
        its last (it ran its whole budget) is no donor: a recipient would go on from there with no
        step left to train, and end without a result of its own."""
        state = self._trial_state[trial]
        state.last_checkpoint = _LATEST if trial in upper_quantile else None
        self._num_checkpoints += trial in upper_quantile
        if trial not in lower_quantile:
            return
        donors = [t for t in upper_quantile if not _at_its_end(t)]
        if not donors:
            return
        donor = random.choice(donors)
        donor_state = self._trial_state[donor]
        latest = donor.run_metadata.checkpoint_manager.latest_checkpoint_result
        if donor_state.last_checkpoint is None or latest is None or latest.checkpoint is None:
            logger.info("PBT: trial %s has no checkpoint yet; trial %s does not exploit it", donor.trial_id,
                        trial.trial_id)  # fmt: skip
            return
        marked, result = donor_state.last_checkpoint, donor_state.last_result
        donor_state.last_checkpoint, donor_state.last_result = latest.checkpoint, latest.metrics
        try:
            self._exploit(tune_controller, trial, donor)
        finally:
            donor_state.last_checkpoint, donor_state.last_result = marked, result

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        every = self._hyperparam_mutations
        self._hyperparam_mutations = {k: v for k, v in every.items() if k in trial_to_clone.config}
        try:
            super()._exploit(tune_controller, trial, trial_to_clone)
        finally:
            self._hyperparam_mutations = every
        _pin_clone(trial, self._exploits(trial))

    def _get_new_config(self, trial: Any, trial_to_clone: Any) -> tuple[dict, dict]:
        new_config, operations = super()._get_new_config(trial, trial_to_clone)
        self._operations = operations
        return new_config, operations

    def _log_config_on_step(self, trial_state: Any, new_state: Any, trial: Any, trial_to_clone: Any,
                            new_config: dict) -> None:  # fmt: skip
        """Append the exploit to the recipient's lineage (Ray's pbt_policy files are not written)."""
        mine, theirs = trial_state.last_result or {}, new_state.last_result or {}
        names = [n for n in self._hyperparam_mutations if n in new_config]
        entries = read_lineage_at(*trial_location(trial))
        entry = {
            "exploit": len(entries) + 1, "time": time.time(),
            "donor": trial_to_clone.trial_id, "donor_iteration": theirs.get(TRAINING_ITERATION),
            "donor_step": theirs.get(STEP_KEY), "donor_score": _plain(theirs.get(self._metric)),
            "iteration": mine.get(TRAINING_ITERATION), "step": mine.get(STEP_KEY),
            "score": _plain(mine.get(self._metric)),
            "mutated": list(dict.fromkeys(self._dims[n].key for n in names)),
            "operations": {self._dims[n].key: str(op) for n, op in self._operations.items() if n in self._dims},
            "before": self._decode(trial.config), "donor_values": self._decode(trial_to_clone.config),
            "after": self._decode(new_config),
        }  # fmt: skip
        write_lineage_at(*trial_location(trial), [*entries, entry])
        logger.info("PBT: trial %s goes on from trial %s at step %s: %s", trial.trial_id, trial_to_clone.trial_id,
                    entry["donor_step"], ", ".join(f"{k} {entry['donor_values'].get(k)} -> {entry['after'].get(k)}"
                                                   for k in entry["mutated"]))  # fmt: skip

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        _drop_clones(trial)

    def _decode(self, params: dict) -> dict[str, Any]:
        try:
            return {k: _plain(v) for k, v in self._space.decode(params).items()}
        except (ValueError, KeyError):
            return {k: _plain(v) for k, v in params.items()}

    def _exploits(self, trial: Any) -> int:
        return len(read_lineage_at(*trial_location(trial)))


def _at_its_end(trial: Any) -> bool:
    """Whether the trial's latest checkpoint is from its last evaluation (``trial_complete``)."""
    latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
    return bool(latest is not None and (latest.metrics or {}).get(COMPLETE_KEY))


def _plain(value: Any) -> Any:
    """A value JSON writes as it is (a NaN score as null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    return value


# ---- the donor's checkpoint -------------------------------------------------------------------------


def _pin_clone(trial: Any, number: int) -> None:
    """Copy the checkpoint ``trial`` now goes on from (the donor's) into its own folder, and point
    Tune at the copy: the donor may report again, and Tune delete that checkpoint, before the
    recipient has started from it. Hard links on a local file system (no data copied)."""
    manager = trial.run_metadata.checkpoint_manager
    result = manager._latest_checkpoint_result  # set by PopulationBasedTraining._exploit; no public setter
    if result is None or result.checkpoint is None:
        return
    source = result.checkpoint
    fs, folder = trial_location(trial)
    target = f"{folder.rstrip('/')}/{CLONE_PREFIX}{number}"
    _drop_clones(trial)
    if _is_local(fs) and _is_local(source.filesystem):
        from search.engine.retention import link_tree

        link_tree(Path(source.path), Path(target))
    else:
        import pyarrow.fs

        pyarrow.fs.copy_files(source.path, target, source_filesystem=source.filesystem, destination_filesystem=fs)
    result.checkpoint = tune.Checkpoint(target, filesystem=fs)


def _drop_clones(trial: Any) -> None:
    """Remove the trial's checkpoint copies from earlier exploits."""
    import pyarrow.fs

    fs, folder = trial_location(trial)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return
    for info in infos:
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith(CLONE_PREFIX):
            try:
                fs.delete_dir(info.path)
            except OSError:
                pass


# ---- lineage files ----------------------------------------------------------------------------------


def trial_location(trial: Any) -> tuple[Any, str]:
    """The file system and path of the trial's folder (Tune's storage: a local folder or object storage)."""
    storage = getattr(trial, "storage", None)
    fs = getattr(storage, "storage_filesystem", None)
    if fs is not None:
        return fs, str(storage.trial_fs_path)
    import pyarrow.fs

    return pyarrow.fs.LocalFileSystem(), str(trial.local_path)


def _is_local(fs: Any) -> bool:
    return getattr(fs, "type_name", "local") == "local"


def read_lineage_at(fs: Any, folder: str) -> list[dict]:
    import pyarrow.fs

    path = f"{folder.rstrip('/')}/{LINEAGE_FILE}"
    try:
        if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            return []
        with fs.open_input_stream(path) as f:
            entries = json.loads(f.readall().decode())
    except (OSError, ValueError):
        return []
    return entries if isinstance(entries, list) else []


def write_lineage_at(fs: Any, folder: str, entries: list[dict]) -> None:
    """Written whole or not at all: a temporary file beside it, moved over it."""
    path = f"{folder.rstrip('/')}/{LINEAGE_FILE}"
    tmp = f"{folder.rstrip('/')}/.{LINEAGE_FILE}.tmp"
    text = json.dumps(entries, indent=1)
    if _is_local(fs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(tmp).write_text(text)
        os.replace(tmp, path)
        return
    fs.create_dir(folder)
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, path)
