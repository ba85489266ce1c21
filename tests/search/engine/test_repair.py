"""``resume`` of a search whose saved Optuna study is cut short (killed while Tune copied it into the
search folder): the study is rebuilt from the trials' results, as the search's searcher recorded it,
and Tune restores the search from it instead of going on with a half-restored run state."""

from __future__ import annotations

import shutil

import pytest
from helpers import cli

from search.engine.repair import REBUILT, repair_study
from search.engine.searcher import _internals, load_searcher
from search.launch import saved_space


@pytest.fixture
def cut_short(smoke_search, tmp_path):
    """A copy of the shared smoke search with its saved study emptied, as a kill mid-copy leaves it."""
    folder = tmp_path / "e2e"
    shutil.copytree(smoke_search["experiment"], folder)
    (state,) = folder.glob("searcher-state-*.pkl")
    state.write_bytes(b"")
    return folder


def _study_of(experiment):
    searcher = load_searcher(experiment)
    assert searcher is not None
    return searcher, searcher.study()


@pytest.mark.slow
def test_a_study_cut_short_is_rebuilt_as_the_searcher_recorded_it(smoke_search, cut_short):
    original, study = _study_of(smoke_search["experiment"])
    by_tune_id = {tid: study.trials[t.number] for tid, t in _internals(original).trials.items()}
    assert load_searcher(cut_short) is None
    space, launch = saved_space(cut_short)
    said = []
    assert repair_study(cut_short, space, launch.max_t, said.append) is True
    assert "cut short" in said[0] and f"{len(by_tune_id)} finished trial(s)" in said[0], said

    _, rebuilt = _study_of(cut_short)
    assert len(rebuilt.trials) == len(by_tune_id)
    # the same trials, states, values and evaluations (the values are the floats the results hold)
    expected = sorted((t.state.name, t.params["optim.lr"], t.value, tuple(sorted(t.intermediate_values.items())))
                      for t in by_tune_id.values())  # fmt: skip
    got = sorted((t.state.name, t.params["optim.lr"], t.value, tuple(sorted(t.intermediate_values.items())))
                 for t in rebuilt.trials)  # fmt: skip
    assert got == expected
    assert {t.state.name for t in rebuilt.trials} == {"COMPLETE", "PRUNED"}  # the smoke search has both
    assert all(t.user_attrs["proposed_by"] == REBUILT for t in rebuilt.trials)
    # a study that loads is left alone
    assert repair_study(cut_short, space, launch.max_t, said.append) is False


@pytest.mark.slow
def test_resume_of_a_search_whose_study_was_cut_short_restores_it(smoke_search, cut_short):
    out = cli("resume", str(cut_short), "--json")
    assert out.returncode == 0, out.stderr[-4000:]
    assert "rebuilt from the results" in out.stderr
    assert "Failed to restore the run state" not in out.stderr  # Tune restored the search, with the study
    _, study = _study_of(cut_short)
    assert len(study.trials) == smoke_search["summary"]["trials"]
