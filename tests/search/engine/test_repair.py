"""``resume`` of a search whose saved Optuna study is cut short (killed while Tune copied it into the
search folder): the study is rebuilt from the trials' results, as the search's searcher recorded it,
and Tune restores the search from it instead of going on with a half-restored run state."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import cli

from search.engine.repair import REBUILT, repair_study
from search.engine.searcher import _internals, load_searcher
from search.launch import saved_space


def copy_cut_short(smoke_search, folder):
    """A copy of the shared smoke search with its saved searcher state emptied, as a kill mid-copy leaves it."""
    shutil.copytree(smoke_search["experiment"], folder)
    (state,) = folder.glob("searcher-state-*.pkl")
    state.write_bytes(b"")
    return folder


@pytest.fixture
def cut_short(smoke_search, tmp_path):
    """The cut-short copy of a search that kept its study in the searcher's state alone (tune.study_storage
    null, as every search before that setting): the study itself is gone."""
    folder = copy_cut_short(smoke_search, tmp_path / "e2e")
    (folder / "study.db").unlink()
    record = json.loads((folder / "search.json").read_text())
    (folder / "search.json").write_text(json.dumps({**record, "study_storage": None}))
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


@pytest.mark.slow
def test_a_searcher_state_cut_short_points_at_the_study_in_its_database(smoke_search, tmp_path):
    original, study = _study_of(smoke_search["experiment"])
    before = [(t.number, t.state, t.params, t.value, t.intermediate_values, t.user_attrs) for t in study.trials]
    folder = copy_cut_short(smoke_search, tmp_path / "e2e")
    assert load_searcher(folder) is None
    space, launch = saved_space(folder)
    said = []
    assert repair_study(folder, space, launch.max_t, said.append) is True
    assert "cut short" in said[0] and "read again from sqlite:///" in said[0], said
    restored, read = _study_of(folder)
    # the study as the database holds it: nothing rebuilt, nothing added twice
    assert [(t.number, t.state, t.params, t.value, t.intermediate_values, t.user_attrs) for t in read.trials] == before
    assert set(_internals(restored).trials) == set(_internals(original).trials)
    assert restored.study_ref().url == f"sqlite:///{folder / 'study.db'}"
    assert repair_study(folder, space, launch.max_t, said.append) is False  # a state that loads is left alone
