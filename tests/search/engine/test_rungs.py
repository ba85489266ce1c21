"""ASHA that survives ``resume`` (``search.engine.rungs``).

At the scheduler level: a scripted sequence of results (8 trials x 4 evaluations, interleaved) fed
to one scheduler, and the same script interrupted part way, the scheduler rebuilt as ``Tuner.restore``
rebuilds it (unpickled from a pickle of the scheduler as built) and fed the rest: the decisions are
the same, where Ray's own ASHA, rebuilt empty, decides otherwise. A real search killed and resumed
(the run ``test_resume`` makes, ``killed_search`` in conftest): the resumed scheduler holds the rung
values recorded before the kill, and each stop or go-on was what the rung values before it called for.
"""

from __future__ import annotations

import json
import math
import pickle
import random
from types import SimpleNamespace

import pytest

KW = {"time_attr": "training_iteration", "metric": "overall", "max_t": 4, "grace_period": 1, "reduction_factor": 2}
TRIALS, EVALS = 8, 4


def fake_trial(trial_id: str, folder) -> SimpleNamespace:
    """What the scheduler reads of a Tune trial: its id, and where its experiment's driver files go."""
    return SimpleNamespace(trial_id=trial_id, storage=SimpleNamespace(experiment_driver_staging_path=str(folder)))


def script(seed: int, mode: str) -> list[tuple[str, int, float]]:
    """Results as Tune would deliver them: trial k starts at tick k and reports evaluation j at tick
    k + 2j (two trials at a time, interleaved); each trial has a level, rising a little per evaluation."""
    rng = random.Random(seed)
    sign = 1 if mode == "max" else -1
    events = []
    for k in range(TRIALS):
        level = rng.uniform(0.2, 0.8)
        for j in range(1, EVALS + 1):
            events.append((k + 2 * j, f"t{k}", j, sign * (level + 0.03 * j + rng.uniform(-0.05, 0.05))))
    return [(t, j, v) for _, t, j, v in sorted(events)]


class Run:
    """Feeds a script to a scheduler as Tune's controller does: a trial is added before its first
    result, reports nothing after a STOP, and is completed with its last result."""

    def __init__(self, scheduler, folder, stopped: set | None = None):
        self.scheduler, self.folder = scheduler, folder
        self.stopped = set(stopped or ())
        self.added: list[str] = []
        self.last: dict[str, tuple[int, float]] = {}
        self.decisions: list[tuple[str, int, str]] = []

    def add(self, trial_id: str) -> None:
        self.scheduler.on_trial_add(None, fake_trial(trial_id, self.folder))
        self.added.append(trial_id)

    def result(self, trial_id: str, it: int, value: float) -> str:
        from ray.tune.schedulers import TrialScheduler

        trial, result = fake_trial(trial_id, self.folder), {"training_iteration": it, "overall": value}
        action = self.scheduler.on_trial_result(None, trial, result)
        if action == TrialScheduler.STOP:
            self.stopped.add(trial_id)
            self.scheduler.on_trial_complete(None, trial, result)
        return action

    def feed(self, events) -> None:
        for trial_id, it, value in events:
            if trial_id in self.stopped:
                continue
            if trial_id not in self.added:
                self.add(trial_id)
            self.last[trial_id] = (it, value)
            self.decisions.append((trial_id, it, self.result(trial_id, it, value)))


