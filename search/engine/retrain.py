"""``ensemble --retrain-seeds``: the chosen trials' configs trained again with new seeds, as a Ray Tune
grid of (trial, seed offset) in a folder of its own, through the same trainable and callbacks as the
search; an interrupted grid continues where it stopped."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from search.engine.retention import drop_kept
from search.engine.session import ray_session
from search.engine.trainable import TrialSetup, prepare_shared, run_trial, share
from search.engine.tuner import build_trainable, can_restore, restore_tuner, run_config, trial_dirname


@dataclass
class GridRun:
    """One (trial, seed offset) of the grid as Tune ended it."""

    trial_id: str
    seed_offset: int
    error: str | None  # the exception that ended it, None when it ran to its end
    checkpoints: list[tuple[Path, dict[str, Any]]]  # the checkpoints Tune kept, with their metrics
    path: Path


def retrain_trial(config: dict[str, Any], *, setup: Any, params: dict[str, dict], seeds: dict[str, int],
                  data: dict | None = None) -> None:  # fmt: skip
    """One (trial, seed) of the grid: the trial's sampled settings, ``train.seed`` its own seed
    plus the grid's ``seed_offset``."""
    trial = config["search_trial"]
    seeded = TrialSetup(setup.space, {**setup.fixed, "train.seed": seeds[trial] + config["seed_offset"]})
    run_trial(params[trial], setup=seeded, data=data)


def retrain_grid(setup: TrialSetup, params: dict[str, dict], seeds: dict[str, int], offsets: list[int], folder: Path,
                 request: dict[str, Any], request_file: str, *, address: str | None = None,
                 log: Callable[[str], None] = print) -> list[GridRun]:  # fmt: skip
    """Train every (trial in ``params``, offset) in ``folder`` (continuing an interrupted grid there);
    a new grid writes ``request`` to ``folder/request_file`` first."""
    space = setup.space
    t = space.tune
    with ray_session(address):
        configs = [TrialSetup(space, {**setup.fixed, "train.seed": seeds[tid] + k}).config(params[tid])
                   for tid in params for k in offsets]  # fmt: skip
        refs = share(prepare_shared(configs))
        trainable = build_trainable(setup, refs, retrain_trial, params=params, seeds=seeds)
        log(f"retraining {len(params)} trial(s) x {len(offsets)} seed(s) to their full budget in {folder}")
        if can_restore(folder):
            tuner = restore_tuner(folder, trainable, log)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / request_file).write_text(json.dumps(request, indent=2))
            # one grid point per (trial, seed): the seed of the trial's own run plus 1 ... S
            tuner = tune.Tuner(
                trainable,
                param_space={"search_trial": tune.grid_search(list(params)), "seed_offset": tune.grid_search(offsets)},
                tune_config=tune.TuneConfig(max_concurrent_trials=t.max_concurrent, reuse_actors=True,
                                            trial_dirname_creator=trial_dirname),
                run_config=run_config(space, folder.name, folder.parent, tracked=False),  # no MLflow/W&B runs
            )  # fmt: skip
        grid = tuner.fit()
    drop_kept(folder)
    return [GridRun(result.config["search_trial"], result.config["seed_offset"],
                    None if result.error is None else str(result.error),
                    [(Path(c.path), m) for c, m in (result.best_checkpoints or [])], Path(result.path))
            for result in grid]  # fmt: skip
