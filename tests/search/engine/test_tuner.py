"""PruningOptunaSearch: what Optuna's study records for each way a trial can end, fed the calls
Tune makes (no Ray cluster); the end-to-end search in test_search_e2e.py checks the same on a real run."""

from __future__ import annotations

import pytest
from helpers import MAX_T, searcher
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.engine.searcher import PruningOptunaSearch


def result(iteration, value, **extra):
    return {"training_iteration": iteration, "overall": value, **extra}


def play(s):
    """The calls Tune makes for five trials ending five ways. Tune does not pass the result it
    stops a trial on to on_trial_result, and repeats the last result when a function returns."""
    for trial_id in "abcde":
        assert s.suggest(trial_id) is not None
    # a: ASHA lets it run to max_t and stops it there
    for i in range(1, MAX_T):
        s.on_trial_result("a", result(i, 0.1 * i))
    s.on_trial_complete("a", result(MAX_T, 0.45))
    # b: ASHA stops it at its second evaluation
    s.on_trial_result("b", result(1, 0.05))
    s.on_trial_complete("b", result(2, 0.07))
    # c: its run has two evaluations; the trainable flags the last, and the function returns
    s.on_trial_result("c", result(1, 0.2))
    s.on_trial_result("c", result(2, 0.3, trial_complete=True))
    s.on_trial_result("c", result(2, 0.3, trial_complete=True, done=True))
    s.on_trial_complete("c", result(2, 0.3, trial_complete=True, done=True))
    # d: the trainer's patience ends it after two evaluations: no flag, but the function returns
    s.on_trial_result("d", result(1, 0.25))
    s.on_trial_result("d", result(2, 0.24))
    s.on_trial_result("d", result(2, 0.24, done=True))
    s.on_trial_complete("d", result(2, 0.24, done=True))
    # e: it fails
    s.on_trial_result("e", result(1, 0.1))
    s.on_trial_complete("e", error=True)
    return {t: s.optuna_trial(t) if isinstance(s, PruningOptunaSearch) else _frozen(s, t) for t in "abcde"}


def _frozen(s, trial_id):
    return s._ot_study.trials[s._ot_trials[trial_id].number]


def test_stopped_trials_are_pruned_with_their_intermediate_values():
    trials = play(searcher())
    assert trials["a"].state == TrialState.COMPLETE and trials["a"].value == pytest.approx(0.45)
    assert trials["a"].intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.45})
    assert trials["b"].state == TrialState.PRUNED
    assert trials["b"].intermediate_values == {1: pytest.approx(0.05), 2: pytest.approx(0.07)}
    assert trials["b"].value == pytest.approx(0.07)  # Optuna's value of a pruned trial: its last report
    assert trials["c"].state == TrialState.COMPLETE and trials["c"].value == pytest.approx(0.3)
    assert trials["d"].state == TrialState.COMPLETE and trials["d"].value == pytest.approx(0.24)
    assert trials["d"].intermediate_values == {1: pytest.approx(0.25), 2: pytest.approx(0.24)}
    assert trials["e"].state == TrialState.FAIL


def test_ray_optuna_search_records_a_stopped_trial_as_complete():
    # The defect PruningOptunaSearch fixes: TPE would take b's early score as a final one.
    trials = play(searcher(OptunaSearch))
    assert trials["b"].state == TrialState.COMPLETE and trials["b"].value == pytest.approx(0.07)


def test_a_time_budget_stop_is_pruned():
    # Tune's stopper (time_budget_s) ends a running trial: its last result was reported, it never returned.
    s = searcher()
    s.suggest("a")
    s.on_trial_result("a", result(1, 0.2))
    s.on_trial_complete("a", result(2, 0.3, done=True))
    assert s.optuna_trial("a").state == TrialState.PRUNED


def test_state_survives_save_and_restore(tmp_path):
    s = searcher()
    s.suggest("a")
    s.on_trial_result("a", result(1, 0.2))
    s.suggest("b")
    s.save(str(tmp_path / "searcher.pkl"))

    restored = PruningOptunaSearch()
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert isinstance(restored, PruningOptunaSearch) and restored._max_t == MAX_T
    restored.on_trial_complete("a", result(2, 0.1))  # stopped by ASHA after the restore
    restored.on_trial_result("b", result(1, 0.3))
    restored.on_trial_result("b", result(1, 0.3, done=True))
    restored.on_trial_complete("b", result(1, 0.3, done=True))
    assert restored.optuna_trial("a").state == TrialState.PRUNED
    assert restored.optuna_trial("a").intermediate_values == {1: pytest.approx(0.2), 2: pytest.approx(0.1)}
    assert restored.optuna_trial("b").state == TrialState.COMPLETE
    assert restored.suggest("c") is not None and len(restored.study().trials) == 3
