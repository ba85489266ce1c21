"""The search a user wires by hand from the libraries' defaults, as a reference for this product's
own (``benchmarks/search_quality.py``'s *stock* arm): Ray Tune's ``OptunaSearch`` with Optuna's
default sampler (TPE, its own startup of 10 random trials) and Ray's ``ASHAScheduler`` with its
defaults (grace period 1, reduction factor 4), its ``max_t`` set to a trial's evaluations, over the
same space, trainable, trial settings and resources as the search. None of the search's own
strategy is in it: no warm start, Ray's searcher (which tells Optuna a trial ASHA stopped is
COMPLETE), no final pick on more dev rows: the best trial is Tune's, by its best reported result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from search.engine.session import ray_session
from search.engine.trainable import COMPLETE_KEY, TrialSetup, share
from search.engine.tuner import build_trainable, max_t, run_config, trial_dirname


def run_stock(space: Any, setup: TrialSetup, data: dict[str, Any], experiment: Path) -> dict[str, Any]:
    """Run the stock search over ``space`` into ``experiment`` (until ``tune.num_samples`` trials or
    ``tune.time_budget_s``); returns {checkpoint: the best trial's best checkpoint folder, trial_id,
    selection: its scores there, trials, complete: trials that ran their whole budget}."""
    t = space.tune
    budget = max_t(space)
    with ray_session(None):
        tuner = tune.Tuner(
            build_trainable(setup, share(data)),
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(space=space.define_by_run, metric=t.metric, mode=t.mode, seed=t.seed),
                scheduler=ASHAScheduler(metric=t.metric, mode=t.mode, max_t=budget),
                num_samples=t.num_samples, time_budget_s=t.time_budget_s,
                reuse_actors=True, trial_dirname_creator=trial_dirname,
            ),
            run_config=run_config(space, experiment.name, experiment.parent, tracked=False),
        )  # fmt: skip
        grid = tuner.fit()
    best = grid.get_best_result(t.metric, t.mode, scope="all")
    checkpoint = best.get_best_checkpoint(t.metric, t.mode)
    scores = max((m for _, m in best.best_checkpoints), key=lambda m: m[t.metric] if t.mode == "max" else -m[t.metric])
    complete = sum(1 for r in grid if r.metrics and r.metrics.get(COMPLETE_KEY))
    return {
        "checkpoint": Path(checkpoint.path), "trial_id": best.metrics.get("trial_id"),
        "selection": {k: v for k, v in scores.items() if isinstance(v, float)}, "trials": len(grid),
        "complete": complete,
    }  # fmt: skip
