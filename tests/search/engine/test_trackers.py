"""MLflow and W&B runs of a search (``search.engine.trackers``, ``search.engine.tracker_runs``), read
back through each library's own reader: MLflow's ``MlflowClient`` on a local SQLite store, W&B's offline
run files through ``wandb leet inspect``. The callback is driven with real Tune ``Trial`` objects; one
real search through the CLI checks the whole path, the final pick included. Nothing here touches the
network: W&B runs offline, MLflow writes a file, and both libraries' usage reports are off."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

from search.engine import tracker_runs
from search.engine.trackers import TRACKERS_FILE, TrackersCallback, log_final
from search.results import SearchResults, TrialRecord
from search.space.file import load_space

BASE = "model: {encoder: tiny}\ntrain: {max_steps: 40, eval_every: 10}\nsearch:\n"
LR = "  optim.lr: {loguniform: [1.0e-5, 1.0e-4]}\n"
PARENT = "mlflow.parentRunId"
WARNING = "warning: tune.trackers"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """W&B offline, its files (cache and settings too) in this test's folder; no tracking server from the
    environment; MLflow's telemetry and W&B's error reports off."""
    for name in ("MLFLOW_TRACKING_URI", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-files"))
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")


@pytest.fixture(autouse=True)
def no_tracker_warning(request, capfd):
    """A tracker dropped with a warning fails the test (a bug would hide there); the tests that expect
    one read it, which takes it out of what is checked here."""
    yield
    err = capfd.readouterr().err
    assert WARNING not in err, err[-3000:]


def make_space(tmp_path: Path, trackers: str = "[tensorboard, mlflow, wandb]", storage: Path | None = None,
               extra: str = ""):  # fmt: skip
    path = tmp_path / "space.yaml"
    storage = storage or tmp_path / "results"
    path.write_text(BASE + LR + f"tune:\n  trackers: {trackers}\n  storage_path: {storage}\n  name: e2e\n{extra}")
    return load_space(path)


def make_trial(space, trial_id: str, lr: float):
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    storage = StorageContext(storage_path=space.tune.storage_path, experiment_dir_name=space.tune.name)
    trial = Trial("run_trial", config=space.params_for({"optim.lr": lr}), trial_id=trial_id, stub=True, storage=storage)
    trial.storage.trial_dir_name = f"trial_{trial_id}"
    return trial


def result(step: int, overall: float, checkpoint: str | None = None) -> dict:
    row = {"step": step, "overall": overall, "sst_acc": overall / 2, "train_loss_sst": 2.0 / step, "lr": 1e-4,
           "training_iteration": step // 10, "done": False, "trial_id": "x", "eval_at": 1.7e9,
           "time_total_s": 3.0}  # fmt: skip
    return {**row, "checkpoint_dir_name": checkpoint} if checkpoint else row


def record(trial, status: str, state: str, step: int, checkpoint: str | None) -> TrialRecord:
    """The trial as ``search.results`` reads it after the search."""
    path = Path(trial.path)
    return TrialRecord(trial.trial_id, status, step // 10, dict(trial.config), {"step": step}, {"step": step},
                       path / checkpoint if checkpoint else None, path, state=state)  # fmt: skip


def mlflow_runs(folder: Path, experiment: str = "e2e") -> tuple:
    """(parent runs, child runs) of the search's MLflow experiment in its default store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id])
    return client, [r for r in runs if PARENT not in r.data.tags], [r for r in runs if PARENT in r.data.tags]


def wandb_runs(wandb_dir: Path) -> dict[str, dict]:
    """Every W&B run under ``wandb_dir`` from its offline files, read by wandb's own inspector: {run id:
    {group, job_type, name, config, history (the logged rows), summary}}; a run written in several
    pieces (W&B's resume) merged in order."""
    runs: dict[str, dict] = {}
    for path in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
                             capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
        run = None  # each file names its run first
        for line in out.stdout.splitlines():
            record = json.loads(line)
            kind = record.get("type")
            if kind == "run":
                r = record["run"]
                run = runs.setdefault(r["run_id"], {"config": {}, "history": [], "summary": {}})
                run.update({k: r[k] for k in ("run_group", "job_type", "display_name") if r.get(k)})
                run["config"].update({k: v for k, v in r.get("config", {}).get("update", {}).items() if k != "_wandb"})
            elif kind in ("history", "summary"):
                assert run is not None, f"{path}: a {kind} record before its run record"
                if kind == "history":
                    run["history"].append(record["history"]["item"])
                else:
                    run["summary"].update(record["summary"].get("update", {}))
    return runs


