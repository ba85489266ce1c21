"""Searches on a multi-node Ray cluster, simulated on one machine with ``ray.cluster_utils.Cluster``:
a head with no CPUs (so every trial runs on a worker node) and worker nodes of one CPU each. The
search is the CLI in a subprocess joining the cluster with ``--address``, as on a real cluster.

Checked: trials spread over the nodes and write into one storage path; a node lost mid-search
(its trials go on from their last checkpoints on another node); a trial that raises (retried
``tune.max_failures`` times, then reported with its error); a loss that goes NaN (the trial ends
itself with the reason, not retried); the driver killed (``resume --address`` picks the search up);
fractional GPUs (logical ones: Ray sets CUDA_VISIBLE_DEVICES without a real GPU).
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import time
from pathlib import Path

import helpers
import pandas as pd
import pytest
import torch
from helpers import (
    EVAL_EVERY,
    Search,
    assert_resumed,
    cli,
    finished,
    rows_of,
    running_past_a_saved_checkpoint,
    running_with_checkpoint,
    trial_dirs,
    trial_rows,  # fmt: skip
)


def write_space(tmp: Path, data_dir: Path, token_cache: Path, name: str, search: str, **values) -> Path:
    """The shared template as these tests run it: no final evaluation, no diagnostics, CPU trials, no retry
    unless asked; the storage path a folder declared shared (tune.storage_shared: the test cluster's
    nodes are processes of this machine, which all see its disk)."""
    fields = {"final_eval": "none", "grad": "", "gpus": 0, "max_failures": 0, "shared": True, **values}
    return helpers.write_space(tmp, data_dir, token_cache, name, search, **fields)


def describe(results) -> list:
    return [(t.trial_id, t.status, t.failures, t.error_message()) for t in results.trials]


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPUs and two worker nodes of one CPU each."""
    c = helpers.start_cluster()
    try:
        yield c
    finally:
        c.shutdown()


# ---- one search with faults: spread over the nodes, a trial that raises, a loss that goes NaN -------

# with tune.seed 4 the trials sample (TPE's first ones are random): (1e-3, cpu) twice, (1e3, cpu), (1e3, cuda)
FAULTS = """\
  optim.lr: {choice: [1.0e-3, 1.0e+3]}
  train.device: {choice: [cpu, cuda]}"""


