"""``mtbert-search resume``: a search killed mid-way (SIGKILL, no chance to clean up) continues to
num_samples trials, keeping every trial that had finished and resuming running ones from their
checkpoints. The search and its resume are the ``killed_search`` fixture (conftest), shared with
``tests/search/engine/test_rungs.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_resumed

NUM_SAMPLES = 5


@pytest.mark.slow
def test_resume_after_sigkill_keeps_finished_trials_and_completes(killed_search):
    from search.engine.searcher import load_searcher
    from search.results import load_results

    experiment, before, done_before = killed_search["experiment"], killed_search["before"], killed_search["done_before"]
    assert len(done_before) >= 1 and len(before.trials) < NUM_SAMPLES + 1

    out = killed_search["resumed"]
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads(out.stdout)
    after = load_results(experiment)
    assert len(after.trials) == NUM_SAMPLES == summary["trials"]
    assert all(t.status == "TERMINATED" for t in after.trials), (
        [(t.trial_id, t.status, t.error and Path(t.error).read_text()[-2000:]) for t in after.trials],
        out.stderr[-4000:],
    )
    assert_resumed(experiment, after.trials, done_before)
    assert not list(experiment.glob("trial_*/.kept-*"))  # the copies kept for a resume are gone at the end
    study = load_searcher(experiment).study()
    assert len(study.trials) == NUM_SAMPLES
    assert {s.state.name for s in study.trials} <= {"COMPLETE", "PRUNED"}