def drive(callback: TrackersCallback, trial, results: list[dict], end: bool = True) -> None:
    from ray.tune.experiment import Trial

    callback.log_trial_start(trial)
    for i, r in enumerate(results, 1):
        callback.log_trial_result(i, trial, r)
    if end:
        trial.set_status(Trial.TERMINATED)
        callback.log_trial_end(trial)


def test_callbacks_follow_the_list(tmp_path):
    from search.engine.tensorboard import TensorBoardCallback
    from search.engine.tuner import tracker_callbacks

    default = make_space(tmp_path, "null")
    assert [type(c) for c in tracker_callbacks(default)] == [TensorBoardCallback]
    assert [type(c) for c in tracker_callbacks(make_space(tmp_path, "[mlflow, wandb]"))] == [TrackersCallback]
    assert tracker_callbacks(make_space(tmp_path, "[]")) == []
    both = make_space(tmp_path, "[tensorboard, wandb]")
    assert [type(c) for c in tracker_callbacks(both)] == [TensorBoardCallback, TrackersCallback]
    # the retraining grid: TensorBoard as listed, no MLflow or W&B runs
    assert [type(c) for c in tracker_callbacks(both, tracked=False)] == [TensorBoardCallback]


def test_one_parent_and_one_child_per_trial_with_settings_and_metrics_at_the_global_step(tmp_path):
    space = make_space(tmp_path)
    callback = TrackersCallback(space, "overall", space.tune.trackers)
    a, b = make_trial(space, "aaaa_00000", 3e-5), make_trial(space, "bbbb_00001", 7e-5)
    drive(callback, a, [result(10, 0.30, "checkpoint_000000"), result(20, 0.50, "checkpoint_000001"),
                        result(30, 0.40, "checkpoint_000002")])  # fmt: skip
    drive(callback, b, [result(10, 0.20, "checkpoint_000000")])
    callback.on_experiment_end([a, b])
    folder = tmp_path / "results" / "e2e"

    client, parents, children = mlflow_runs(folder)
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.run_name == "e2e" and parent.data.params["searched"] == "optim.lr"
    assert {c.data.tags[PARENT] for c in children} == {parent.info.run_id}
    child = {c.info.run_name: c for c in children}
    run = child["trial_aaaa_00000"]
    assert float(run.data.params["optim.lr"]) == pytest.approx(3e-5)
    history = client.get_metric_history(run.info.run_id, "dev/overall")
    assert [(m.step, m.value) for m in history] == [(10, 0.30), (20, 0.50), (30, 0.40)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/train_loss_sst")] == [10, 20, 30]
    assert "training_iteration" not in run.data.metrics and "other/eval_at" not in run.data.metrics
    assert not any(k.startswith("pbt/") for k in run.data.metrics)  # not under ASHA
    # the best evaluation's checkpoint, not the latest
    assert run.data.tags["best_checkpoint"] == str(Path(a.path) / "checkpoint_000001")
    # the parent ends with Tune's run, whether the final pick follows or not (the retraining grid, an error)
    assert run.info.status == "FINISHED" and parent.info.status == "FINISHED"

    runs = wandb_runs(tmp_path / "wandb-files")
    search = [r for r in runs.values() if r.get("job_type") == "search"]
    trials = {r["display_name"]: r for r in runs.values() if r.get("job_type") == "trial"}
    assert len(search) == 1 and set(trials) == {"trial_aaaa_00000", "trial_bbbb_00001"}
    assert {r["run_group"] for r in runs.values()} == {"e2e"}
    wb = trials["trial_aaaa_00000"]
    assert wb["config"]["optim.lr"] == pytest.approx(3e-5)
    assert [(h["step"], h["dev/overall"]) for h in wb["history"]] == [(10, 0.30), (20, 0.50), (30, 0.40)]
    assert wb["summary"]["best_checkpoint"] == str(Path(a.path) / "checkpoint_000001")


def test_pbt_values_are_curves_in_both_trackers(tmp_path):
    space = make_space(tmp_path, "[tensorboard, mlflow, wandb]", extra="  scheduler: pbt\n")
    callback = TrackersCallback(space, "overall", space.tune.trackers)
    a = make_trial(space, "aaaa_00000", 3e-5)
    callback.log_trial_start(a)
    callback.log_trial_result(1, a, result(10, 0.30))
    a.set_config(space.params_for({"optim.lr": 5e-5}))  # PBT's exploit: the trial trains with a new value
    callback.log_trial_result(2, a, result(20, 0.40))
    callback.log_trial_end(a)
    callback.on_experiment_end([a])

    client, _, children = mlflow_runs(tmp_path / "results" / "e2e")
    history = client.get_metric_history(children[0].info.run_id, "pbt/optim.lr")
    assert [(m.step, m.value) for m in history] == [(10, pytest.approx(3e-5)), (20, pytest.approx(5e-5))]
    [wb] = [r for r in wandb_runs(tmp_path / "wandb-files").values() if r.get("job_type") == "trial"]
    assert [(h["step"], h["pbt/optim.lr"]) for h in wb["history"]] == [(10, pytest.approx(3e-5)),
                                                                       (20, pytest.approx(5e-5))]  # fmt: skip


def test_a_resumed_search_goes_on_in_the_same_runs_and_the_results_set_the_best_checkpoint(tmp_path):
    space = make_space(tmp_path)
    callback = TrackersCallback(space, "overall", space.tune.trackers)
    a = make_trial(space, "aaaa_00000", 3e-5)
    drive(callback, a, [result(10, 0.30, "checkpoint_000000")], end=False)
    callback.on_experiment_end([a])  # interrupted: the trial is still running
    folder = tmp_path / "results" / "e2e"
    client, parents, children = mlflow_runs(folder)
    assert [p.info.status for p in parents] == ["KILLED"] and [c.info.status for c in children] == ["KILLED"]
    ids = json.loads((folder / TRACKERS_FILE).read_text())

    # what Tune restores from tuner.pkl in a new driver: the pickled callback, no clients, no best so far
    again = pickle.loads(pickle.dumps(callback))
    a = make_trial(space, "aaaa_00000", 3e-5)
    drive(again, a, [result(20, 0.25, "checkpoint_000001")])  # worse than before the stop
    again.on_experiment_end([a])
    client, parents, children = mlflow_runs(folder)
    assert [p.info.run_id for p in parents] == [ids["mlflow"]["parent"]] and len(children) == 1
    assert children[0].info.status == "FINISHED"
    history = client.get_metric_history(children[0].info.run_id, "dev/overall")
    assert [(m.step, m.value) for m in history] == [(10, 0.30), (20, 0.25)]

    best = str(Path(a.path) / "checkpoint_000000")  # the results' best, from before the stop
    results = SearchResults(folder, "overall", "max", [record(a, "TERMINATED", "COMPLETE", 10, "checkpoint_000000")])
    log_final(folder, {}, space, results, log=lambda line: None)
    client, parents, children = mlflow_runs(folder)
    assert children[0].data.tags["best_checkpoint"] == best and parents[0].info.status == "FINISHED"
    wb = wandb_runs(tmp_path / "wandb-files")
    trial_run = wb[ids["wandb"]["trials"]["aaaa_00000"]]
    assert sorted(wb) == sorted([ids["wandb"]["parent"], ids["wandb"]["trials"]["aaaa_00000"]])
    assert [h["step"] for h in trial_run["history"]] == [10, 20]
    assert trial_run["summary"]["best_checkpoint"] == best


def test_the_final_pick_on_the_parent_and_the_finalists(tmp_path):
    space = make_space(tmp_path, "[mlflow, wandb]")
    callback = TrackersCallback(space, "overall", space.tune.trackers)
    a, b = make_trial(space, "aaaa_00000", 3e-5), make_trial(space, "bbbb_00001", 7e-5)
    drive(callback, a, [result(10, 0.30, "checkpoint_000000"), result(20, 0.35, "checkpoint_000001")])
    drive(callback, b, [result(10, 0.40, "checkpoint_000000")])
    callback.on_experiment_end([a, b])
    folder = tmp_path / "results" / "e2e"
    (folder / "summary.json").write_text("{}")
    records = [record(a, "TERMINATED", "COMPLETE", 20, "checkpoint_000001"),
               record(b, "TERMINATED", "PRUNED", 10, "checkpoint_000000")]  # fmt: skip
    results = SearchResults(folder, "overall", "max", records)
    full = {"aaaa_00000": {"overall": 0.61, "sst_acc": 0.4, "cfimdb_acc": 0.7},
            "bbbb_00001": {"overall": 0.55, "sst_acc": 0.3}}  # fmt: skip
    finalists = [{"trial_id": t.trial_id, "checkpoint": str(t.checkpoint), "selection_rank": r,
                  "full_dev": full[t.trial_id]} for t, r in zip(records, (2, 1))]  # fmt: skip
    summary = {"finalists": finalists, "rank_rule": "by full-dev overall",
               "best": {**finalists[0], "config": "c.yaml", "step": 20, "selection": {"overall": 0.35}},
               "report_half": {"trial_id": "aaaa_00000", "report": {"overall": 0.58}}}  # fmt: skip
    lines = []
    log_final(folder, summary, space, results, log=lines.append)
    assert lines == ["trackers: the final pick is logged to mlflow, wandb"]

    client, parents, children = mlflow_runs(folder)
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] == "aaaa_00000"
    assert parent.data.metrics["full_dev/overall"] == 0.61 and parent.data.metrics["selection/overall"] == 0.35
    assert parent.data.metrics["full_dev/cfimdb_acc"] == 0.7 and parent.data.metrics["report_half/overall"] == 0.58
    assert parent.data.tags["best_checkpoint"] == finalists[0]["checkpoint"]
    assert [f.path for f in client.list_artifacts(parent.info.run_id)] == ["summary.json"]
    child = {c.data.tags["mtbert.trial_id"]: c for c in children}
    assert child["bbbb_00001"].data.metrics["full_dev/overall"] == 0.55
    assert child["bbbb_00001"].data.tags["final_rank"] == "2"
    assert {k: child["bbbb_00001"].data.tags[k] for k in ("tune_status", "optuna_state")} == {
        "tune_status": "TERMINATED", "optuna_state": "PRUNED"}  # fmt: skip
    assert child["aaaa_00000"].data.tags["best_checkpoint"] == str(results.trials[0].checkpoint)
    # a finalist's full-dev scores at the step of its best checkpoint
    assert [m.step for m in client.get_metric_history(child["aaaa_00000"].info.run_id, "full_dev/overall")] == [20]

    wb = wandb_runs(tmp_path / "wandb-files")
    search = next(r for r in wb.values() if r.get("job_type") == "search")
    assert search["summary"]["full_dev/overall"] == 0.61 and search["summary"]["best_trial"] == "aaaa_00000"
    trials = {r["display_name"]: r["summary"] for r in wb.values() if r.get("job_type") == "trial"}
    assert trials["trial_bbbb_00001"]["full_dev/overall"] == 0.55 and trials["trial_bbbb_00001"]["final_rank"] == "2"
    assert trials["trial_aaaa_00000"]["final_rank"] == "1"