@pytest.fixture(scope="module")
def faults(cluster, data_dir, token_cache, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    # grace 4: no ASHA stops, so the NaN trial gets to its NaN
    space = write_space(tmp, data_dir, token_cache, "faults", FAULTS, num_samples=4, grace=4, max_failures=1, seed=4)
    started = time.monotonic()
    out = cli(str(space), "--address", cluster.address, "--json")
    assert out.returncode == 0, out.stderr[-4000:]
    return {"summary": json.loads(out.stdout), "experiment": tmp / "results" / "faults", "stderr": out.stderr,
            "seconds": time.monotonic() - started}  # fmt: skip


def kinds(results) -> dict[str, list]:
    """The faults search's trials by what their sampled settings make them do."""
    out: dict[str, list] = {"raise": [], "nan": [], "ok": []}
    for t in results.trials:
        key = "raise" if t.params["train.device"] == "cuda" else "nan" if t.params["optim.lr"] > 1 else "ok"
        out[key].append(t)
    return out


@pytest.mark.slow
@pytest.mark.extended
def test_trials_spread_over_the_nodes_into_one_storage_path(faults, cluster):
    from search.results import load_results

    experiment = faults["experiment"]
    results = load_results(experiment)
    rows = rows_of(experiment)
    nodes = {r["node_id"] for trial in rows.values() for r in trial}
    workers = {n.node_id for n in cluster.worker_nodes}
    assert len(nodes) >= 2 and nodes <= workers, (nodes, workers)  # never the head: it has no CPUs
    for trial in rows.values():
        assert all(r["hostname"] and r["gpu_ids"] == "" for r in trial)
    # every trial's results and checkpoints are in the one folder, whichever node ran it
    trained = [t for t in results.trials if t.status == "TERMINATED"]
    assert len(trained) == 3
    for t in trained:
        assert t.path.parent == experiment.resolve() and list(t.path.glob("checkpoint_*/metrics.json"))
    best = faults["summary"]["best"]
    assert Path(best["checkpoint"]).parent.parent == experiment.resolve()


@pytest.mark.slow
@pytest.mark.extended
def test_a_trial_that_raises_is_retried_then_reported_with_its_error(faults):
    from search.engine.searcher import load_searcher
    from search.results import load_results

    results = load_results(faults["experiment"])
    by_kind = kinds(results)
    assert len(by_kind["raise"]) == 1 and len(by_kind["ok"]) == 2, describe(results)
    failed = by_kind["raise"][0]
    assert failed.status == "ERROR" and failed.failures == 2, describe(results)  # the first try and one retry
    errors = faults["summary"]["errors"]
    assert list(errors) == [failed.trial_id]
    assert "train.device is 'cuda', but Ray gave this trial no GPU" in errors[failed.trial_id]
    assert errors[failed.trial_id].startswith("RuntimeError") or "(RuntimeError)" in errors[failed.trial_id]
    assert "Traceback" not in errors[failed.trial_id]
    # the rest of the search went on
    assert all(t.status == "TERMINATED" and t.failures == 0 for t in by_kind["ok"] + by_kind["nan"])
    assert faults["summary"]["trial_states"]["fail"] == 1
    assert load_searcher(faults["experiment"]).optuna_trial(failed.trial_id).state.name == "FAIL"


@pytest.mark.slow
@pytest.mark.extended
def test_a_non_finite_loss_ends_its_trial_with_the_reason(faults):
    from search.engine.searcher import load_searcher
    from search.results import load_results

    results = load_results(faults["experiment"])
    (nan,) = kinds(results)["nan"]
    # it ended itself: TERMINATED, never retried, short of its budget of 4 evaluations
    assert nan.status == "TERMINATED" and nan.failures == 0 and nan.error is None, describe(results)
    rows = trial_rows(nan.path)
    last = rows[-1]
    assert last["stop_reason"].startswith("a training loss is not finite at step ")
    assert math.isnan(last["overall"]) and len(rows) < 4
    assert all(math.isfinite(r["overall"]) and "stop_reason" not in r for r in rows[:-1])
    step = int(last["stop_reason"].split(" at step ")[1].split(":")[0])
    assert last["step"] == step and all(r["step"] < step for r in rows[:-1])
    # the evaluations before the NaN still count: its best is the last finite one
    assert nan.best is not None and math.isfinite(nan.best["overall"]) and nan.stop_reason == last["stop_reason"]
    assert faults["summary"]["stopped"] == {nan.trial_id: last["stop_reason"]}
    # Optuna: PRUNED at that evaluation, the NaN its last intermediate value (TPE ranks it worst there)
    frozen = load_searcher(faults["experiment"]).optuna_trial(nan.trial_id)
    assert frozen.state.name == "PRUNED" and math.isnan(frozen.intermediate_values[len(rows)])
    # status shows why, for this trial and the one that raised
    out = cli("status", str(faults["experiment"]), "--format", "csv")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(io.StringIO(out.stdout), dtype={"trial_id": str})
    notes = dict(zip(df["trial_id"], df["note"].fillna("")))
    assert notes[nan.trial_id] == last["stop_reason"]
    (raised,) = kinds(results)["raise"]
    assert notes[raised.trial_id].startswith("failed (2x): ") and "train.device" in notes[raised.trial_id]
    assert all(notes[t.trial_id] == "" for t in kinds(results)["ok"])


# ---- the driver killed, then resumed on the cluster ------------------------------------------------


@pytest.mark.slow
@pytest.mark.extended
def test_resume_on_the_cluster_after_the_driver_is_killed(cluster, data_dir, token_cache, tmp_path):
    from search.engine.searcher import load_searcher
    from search.results import load_results

    search = "  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}"
    space = write_space(tmp_path, data_dir, token_cache, "driver", search, steps=32, num_samples=4, grace=4)
    experiment = tmp_path / "results" / "driver"
    driver = Search(tmp_path, str(space), "--address", cluster.address, "--json")
    try:
        driver.wait_for(lambda: (dirs := trial_dirs(experiment) if experiment.is_dir() else [])
                        and sum(map(finished, dirs)) >= 1 and any(map(running_past_a_saved_checkpoint, dirs)))  # fmt: skip
    finally:
        driver.kill()  # the driver only: the cluster's processes are not its children
    assert len(cluster.worker_nodes) >= 2 and cluster.remaining_processes_alive()
    done_before = {t.trial_id: trial_rows(t.path) for t in load_results(experiment).trials if t.status == "TERMINATED"}
    assert done_before

    out = cli("resume", str(experiment), "--address", cluster.address, "--json")
    assert out.returncode == 0, out.stderr[-4000:]
    after = load_results(experiment)
    assert len(after.trials) == 4 == json.loads(out.stdout)["trials"]
    assert all(t.status == "TERMINATED" for t in after.trials), describe(after)
    assert_resumed(experiment, after.trials, done_before)
    # each Tune trial finished in the study (one proposed after Tune's last save is FAIL: repair_study)
    states = {t.user_attrs.get("tune_trial_id"): t.state.name for t in load_searcher(experiment).study().trials}
    assert {states[t.trial_id] for t in after.trials} <= {"COMPLETE", "PRUNED"}


# ---- fractional GPUs (logical: the nodes declare a GPU; Ray sets CUDA_VISIBLE_DEVICES) --------------


def run_watching(logs: Path, node_id: str, cluster, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run a search and watch one node's free CPUs; returns its output and the fewest CPUs it had free."""
    search = Search(logs, *args)
    fewest = math.inf
    while search.running():
        free = cluster.global_state.available_resources_per_node().get(node_id, {})
        fewest = min(fewest, free.get("CPU", 0.0))  # a resource all in use is left out
        time.sleep(0.2)
    return search.finish(), fewest


@pytest.mark.slow
@pytest.mark.extended
def test_fractional_gpus_pack_trials_on_one_gpu(cluster, data_dir, token_cache, tmp_path):
    from search.results import load_results

    # the only node with a GPU: two CPUs, so the GPU share alone decides how many trials it runs
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)
    try:
        cluster.wait_for_nodes(timeout=120)
        search = "  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}"
        half = write_space(tmp_path, data_dir, token_cache, "half", search, steps=8, num_samples=2,
                           max_concurrent="null", gpus=0.5, grace=2)  # fmt: skip
        # a reserved GPU that torch cannot use is an error; train.device: cpu keeps the reservation
        half.write_text(half.read_text().replace("max_steps: 8,", "max_steps: 8, device: cpu,"))
        out, fewest = run_watching(tmp_path, gpu_node.node_id, cluster, str(half), "--address", cluster.address,
                                   "--json")  # fmt: skip
        assert out.returncode == 0, out.stderr[-4000:]
        assert fewest == 0  # both trials at once: two CPUs and two halves of the one GPU
        rows = rows_of(tmp_path / "results" / "half")
        assert len(rows) == 2
        assert {(r["node_id"], r["gpu_ids"]) for trial in rows.values() for r in trial} == {(gpu_node.node_id, "0")}

        # a whole GPU per trial: one at a time; seed 6 samples cpu, cpu, auto
        whole = write_space(tmp_path, data_dir, token_cache, "whole", "  train.device: {choice: [cpu, auto]}",
                            steps=8, num_samples=3, max_concurrent="null", gpus=1, grace=2, seed=6)  # fmt: skip
        out, fewest = run_watching(tmp_path, gpu_node.node_id, cluster, str(whole), "--address", cluster.address,
                                   "--json")  # fmt: skip
        assert out.returncode == 0, out.stderr[-4000:]
        assert fewest == 1
        results = load_results(tmp_path / "results" / "whole")
        devices = sorted(t.params["train.device"] for t in results.trials)
        assert devices == ["auto", "cpu", "cpu"], describe(results)
        for t in results.trials:
            if t.params["train.device"] == "cpu" or torch.cuda.is_available():
                assert t.status == "TERMINATED", describe(results)
                assert {r["gpu_ids"] for r in trial_rows(t.path)} == {"0"}
            else:  # "auto" with a GPU reserved but no CUDA here: a clear error, not a silent CPU run
                assert t.status == "ERROR", describe(results)
                message = json.loads(out.stdout)["errors"][t.trial_id]
                assert "Ray gave this trial GPU 0 (tune.gpus_per_trial is 1), but torch sees no CUDA" in message
    finally:
        cluster.remove_node(gpu_node)


# ---- a node lost mid-search -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.extended
def test_a_lost_nodes_trials_go_on_from_their_checkpoints_on_another_node(cluster, data_dir, token_cache, tmp_path):
    from search.results import load_results

    # a third worker: two trials at a time, so one node is free to take over a lost node's trial
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes(timeout=120)
    dims = "  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}"
    # a lost node counts as a failure of each trial it ran (only an autoscaler's drain does not)
    # Batches of 64 make each step slow enough that the chosen trial is still running when its node goes:
    # with 8, a trial could finish its last evaluations before result.json showed them, and never restart.
    space = write_space(tmp_path, data_dir, token_cache, "lost", dims, steps=32, num_samples=3, grace=8,
                        max_failures=2, batch=64)  # fmt: skip
    experiment = tmp_path / "results" / "lost"
    search = Search(tmp_path, str(space), "--address", cluster.address, "--json")
    workers = {n.node_id: n for n in cluster.worker_nodes}

    def running_on_a_worker():  # once a trial has finished: one mid-way (of 8 evaluations), with a checkpoint
        trials = rows_of(experiment)
        if not any(rows and rows[-1].get("done") for rows in trials.values()):
            return None
        for trial_id, rows in trials.items():
            path = experiment / f"trial_{trial_id}"
            if 2 <= len(rows) <= 5 and running_with_checkpoint(path) and rows[-1]["node_id"] in workers:
                return trial_id, rows
        return None

    try:
        victim, rows_before = search.wait_for(running_on_a_worker)
        lost = rows_before[-1]["node_id"]
        finished_before = {k: v for k, v in rows_of(experiment).items() if v and v[-1].get("done")}
        cluster.remove_node(workers[lost], allow_graceful=False)  # as if the machine died
    finally:
        done = search.finish()
    assert done.returncode == 0, done.stderr[-4000:]
    results = load_results(experiment)
    assert len(results.trials) == 3 and all(t.status == "TERMINATED" for t in results.trials), describe(results)
    assert finished_before and victim not in finished_before
    for trial_id, rows in finished_before.items():  # nothing a finished trial reported is lost
        assert trial_rows(experiment / f"trial_{trial_id}") == rows, trial_id
    rows = trial_rows(experiment / f"trial_{victim}")
    assert rows[: len(rows_before)] == rows_before  # what it reported before the loss is kept
    # it went on from its last checkpoint, on another node: iterations_since_restore starts again at 1,
    # training_iteration and the steps go on
    again = next(i for i, r in enumerate(rows) if r["training_iteration"] > 1 and r["iterations_since_restore"] == 1)
    assert rows[again]["node_id"] != lost and all(r["node_id"] != lost for r in rows[again:])
    assert [r["training_iteration"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) == 8
    assert [r["step"] for r in rows] == [EVAL_EVERY * r["training_iteration"] for r in rows]
    assert next(t for t in results.trials if t.trial_id == victim).failures >= 1
    assert all(t.failures == 0 for t in results.trials if t.trial_id in finished_before)
    summary = json.loads(done.stdout)
    assert summary["errors"] == {} and summary["trials"] == 3


# ---- the pieces, without a cluster -----------------------------------------------------------------


@pytest.mark.parametrize(
    "device, gpu_ids, cuda, problem",
    [
        ("auto", "", False, None),  # CPUs: auto trains there
        ("auto", "0", True, None),  # Ray's GPU, visible to torch as cuda:0
        ("cuda", "1", True, None),
        ("cpu", "0", False, None),  # a reserved GPU left idle: wasteful, but trains as asked
        ("auto", "0", False, "Ray gave this trial GPU 0 (tune.gpus_per_trial is 0.5), but torch sees no CUDA"),
        ("cuda", "0", False, "but torch sees no CUDA device"),
        ("cuda", "", True, "train.device is 'cuda', but Ray gave this trial no GPU (tune.gpus_per_trial is 0.5)"),
        ("cuda:1", "3", True, "train.device is 'cuda:1', but a trial sees only the 1 GPU(s) Ray gave it"),
        ("cuda:1", "2,3", True, None),
    ],
)
def test_a_trial_trains_on_the_gpu_ray_gave_it_or_says_why_not(device, gpu_ids, cuda, problem):
    from search.engine.trainable import device_problem

    found = device_problem(device, gpu_ids, cuda, 0.5)
    assert found == problem if problem is None else problem in found


def test_the_summary_takes_the_exception_from_tunes_error_file():
    from search.results import error_message

    text = """Failure # 1 (occurred at 2026-01-01_10-00-00)
ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1, actor_id=ab, repr=run_trial)
  File "/x/search/trainable.py", line 10, in run_trial
    raise RuntimeError(problem)
RuntimeError: train.device is 'cuda', but Ray gave this trial no GPU
set tune.gpus_per_trial

Failure # 2 (occurred at 2026-01-01_10-00-05)
The actor died unexpectedly before finishing this task.
Traceback (most recent call last):
  File "/x/ray/tune/execution/tune_controller.py", line 1, in _on_result
ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.
\tclass_name: ImplicitFunc
\tpid: 7
\tip: 127.0.0.1
"""
    assert error_message(text) == (
        "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n"
        "\tclass_name: ImplicitFunc\n\tpid: 7"
    )
    assert error_message(text.split("\n\n")[0]) == (
        "RuntimeError: train.device is 'cuda', but Ray gave this trial no GPU\nset tune.gpus_per_trial"
    )
    assert error_message("something odd\nno exception line") == "something odd\nno exception line"


def test_a_trial_stopped_on_a_non_finite_loss_is_pruned_in_optuna():
    from helpers import searcher

    s = searcher()  # max_t 4
    s.suggest("a")
    s.on_trial_result("a", {"training_iteration": 1, "overall": 0.4})
    last = {"training_iteration": 2, "overall": float("nan"), "stop_reason": "a training loss is not finite"}
    s.on_trial_result("a", last)
    s.on_trial_result("a", {**last, "done": True})  # Tune repeats the last result when the function returns
    s.on_trial_complete("a", {**last, "done": True})
    frozen = s.optuna_trial("a")
    assert frozen.state.name == "PRUNED" and frozen.intermediate_values[1] == pytest.approx(0.4)
    assert math.isnan(frozen.intermediate_values[2])


def test_run_trial_ends_itself_on_a_non_finite_loss(tmp_path, data_dir, token_cache, monkeypatch, capsys):
    from helpers import FakeTune, space_file

    from search.engine.trainable import STOP_KEY, TrialSetup, fixed_settings, run_trial
    from search.space.file import load_space

    space = load_space(space_file(tmp_path, data_dir, token_cache, "  optim.lr: {loguniform: [1.0e-4, 1.0e+3]}"))

    class Reports(FakeTune):  # the last report comes without a checkpoint
        def report(self, metrics, checkpoint=None):
            if checkpoint is not None:
                return super().report(metrics, checkpoint)
            self.reports.append((dict(metrics), None))

    fake = Reports(tmp_path / "reports").install(monkeypatch)
    run_trial({"optim.lr": 1e3}, setup=TrialSetup(space, fixed_settings(space)), data={})  # returns: no raise
    (first, checkpoint), (last, none) = fake.reports
    assert first["step"] == 4 and checkpoint is not None and none is None
    assert last[STOP_KEY] == "a training loss is not finite at step 7: " + last[STOP_KEY].split(": ", 1)[1]
    assert last["step"] == 7 and math.isnan(last["overall"]) and "trial stopped" in capsys.readouterr().err