def resumed(built_pickle: bytes, before: Run, folder) -> Run:
    """The scheduler of a resumed search: tuner.pkl's copy of the scheduler as built, every known
    trial added again (as Tune's resume adds them), the stopped ones staying stopped."""
    run = Run(pickle.loads(built_pickle), folder, before.stopped)
    for trial_id in before.added:
        run.add(trial_id)
    return run


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_resumed_asha_decides_as_the_uninterrupted_one(tmp_path, mode, seed):
    from ray.tune.schedulers import ASHAScheduler

    from search.engine.rungs import STATE_FILE, ResumableASHA

    events = script(seed, mode)
    cut = len(events) * 3 // 5
    whole = Run(ResumableASHA(mode=mode, **KW), tmp_path / "whole")
    whole.feed(events)
    assert any(a == "STOP" for _, it, a in whole.decisions if it < EVALS)  # the script makes ASHA stop trials

    built = pickle.dumps(ResumableASHA(mode=mode, **KW))  # tuner.pkl: pickled before any trial ran
    folder = tmp_path / "killed"
    first = Run(pickle.loads(built), folder)
    first.feed(events[:cut])
    saved = json.loads((folder / STATE_FILE).read_text())
    assert any(r["recorded"] for b in saved["brackets"] for r in b["rungs"])  # the rungs hold results
    assert not list(folder.glob(".*.tmp"))

    second = resumed(built, first, folder)
    # Each running trial goes on from a checkpoint before its last result and reports that result
    # again; so does the trial stopped last if the kill came before Tune saved its stop. Each gets
    # the decision it got then, and no rung records it twice.
    last_stop = next(t for t, it, a in reversed(first.decisions) if a == "STOP" and it < EVALS)
    second.stopped.discard(last_stop)
    decided = {(t, it): a for t, it, a in first.decisions}
    sizes = [len(r["recorded"]) for r in saved["brackets"][0]["rungs"]]
    replays = [t for t in first.added if t not in second.stopped]
    for trial_id in replays:
        it, value = first.last[trial_id]
        assert second.result(trial_id, it, value) == decided[trial_id, it]
    assert last_stop in second.stopped and len(replays) >= 2
    state = second.scheduler.state()
    assert [len(r["recorded"]) for r in state["brackets"][0]["rungs"]] == sizes
    second.feed(events[cut:])
    assert first.decisions + second.decisions == whole.decisions
    assert second.scheduler.state()["brackets"] == whole.scheduler.state()["brackets"]

    # Ray's ASHA, rebuilt empty as Tune rebuilds it, stops other trials on the same script
    plain_first = Run(ASHAScheduler(mode=mode, **KW), tmp_path / "plain")
    plain_first.feed(events[:cut])
    plain = resumed(pickle.dumps(ASHAScheduler(mode=mode, **KW)), plain_first, tmp_path / "plain")
    plain.feed(events[cut:])
    assert plain_first.decisions == first.decisions
    assert plain.decisions != second.decisions


def test_the_state_file_round_trips_non_finite_values_and_brackets(tmp_path):
    from search.engine.rungs import STATE_FILE, ResumableASHA, read_state

    scheduler = ResumableASHA(mode="max", brackets=2, **KW)
    run = Run(scheduler, tmp_path)
    nan, inf = float("nan"), float("inf")
    values = {"a": 0.5, "b": nan, "c": -inf, "d": 0.7}
    run.feed([(t, it, v) for it in (1, 2) for t, v in values.items()])  # the second bracket's first milestone is 2
    text = (tmp_path / STATE_FILE).read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    again = ResumableASHA(mode="max", brackets=2, **KW)
    again.on_trial_add(None, fake_trial("a", tmp_path))
    assert again.state() == read_state(tmp_path) == scheduler.state()
    kept = [v for b in again._brackets for _, rec in b._rungs for v in rec.values()]
    assert any(math.isnan(v) for v in kept) and -inf in kept
    # a trial added again (a retry, a resume) stays in its bracket, whatever Ray would draw now
    brackets = {t: again.state()["trial_brackets"][t] for t in "abcd"}
    for _ in range(5):
        for t in "abcd":
            again.on_trial_add(None, fake_trial(t, tmp_path))
    assert {t: again.state()["trial_brackets"][t] for t in "abcd"} == brackets
    assert all(again._trial_info[t] is again._brackets[brackets[t]] for t in "abcd")


def test_a_state_file_of_other_settings_is_not_used(tmp_path, caplog):
    from search.engine.rungs import ResumableASHA

    Run(ResumableASHA(mode="max", **KW), tmp_path).feed([("a", 1, 0.5), ("b", 1, 0.4)])
    other = ResumableASHA(mode="max", **{**KW, "reduction_factor": 3})
    other.on_trial_add(None, fake_trial("c", tmp_path))
    assert all(not rec for _, rec in other._brackets[0]._rungs)
    assert "not used, ASHA starts with empty rungs" in caplog.text and "reduction_factor" in caplog.text