def test_runs_left_running_by_a_kill_are_ended_by_the_final_pick(tmp_path):
    space = make_space(tmp_path, "[mlflow]")
    callback = TrackersCallback(space, "overall", space.tune.trackers)
    a, b = make_trial(space, "aaaa_00000", 3e-5), make_trial(space, "bbbb_00001", 7e-5)
    drive(callback, a, [result(10, 0.30, "checkpoint_000000")], end=False)  # SIGKILLed: no callback ran after
    drive(callback, b, [result(10, 0.20)], end=False)
    folder = tmp_path / "results" / "e2e"
    assert {c.info.status for c in mlflow_runs(folder)[2]} == {"RUNNING"}
    # the search came back without b (started after Tune's last save: it runs again under a new id)
    results = SearchResults(folder, "overall", "max", [record(a, "TERMINATED", "COMPLETE", 10, "checkpoint_000000")])
    log_final(folder, {}, space, results, log=lambda line: None)
    _, parents, children = mlflow_runs(folder)
    status = {c.data.tags["mtbert.trial_id"]: c.info.status for c in children}
    assert status == {"aaaa_00000": "FINISHED", "bbbb_00001": "KILLED"} and parents[0].info.status == "FINISHED"


def test_a_moved_search_folder_goes_on_in_the_same_runs(tmp_path):
    space = make_space(tmp_path, "[mlflow]")
    callback = TrackersCallback(space, "overall", space.tune.trackers)
    drive(callback, make_trial(space, "aaaa_00000", 3e-5), [result(10, 0.30)], end=False)
    shutil.move(tmp_path / "results", tmp_path / "moved")
    space = make_space(tmp_path, "[mlflow]", storage=tmp_path / "moved")
    again = TrackersCallback(space, "overall", space.tune.trackers)
    a = make_trial(space, "aaaa_00000", 3e-5)
    drive(again, a, [result(20, 0.40)])
    again.on_experiment_end([a])
    folder = tmp_path / "moved" / "e2e"
    (folder / "summary.json").write_text("{}")
    log_final(folder, {}, space, SearchResults(folder, "overall", "max", []), log=lambda line: None)
    client, parents, children = mlflow_runs(folder)
    assert len(parents) == 1 and len(children) == 1 and parents[0].info.status == "FINISHED"
    history = client.get_metric_history(children[0].info.run_id, "dev/overall")
    assert [m.step for m in history] == [10, 20]
    assert not (tmp_path / "results").exists()  # nothing written where the folder was


