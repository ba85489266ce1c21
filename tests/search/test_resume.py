"""``mtbert-search resume``: a search killed mid-way (SIGKILL, no chance to clean up) continues to
num_samples trials, keeping every trial that had finished and resuming running ones from their
checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_resumed, finished, running_with_checkpoint, trial_dirs, trial_rows, write_space

NUM_SAMPLES = 5


@pytest.mark.slow
def test_resume_after_sigkill_keeps_finished_trials_and_completes(data_dir, token_cache, tmp_path):
    from search.engine.searcher import load_searcher
    from search.results import load_results

    # longer trials (8 evaluations) that ASHA stops late, so some are caught mid-way
    space = write_space(tmp_path, data_dir, token_cache, name="killed", num_samples=NUM_SAMPLES)
    text = space.read_text().replace("max_steps: 16", "max_steps: 32").replace("grace_period: 1", "grace_period: 4")
    space.write_text(text.replace("final_eval: best", "final_eval: none"))
    experiment = tmp_path / "results" / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", str(space), "--json"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            dirs = trial_dirs(experiment) if experiment.is_dir() else []
            if sum(map(finished, dirs)) >= 2 and any(map(running_with_checkpoint, dirs)):
                break
            time.sleep(0.5)
        assert proc.poll() is None, (
            "the search ended before it could be interrupted: " + proc.stderr.read().decode()[-3000:]
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI and the Ray processes it started
        proc.wait()
        proc.stderr.close()

    before = load_results(experiment)
    done_before = {t.trial_id: trial_rows(t.path) for t in before.trials if t.status == "TERMINATED"}
    assert len(done_before) >= 1 and len(before.trials) < NUM_SAMPLES + 1

    out = subprocess.run([sys.executable, "-m", "search.cli", "resume", str(experiment), "--json"],
                         capture_output=True, text=True, check=False, timeout=600, env=env)  # fmt: skip
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