def test_trials_a_resume_does_not_bring_back_lose_their_rung_values(tmp_path):
    from search.engine.rungs import ResumableASHA

    Run(ResumableASHA(mode="max", **KW), tmp_path).feed([("a", 1, 0.5), ("b", 1, 0.4), ("gone", 1, 0.9)])
    run = Run(ResumableASHA(mode="max", **KW), tmp_path)
    for trial_id in ("a", "b"):  # Tune's saved state knew these two only
        run.add(trial_id)
    assert "gone" in run.scheduler.state()["decisions"]
    # "c" is at the rung's cutoff without "gone"'s 0.9 (the median of 0.4, 0.5): it goes on
    run.feed([("c", 1, 0.46)])
    assert run.decisions == [("c", 1, "CONTINUE")]
    state = run.scheduler.state()
    assert list(state["brackets"][0]["rungs"][-1]["recorded"]) == ["a", "b", "c"]
    assert "gone" not in state["decisions"] and "gone" not in state["trial_brackets"]


def test_starting_a_search_again_from_scratch_forgets_the_rungs(tmp_path):
    from search.engine.rungs import STATE_FILE, ResumableASHA, forget

    Run(ResumableASHA(mode="max", **KW), tmp_path).feed([("a", 1, 0.5)])
    assert (tmp_path / STATE_FILE).is_file()
    forget(tmp_path)
    assert not (tmp_path / STATE_FILE).exists()


@pytest.mark.slow
def test_a_killed_search_resumes_with_its_rungs_and_stops_by_all_of_them(killed_search):
    from ray.tune.schedulers import ASHAScheduler

    from search.engine.rungs import read_state
    from search.results import load_results

    out, experiment = killed_search["resumed"], killed_search["experiment"]
    assert out.returncode == 0, out.stderr[-4000:]
    at_kill, after = killed_search["rungs_at_kill"], read_state(experiment)
    assert at_kill is not None and after is not None
    held = {(m["milestone"], t): v for b in at_kill["brackets"] for m in b["rungs"] for t, v in m["recorded"].items()}
    assert held  # the kill came after the rungs held results
    kept = {(m["milestone"], t): v for b in after["brackets"] for m in b["rungs"] for t, v in m["recorded"].items()}
    assert {k: kept.get(k) for k in held} == held  # the resumed scheduler started from them, unchanged

    # Each decision at a rung is the one Ray's ASHA takes on the values recorded there before it, in
    # the order recorded (kept in the file), those from before the kill included.
    settings = after["settings"]
    cutoff = ASHAScheduler(**{k: v for k, v in settings.items() if k != "brackets"})._brackets[0].cutoff
    stopped, after_kill_on_old_values = set(), 0
    for milestone_rung in after["brackets"][0]["rungs"]:
        milestone, recorded = milestone_rung["milestone"], list(milestone_rung["recorded"].items())
        for i, (trial_id, value) in enumerate(recorded):
            decision = after["decisions"].get(trial_id, {}).get(json.dumps(milestone))
            if decision is None:  # recorded when the trial ended at max_t: no decision there
                assert milestone == settings["max_t"]
                continue
            limit = cutoff(dict(recorded[:i]))
            assert decision == ("STOP" if limit is not None and value < limit else "CONTINUE"), (trial_id, milestone)
            if decision == "STOP":
                stopped.add(trial_id)
            new = json.dumps(milestone) not in at_kill["decisions"].get(trial_id, {})
            after_kill_on_old_values += new and any((milestone, t) in held for t, _ in recorded[:i])
    assert after_kill_on_old_values >= 1  # the resumed search decided with rung values from before the kill
    # and the trials Tune ended before their budget are exactly those
    results = load_results(experiment)
    assert {t.trial_id for t in results.trials if t.iterations < settings["max_t"]} == stopped