def test_a_store_error_on_resume_drops_mlflow_instead_of_making_a_second_parent(tmp_path, capfd):
    space = make_space(tmp_path, "[mlflow]")
    callback = TrackersCallback(space, "overall", space.tune.trackers)
    a = make_trial(space, "aaaa_00000", 3e-5)
    drive(callback, a, [result(10, 0.30)], end=False)
    callback.on_experiment_end([a])
    folder = tmp_path / "results" / "e2e"
    parent = json.loads((folder / TRACKERS_FILE).read_text())["mlflow"]["parent"]
    with sqlite3.connect(folder / "mlflow.db") as db:  # reading a run now fails; making one still works
        db.execute("DROP TABLE latest_metrics")
    again = pickle.loads(pickle.dumps(callback))
    drive(again, make_trial(space, "aaaa_00000", 3e-5), [result(20, 0.40)])
    assert "warning: tune.trackers: mlflow failed (MlflowException" in capfd.readouterr().err
    with sqlite3.connect(folder / "mlflow.db") as db:
        runs = db.execute("SELECT run_uuid FROM runs WHERE run_uuid NOT IN "
                          "(SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId')").fetchall()  # fmt: skip
    assert runs == [(parent,)]
    assert json.loads((folder / TRACKERS_FILE).read_text())["mlflow"]["parent"] == parent


