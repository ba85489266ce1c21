"""``tune.warm_start`` in the study: an earlier search's finished trials join it (COMPLETE or PRUNED,
with their intermediate values, under this space's distributions) before the points, which the
first trials Tune asks for take, in order; trials that do not fit are skipped with a line each; a
searcher restored as Tune restores it enqueues nothing again. Synthetic trials through the searcher
(no training), then one real search warm-started from the shared smoke search's folder."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import optuna
import pytest
from helpers import cli, play_trials, write_space
from optuna.trial import TrialState

from search.engine.searcher import PruningOptunaSearch, load_searcher, new_searcher
from search.space.file import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
MAX_T = 4

SPACE = """\
model: {{encoder: tiny}}
train: {{max_steps: 40, eval_every: 10}}
optim: {{lr: 1.0e-4}}
search:
  optim.lr: {{loguniform: [{low}, 1.0e-2]}}
  grad.method: {{choice: [sum, pcgrad_weighted]}}
  grad.weights.sst: {{uniform: [0.5, 2.0], when: {{grad.method: [pcgrad_weighted]}}}}
{extra}tune:
  num_samples: 6
  warm_start: {warm}
"""


def score(v: dict) -> float:
    return -abs(v["optim.lr"] - 1e-3) * 100 + (0.2 if v["grad.method"] == "pcgrad_weighted" else 0.0)


def space_at(tmp_path: Path, name: str, warm: str = "null", low: str = "1.0e-5", extra: str = ""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPACE.format(warm=warm, low=low, extra=extra))
    return load_space(path, profile="cpu")


def earlier_search(tmp_path: Path, name: str, n: int = 8, metric: str = "overall", **space_kw) -> Path:
    """A search folder as a finished search leaves it, for what warm start reads: search.json and
    Tune's saved searcher state (``n`` trials, ASHA's stops simulated)."""
    space = space_at(tmp_path, name, **space_kw)
    searcher = new_searcher(space, "overall", "max", MAX_T)
    play_trials(searcher, space, score, n)
    folder = tmp_path / "results" / name
    folder.mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps({"metric": metric, "mode": "max"}))
    searcher.save_to_dir(str(folder), session_str="2026")
    return folder


def test_an_earlier_searchs_trials_join_the_study_before_the_points(tmp_path):
    old_folder = earlier_search(tmp_path, "old")
    old = load_searcher(old_folder).study().trials
    assert {t.state for t in old} == {TrialState.COMPLETE, TrialState.PRUNED}  # both kinds are carried over
    lines = []
    space = space_at(tmp_path, "new", warm=f"[base, {old_folder}]")
    searcher = new_searcher(space, "overall", "max", MAX_T, log=lines.append)
    study = searcher.study()
    added = [t for t in study.trials if t.state != TrialState.WAITING]
    assert len(added) == len(old) == 8 and lines == [(f"tune.warm_start[1]: 8 finished trial(s) of {old_folder} added "
                                                     "to the study")]  # fmt: skip
    for was, now in zip(old, added):  # numbered first, in their order, as they ended there
        assert (now.number, now.state, now.params, now.value) == (was.number, was.state, was.params, was.value)
        assert now.intermediate_values == was.intermediate_values and len(now.intermediate_values) >= 1
        assert now.user_attrs["proposed_by"] == "earlier search"
        assert now.user_attrs["earlier"] == f"{old_folder} trial {was.number}"
    # the base point comes next, the first trial Tune asks for, and the sampler is past its startup
    config = searcher.suggest("first")
    first = searcher.optuna_trial("first")
    assert first.number == 8 and first.user_attrs["proposed_by"] == "warm start"
    assert first.params == space.warm_start()[0].params and space.decode(config) == space.warm_start()[0].values
    searcher.suggest("second")
    assert searcher.optuna_trial("second").user_attrs["proposed_by"] == "tpe"  # 8 finished trials >= 2


def test_trials_that_do_not_fit_are_skipped_with_a_line_each(tmp_path):
    # the earlier space searched optim.lr from 1e-6: trials below this space's 1e-5 do not fit; the others join
    # with this space's distribution
    old_folder = earlier_search(tmp_path, "wide", n=12, low="1.0e-6")
    old = load_searcher(old_folder).study().get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    outside = [t for t in old if t.params["optim.lr"] < 1e-5]
    assert outside and len(outside) < len(old)  # the seeded trials fall on both sides
    lines = []
    space = space_at(tmp_path, "narrow", warm=f"[{old_folder}]")
    study = new_searcher(space, "overall", "max", MAX_T, log=lines.append).study()
    assert len(study.trials) == len(old) - len(outside)
    assert {t.distributions["optim.lr"].low for t in study.trials} == {1e-5}
    for t in outside:
        assert (
            f"tune.warm_start[0]: trial {t.number} of {old_folder} skipped: its optim.lr {t.params['optim.lr']!r} "
            "(searched there as FloatDistribution(high=0.01, log=True, low=1e-06, step=None)) is not a value of "
            "this space's FloatDistribution(high=0.01, log=True, low=1e-05, step=None)"
        ) in lines
    assert lines[-1].endswith(f"{len(old) - len(outside)} finished trial(s) of {old_folder} added to the study, "
                              f"{len(outside)} skipped")  # fmt: skip


def test_a_trial_missing_a_parameter_or_setting_one_not_searched_is_skipped(tmp_path):
    # the earlier space also searched heads.sst.dropout: its trials set a value this space keeps at the base
    more = earlier_search(tmp_path, "more", n=3, extra="  heads.sst.dropout: {uniform: [0.1, 0.5]}\n")
    lines = []
    space = space_at(tmp_path, "fewer", warm=f"[{more}]")
    assert new_searcher(space, "overall", "max", MAX_T, log=lines.append).study().trials == []
    assert "it set heads.sst.dropout, which this space does not search" in lines[0]
    # the other way round: this space searches heads.sst.dropout, the earlier trials hold no value for it
    fewer = earlier_search(tmp_path, "less", n=3)
    lines.clear()
    space = space_at(tmp_path, "wider", warm=f"[{fewer}]", extra="  heads.sst.dropout: {uniform: [0.1, 0.5]}\n")
    assert new_searcher(space, "overall", "max", MAX_T, log=lines.append).study().trials == []
    assert "it has no value for heads.sst.dropout, which this space searches" in lines[0]


def test_a_search_ranked_by_another_metric_is_skipped_whole(tmp_path):
    other = earlier_search(tmp_path, "sst", n=2, metric="sst_acc")
    lines = []
    study = new_searcher(space_at(tmp_path, "new", warm=f"[{other}]"), "overall", "max", MAX_T,
                         log=lines.append).study()  # fmt: skip
    assert study.trials == []
    assert lines == [(f"tune.warm_start[0]: {other} skipped: it ranked trials by sst_acc (max), this search by overall "
                     "(max)")]  # fmt: skip


def test_points_run_first_in_order_and_only_num_samples_of_them(tmp_path):
    warm = "[{optim.lr: 2.0e-3}, base, {grad.method: pcgrad_weighted, grad.weights.sst: 1.5}]"
    space = space_at(tmp_path, "points", warm=warm)
    space.tune.num_samples = 2
    searcher = new_searcher(space, "overall", "max", MAX_T)
    assert len(searcher.study().trials) == 2  # the third point would never run: not queued
    trials = play_trials(searcher, space, score, 3)
    assert [t["values"]["optim.lr"] for t in trials[:2]] == [2e-3, 1e-4]
    # 2 trials: 2 startup trials by the budget rule, and the two points are they
    assert [t["proposed_by"] for t in trials] == ["warm start", "warm start", "tpe"]


def test_a_resumed_searcher_does_not_enqueue_the_points_again(tmp_path):
    """Tune pickles the searcher it was given into tuner.pkl (the queue as built), saves the searcher's
    state as the search goes, and on resume restores that state into the unpickled one."""
    space = space_at(tmp_path, "resumed", warm="[base, {optim.lr: 2.0e-3}, {optim.lr: 5.0e-3}]")
    built = new_searcher(space, "overall", "max", MAX_T)
    tuner_pkl = pickle.dumps(built)
    play_trials(built, space, score, 2)  # two of the three points ran
    built.save_to_dir(str(tmp_path), session_str="a")
    resumed: PruningOptunaSearch = pickle.loads(tuner_pkl)
    resumed.restore_from_dir(str(tmp_path))
    for trial_id in ("t2", "t3", "t4"):
        resumed.suggest(trial_id)
    labels = [t.user_attrs.get("proposed_by") for t in resumed.study().trials]
    assert labels.count("warm start") == 3 and len(labels) == 5
    assert resumed.optuna_trial("t2").params["optim.lr"] == 5e-3  # the last point, once
    # a search stopped before Tune saved the searcher's state starts again from tuner.pkl's: the queue once
    fresh = pickle.loads(tuner_pkl)
    assert [t.state for t in fresh.study().trials] == [TrialState.WAITING] * 3


# ---- a real search, warm-started from the shared smoke search's folder ------------------------------------


@pytest.mark.slow
def test_a_search_warm_started_from_a_folder_holds_its_trials_before_its_own(smoke_search, data_dir, token_cache,
                                                                              tmp_path):  # fmt: skip
    earlier = smoke_search["experiment"]
    space = write_space(tmp_path, data_dir, token_cache, name="warm", num_samples=1, final_eval="none")
    space.write_text(space.read_text() + f"  warm_start: [{earlier}, {{optim.lr: 1.0e-3}}]\n")
    out = cli(str(space), "--json")
    assert out.returncode == 0, out.stderr[-4000:]
    old = load_searcher(earlier).study().get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert f"tune.warm_start[0]: {len(old)} finished trial(s) of {earlier} added to the study" in out.stderr
    searcher = load_searcher(tmp_path / "results" / "warm")
    study = searcher.study()
    ((trial_id, _),) = searcher._ot_trials.items()  # the one Tune trial
    own = searcher.optuna_trial(trial_id)
    assert own.number == len(old) and own.user_attrs["proposed_by"] == "warm start"
    assert own.params["optim.lr"] == 1e-3 and own.state in (TrialState.COMPLETE, TrialState.PRUNED)
    for was, now in zip(old, study.trials[: len(old)]):
        assert (now.state, now.params, now.value, now.intermediate_values) == (
            was.state, was.params, was.value, was.intermediate_values)  # fmt: skip
    # the default sampler of a 1-trial search: the budget rule's 2 startup trials, group TPE, tune.seed
    assert (study.sampler._n_startup_trials, study.sampler._group) == (2, True)
    assert searcher._sampler_options == {"seed": 0, "n_startup_trials": 2, "multivariate": True, "group": True}
    assert copy.deepcopy(own.user_attrs)["warm_start"] == "tune.warm_start[1]: {optim.lr: 0.001}"