def test_a_tracker_that_fails_is_dropped_with_one_warning_and_the_others_go_on(tmp_path, capfd):
    (tmp_path / "a-file").write_text("")  # a store MLflow cannot make: its folder would be under a file
    space = make_space(tmp_path, f"[{{kind: mlflow, tracking_uri: 'sqlite:///{tmp_path}/a-file/mlflow.db'}}, wandb]")
    callback = TrackersCallback(space, "overall", space.tune.trackers)
    a = make_trial(space, "aaaa_00000", 3e-5)
    drive(callback, a, [result(10, 0.30, "checkpoint_000000")])
    warnings = [line for line in capfd.readouterr().err.splitlines() if WARNING in line]
    error = f"FileExistsError: [Errno 17] File exists: '{tmp_path / 'a-file'}'"
    assert warnings == [f"{WARNING}: mlflow failed ({error}); no more is logged to it in this run, the search goes on"]
    runs = wandb_runs(tmp_path / "wandb-files")
    assert [h["dev/overall"] for r in runs.values() if r.get("job_type") == "trial" for h in r["history"]] == [0.30]


def test_a_bug_in_a_tracker_is_raised_not_turned_into_a_warning(tmp_path, monkeypatch):
    class Buggy(tracker_runs.MlflowTracker):
        def log(self, trial_id, values, step):
            return {}[trial_id]  # a programming error, not a tracker going away

    monkeypatch.setitem(tracker_runs.KINDS, "mlflow", Buggy)
    space = make_space(tmp_path, "[mlflow]")
    with pytest.raises(KeyError, match="aaaa_00000"):
        drive(TrackersCallback(space, "overall", space.tune.trackers), make_trial(space, "aaaa_00000", 3e-5),
              [result(10, 0.30)])  # fmt: skip


def test_usage_reports_are_off_unless_the_user_set_them(tmp_path):
    """In a process like a user's (no test or CI marker, which MLflow reads as off by itself); any request
    would go to a proxy that is not there."""
    quiet = {"CI", "PYTEST_CURRENT_TEST", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "WANDB_ERROR_REPORTING"}
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    code = """
import os, pathlib, sys
from search.engine.tracker_runs import MlflowTracker
MlflowTracker({}, pathlib.Path(sys.argv[1]), {})
from mlflow.telemetry.client import get_telemetry_client
from mlflow.telemetry.utils import _IS_IN_CI_ENV_OR_TESTING
print(get_telemetry_client() is None, _IS_IN_CI_ENV_OR_TESTING, os.environ["WANDB_ERROR_REPORTING"])
"""

    def run(extra: dict[str, str]) -> list[str]:
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env={**env, **extra}, capture_output=True,
                             text=True, cwd=helpers.REPO, timeout=300, check=False)  # fmt: skip
        return out.stdout.split() or [out.stderr[-3000:]]

    assert run({}) == ["True", "False", "false"]
    assert run({"DO_NOT_TRACK": "true", "WANDB_ERROR_REPORTING": "true"})[2] == "true"  # the user's choice stays


@pytest.mark.slow
@pytest.mark.extended
def test_a_real_search_killed_and_resumed_logs_one_parent_its_trials_and_final_pick(tmp_path, data_dir, token_cache):
    """A real search with every tracker, SIGKILLed mid-search (no callback runs at a kill), then
    ``mtbert-search resume``: the run ids kept in trackers.json bring the resumed search back to
    MLflow's parent run and each trial's run; the final pick lands on the parent and the finalist.
    W&B's runs are checked through its own reader in the unit tests (a killed wandb-core leaves its
    offline files unfinished), its resume of the same ids too (test_a_resumed_search_goes_on_in_the_
    same_runs_...): right after a SIGKILL the killed driver's wandb-core may still hold the run ids,
    and W&B is then dropped with one warning."""
    path = helpers.write_space(tmp_path, data_dir, token_cache, name="killed", num_samples=4)
    text = path.read_text().replace("max_steps: 16", "max_steps: 32").replace("grace_period: 1", "grace_period: 4")
    path.write_text(text + "  trackers: [tensorboard, mlflow, wandb]\n")
    folder = tmp_path / "results" / "killed"
    search = helpers.Search(tmp_path, str(path), "--json")

    def caught() -> bool:  # a trial running past a checkpoint that Tune's saved state names
        try:
            return folder.is_dir() and any(map(helpers.running_past_a_saved_checkpoint, helpers.trial_dirs(folder)))
        except OSError:  # a file Tune is writing
            return False

    search.wait_for(caught)
    search.kill()
    before = json.loads((folder / TRACKERS_FILE).read_text())
    assert before["wandb"]["trials"] and set(before["wandb"]["trials"]) <= set(before["mlflow"]["trials"])
    out = helpers.cli("resume", str(folder), "--json")
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads(out.stdout)

    ids = json.loads((folder / TRACKERS_FILE).read_text())
    assert ids["mlflow"]["parent"] == before["mlflow"]["parent"]
    rows = helpers.rows_of(folder)
    client, parents, children = mlflow_runs(folder, "killed")
    assert [p.info.run_id for p in parents] == [before["mlflow"]["parent"]] and parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["mtbert.trial_id"] for c in children) == sorted(rows)
    assert {c.data.tags[PARENT] for c in children} == {parents[0].info.run_id}
    for c in children:  # every evaluation at its global step (a trial gone on from a checkpoint logs the
        trial = c.data.tags["mtbert.trial_id"]  # steps after it again: compared as sets)
        history = {m.step for m in client.get_metric_history(c.info.run_id, "dev/overall")}
        assert history == {r["step"] for r in rows[trial]}
        assert set(c.data.params) == {"optim.lr", "optim.head_lr"} and c.info.status == "FINISHED"
    best = summary["best"]
    assert parents[0].data.tags["best_checkpoint"] == best["checkpoint"]
    assert parents[0].data.metrics["full_dev/overall"] == pytest.approx(best["full_dev"]["overall"])
    finalist = next(c for c in children if c.data.tags["mtbert.trial_id"] == best["trial_id"])
    assert finalist.data.metrics["full_dev/overall"] == pytest.approx(best["full_dev"]["overall"])
