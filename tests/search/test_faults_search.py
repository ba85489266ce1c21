"""Faults around a search's driver: one writer per search folder (the lock), Ctrl-C, killed drivers,
strict JSON, user errors without tracebacks.

Fast tests (no Ray): the lock itself, its use by ``resume`` and by new searches racing for one name,
the searcher's handling of trials it does not know, the Ctrl-C machinery with a stand-in for Tune,
``--json`` with NaN scores, user errors. Slow tests (a real search) share two runs:

- ``contended``: the same search started twice at once (one gets ``busy``, the other ``busy-2``);
  while the first runs, ``resume``, ``ensemble --retrain-seeds`` are refused and ``status`` works,
  and the first finishes with every trial TERMINATED. The second is stopped with SIGINT, resumed,
  stopped again, resumed, SIGKILLed while it scores the best checkpoint, then resumed to the end.
- ``early``: a search stopped with SIGINT before Tune saved anything, then resumed.

A driver SIGKILLed mid-trial and then resumed is ``tests/test_search_resume.py`` (its ``resume``
also takes over the killed driver's lock).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import helpers
import pandas as pd
import pytest
from helpers import Search, cli, rows_of

REPO = helpers.REPO
HOLD = """\
import sys, time
from search.lock import SearchLock
SearchLock.acquire(sys.argv[1], "mtbert-search resume elsewhere")
print("held", flush=True)
time.sleep(600)
"""


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, as every parser but Python's does."""

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@contextlib.contextmanager
def holder(folder: Path):
    """Another process holding ``folder``'s lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def fake_search(folder: Path) -> Path:
    """A search folder as a search leaves it before Tune has saved anything."""
    from search.launch import Launch

    Launch("space.yaml").save(folder, "model: {encoder: tiny}\ntune: {num_samples: 1}\n")
    return folder


# ---- the lock --------------------------------------------------------------------------------------


def test_a_held_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    from search.lock import LOCK_FILE, LockHeld, SearchLock

    with holder(tmp_path) as proc:
        info = json.loads((tmp_path / LOCK_FILE).read_text())
        assert info["pid"] == proc.pid and info["host"] == socket.gethostname() and info["since"]
        with pytest.raises(LockHeld) as e:
            SearchLock.acquire(tmp_path)
    message = str(e.value)
    assert f"pid {proc.pid}" in message and f"host {socket.gethostname()}" in message
    assert f"since {info['since']}" in message and "mtbert-search resume elsewhere" in message
    # released by the kernel when its holder is killed; the file it left is taken over, and said so
    with SearchLock.acquire(tmp_path) as lock:
        assert f"pid {proc.pid}" in lock.taken_over and "no longer running" in lock.taken_over
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()  # let go normally: nothing left
    with SearchLock.acquire(tmp_path) as lock:
        assert lock.taken_over is None


def test_a_lock_file_from_another_host_is_not_taken_over(tmp_path):
    from search.lock import LOCK_FILE, LockHeld, SearchLock

    info = {"host": "gpu-node-7", "pid": 4242, "since": "2026-01-01 10:00:00 +0000", "command": "mtbert-search x"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(info))
    with pytest.raises(LockHeld) as e:
        SearchLock.acquire(tmp_path)
    message = str(e.value)
    assert "host gpu-node-7, pid 4242, since 2026-01-01 10:00:00" in message
    assert f"delete {tmp_path / LOCK_FILE}" in message
    assert json.loads((tmp_path / LOCK_FILE).read_text()) == info  # left as it was


def test_resume_of_a_search_in_use_exits_2_naming_the_holder(tmp_path, capsys):
    import ray

    from search.cli import main

    folder = fake_search(tmp_path / "busy")
    with holder(folder) as proc:
        assert main(["resume", str(folder)]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{folder} is in use by" in line and f"pid {proc.pid}" in line and "since " in line, line
    assert not ray.is_initialized()


def test_new_searches_started_at_once_with_one_name_get_a_folder_each(tmp_path):
    """Three processes claim one name at the same moment, each then writing its files as a search does."""
    barrier = tmp_path / "go"
    code = f"""
import sys, time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from search.launch import Launch, claim_folder, experiment_dir

@dataclass
class Tune:
    storage_path: str
    name: str

space = SimpleNamespace(tune=Tune({str(tmp_path / "results")!r}, "same"))
print("ready", flush=True)
while not Path({str(barrier)!r}).exists():
    time.sleep(0.001)
lock = claim_folder(space)
Launch("space.yaml").save(experiment_dir(space), "{{}}\\n")
print(experiment_dir(space), flush=True)
time.sleep(2)
"""
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(3)]  # fmt: skip
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 3  # all of them imported and waiting
    barrier.touch()
    folders = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    names = sorted(Path(f).name for f in folders)
    assert names == ["same", "same-2", "same-3"], folders


# ---- trials the saved searcher does not know ----------------------------------------------------------


def test_the_searcher_ignores_a_trial_it_never_proposed():
    """Tune saves the trials' state before the searcher's: a search killed in between resumes a trial
    the restored searcher never proposed, and Ray's OptunaSearch then raised a KeyError."""
    from optuna.trial import TrialState

    from search.engine.searcher import PruningOptunaSearch

    searcher = PruningOptunaSearch(space=lambda t: {"x": t.suggest_float("x", 0, 1)}, metric="overall", mode="max",
                                   max_t=2)  # fmt: skip
    assert "x" in searcher.suggest("known")
    result = {"overall": 0.5, "training_iteration": 1}
    searcher.on_trial_result("ghost", result)
    searcher.on_trial_complete("ghost", result)
    searcher.on_trial_complete("ghost-2", None, error=True)
    searcher.on_trial_result("known", result)
    searcher.on_trial_complete("known", {"overall": 0.7, "training_iteration": 2, "trial_complete": True})
    (trial,) = searcher.study().trials
    assert trial.state == TrialState.COMPLETE and trial.value == 0.7 and trial.intermediate_values == {1: 0.5, 2: 0.7}


# ---- Ctrl-C, with a stand-in for Tune -----------------------------------------------------------------


def test_ctrl_c_asks_tune_to_stop_then_a_second_stops_at_once(tmp_path):
    from search.engine.interrupt import stop_on_sigint
    from search.errors import SearchInterrupted

    stops, lines = [], []
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    with stop_on_sigint(lines.append) as seen:
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # Tune leaves SIGINT to us
        with pytest.raises(KeyboardInterrupt):  # before Tune runs there is nothing to stop gracefully
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        # and it is remembered, for when Python drops the exception (in a fork's callbacks)
        assert seen.requested and not seen.graceful
        with pytest.raises(KeyboardInterrupt):
            seen.check(tmp_path)
    with stop_on_sigint(lines.append) as seen:
        signal.signal(signal.SIGUSR1, lambda *_: stops.append(1))  # what Tune's run installs: its stop request
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs in this thread between bytecodes
        assert stops == [1] and seen.graceful and "Ctrl-C again" in lines[-1]
        with pytest.raises(SearchInterrupted):
            seen.check(tmp_path)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert stops == [1]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)) == before
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


# ---- strict JSON -----------------------------------------------------------------------------------------


def test_search_json_writes_nan_as_null(tmp_path, monkeypatch, capsys):
    import search.results
    import search.summary
    from search.cli import run_and_report

    nan = float("nan")
    summary = {"experiment": str(tmp_path), "metric": "overall", "trials": 1, "trial_states": {"complete": 1},
               "best": {"trial_id": "t1", "params": {"model.encoder": "tiny"}, "full_dev": None,
                        "selection": {"overall": 0.5, "sts_pearson": nan, "sts_spearman": float("-inf")}}}  # fmt: skip
    monkeypatch.setattr(search.results, "load_results", lambda experiment: None)
    monkeypatch.setattr(search.summary, "summarize", lambda results, space, log: summary)
    space = SimpleNamespace(notes=["a note"], base=SimpleNamespace(model=SimpleNamespace(encoder="tiny")))
    assert run_and_report(lambda log: tmp_path, space, True, tmp_path) == 0
    out = strict_json(capsys.readouterr().out)
    assert out["best"]["selection"] == {"overall": 0.5, "sts_pearson": None, "sts_spearman": None}


def test_ensemble_json_writes_nan_as_null(tmp_path, monkeypatch, capsys):
    import search.ensemble
    from search.cli import main

    report = {"members": [{"name": "t1", "dev": {"sts_pearson": float("nan")}}], "ensemble": {"overall": float("inf")}}
    plan = SimpleNamespace(experiment=tmp_path, out=tmp_path / "out")
    monkeypatch.setattr(search.ensemble, "plan", lambda *a, **k: plan)
    monkeypatch.setattr(search.ensemble, "build", lambda *a, **k: report)
    assert main(["ensemble", str(tmp_path), "--out", str(tmp_path / "out"), "--json"]) == 0
    out = strict_json(capsys.readouterr().out)
    assert out == {"members": [{"name": "t1", "dev": {"sts_pearson": None}}], "ensemble": {"overall": None}}


# ---- user errors: exit 2, one line ------------------------------------------------------------------------


def test_a_storage_path_that_cannot_be_a_folder_exits_2(data_dir, tmp_path, capsys):
    from search.cli import main

    (tmp_path / "file").write_text("")
    space = tmp_path / "s.yaml"
    space.write_text(f"model: {{encoder: tiny}}\ntune: {{storage_path: {tmp_path / 'file' / 'results'}}}\n")
    assert main([str(space)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "tune.storage_path" in line and str(tmp_path / "file") in line, line


def test_a_search_on_an_address_where_no_cluster_answers_exits_2_before_a_folder_is_made(data_dir, tmp_path,
                                                                                        capsys):  # fmt: skip
    from search.cli import main

    with socket.socket() as probe:  # a loopback port just freed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    space = tmp_path / "s.yaml"
    space.write_text(f"model: {{encoder: tiny}}\ndata: {{max_train_per_task: 16}}\n"
                     f"tune: {{num_samples: 1, storage_path: {tmp_path / 'results'}}}\n")  # fmt: skip
    started = time.monotonic()
    assert main([str(space), "--address", closed]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"--address {closed}: no Ray cluster answers there" in line and time.monotonic() - started < 60, line
    assert not (tmp_path / "results").exists()


def test_user_errors_of_status_and_resume_exit_2_in_one_line(data_dir, tmp_path, monkeypatch, capsys):
    import ray

    from search.cli import main

    (tmp_path / "file").write_text("")
    assert main(["status", str(tmp_path / "file")]) == 2
    assert "is not a folder" in one_line(capsys.readouterr().err)

    folder = fake_search(tmp_path / "search")
    monkeypatch.setenv("MTBERT_DATA", str(tmp_path / "moved"))  # the data the search trained on is gone
    assert main(["resume", str(folder)]) == 2
    assert f"data folder {tmp_path / 'moved'}" in one_line(capsys.readouterr().err)
    assert not (folder / "search.lock").exists()
    monkeypatch.setenv("MTBERT_DATA", str(data_dir))

    # An address where nothing listens (a loopback port just freed): refused at once, before the lock,
    # where ray.init would retry for minutes.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    assert main(["resume", str(folder), "--address", closed]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"--address {closed}: no Ray cluster answers there" in line and time.monotonic() - started < 30, line
    assert not (folder / "search.lock").exists()

    # Something listens there, but it is no Ray cluster: ray.init's error, in one line.
    def no_cluster(*args, **kwargs):
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # whatever other tests left running
    monkeypatch.setattr(ray, "init", no_cluster)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        listening = f"127.0.0.1:{server.getsockname()[1]}"
        assert main(["resume", str(folder), "--address", listening]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"--address {listening}: no Ray cluster there (Could not find any running Ray instance.)" in line, line
    assert not (folder / "search.lock").exists()


# ---- a real search, started twice at once, interrupted and killed -----------------------------------------

NUM_SAMPLES = 3


WARM_LR = [1.0e-3, 3.0e-3]  # the warm-start points: the first trials, once each however often the search resumes


def write_space(tmp: Path, data_dir: Path, token_cache: Path, name: str, steps: int, num_samples: int) -> Path:
    """The shared template with one dimension, ASHA's grace period 2 evaluations, no diagnostics, and two
    warm-start points."""
    path = helpers.write_space(tmp, data_dir, token_cache, name, "  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}",
                               steps=steps, num_samples=num_samples, grace=2, grad="")  # fmt: skip
    path.write_text(path.read_text() + "  warm_start: [" + ", ".join(f"{{optim.lr: {lr}}}" for lr in WARM_LR) + "]\n")
    return path


def warm_started(study) -> list[float]:
    """The optim.lr of the study's trials that were warm-start points, in order."""
    return [t.params["optim.lr"] for t in study.trials if t.user_attrs.get("proposed_by") == "warm start"]


def has_checkpoint(experiment: Path) -> bool:
    return any(experiment.glob("trial_*/checkpoint_*"))


def result_count(experiment: Path) -> int:
    """Results written so far (whole lines: a trial may be writing one)."""
    return sum(p.read_text().count("\n") for p in experiment.glob("trial_*/result.json"))


def ranked(experiment: Path) -> bool:
    """Whether a reader of the search finds a trial with a checkpoint (what ``ensemble`` needs)."""
    from search.errors import SearchError
    from search.results import load_results

    try:
        return bool(load_results(experiment).ranked())
    except SearchError:
        return False


def interrupt(search: Search) -> subprocess.CompletedProcess:
    os.kill(search.proc.pid, signal.SIGINT)  # the driver alone, as a terminal's Ctrl-C reaches it
    return search.finish(timeout=300)


@pytest.fixture(scope="module")
def contended(data_dir, token_cache, tmp_path_factory):
    from search.lock import read_holder

    tmp = tmp_path_factory.mktemp("contended")
    # 12 evaluations a trial: long enough for the checks below to start while both searches run
    space = write_space(tmp, data_dir, token_cache, "busy", steps=48, num_samples=NUM_SAMPLES)
    first, second = tmp / "results" / "busy", tmp / "results" / "busy-2"
    runs, checks = [], {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def start(*args: str) -> Search:
        (tmp / f"log{len(runs)}").mkdir()
        runs.append(Search(tmp / f"log{len(runs)}", *args))
        return runs[-1]

    def check(key: str, *args: str) -> None:  # a short command, in the background
        checks[key] = subprocess.Popen([sys.executable, "-m", "search.cli", *args], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip

    start(str(space), "--json")
    start(str(space), "--json")
    rec: dict = {"first": first, "second": second, "ensemble_out": tmp / "ens"}
    try:
        locks = [first / "search.lock", second / "search.lock"]
        runs[0].wait_for(lambda: all(read_holder(p) for p in locks))
        by_pid = {s.proc.pid: s for s in runs}
        a, b = (by_pid[read_holder(p)["pid"]] for p in locks)
        rec["pids"] = (a.proc.pid, b.proc.pid)
        a.wait_for(lambda: (first / "search.json").is_file())
        check("resume_refused", "resume", str(first))

        b.wait_for(lambda: has_checkpoint(second))
        os.kill(b.proc.pid, signal.SIGINT)  # the driver alone, as a terminal's Ctrl-C reaches it

        a.wait_for(lambda: ranked(first), every=1)
        rec["first_running_at_checks"] = a.running()
        check("status_while_running", "status", str(first), "--format", "csv")

        rec["interrupted"] = b.finish(timeout=300)
        rec["files_interrupted"] = sorted(p.name for p in second.iterdir())
        check("status_interrupted", "status", str(second), "--format", "csv")
        for key, proc in checks.items():
            out, err = proc.communicate(timeout=300)
            rec[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

        again = start("resume", str(second))
        before = result_count(second)
        again.wait_for(lambda: result_count(second) > before)
        rec["resume_interrupted"] = interrupt(again)
        rec["files_resume_interrupted"] = sorted(p.name for p in second.iterdir())

        rec["first_done"] = a.finish(timeout=600)
        rec["first_files"] = sorted(p.name for p in first.iterdir())
        with holder(first) as proc:  # ensemble needs a search with checkpoints; any holder will do
            rec["ensemble_holder"] = proc.pid
            rec["ensemble_refused"] = cli("ensemble", str(first), "--top-k", "1", "--retrain-seeds", "1", "--out",
                                          str(tmp / "ens"), timeout=300)  # fmt: skip

        killed = start("resume", str(second))
        killed.wait_for(lambda: "scoring trial" in killed.out.read_text(), every=0.1)
        killed.kill()  # SIGKILL, the driver and its Ray, at wrap-up
        rec["rows_at_wrapup"] = rows_of(second)
        rec["files_killed"] = sorted(p.name for p in second.iterdir())
        rec["status_killed"] = cli("status", str(second), "--format", "csv", timeout=120)
        rec["resumed"] = cli("resume", str(second), "--json", timeout=600)
    finally:
        for s in runs:
            s.kill()
        for proc in checks.values():
            proc.kill()
            proc.communicate()
    return rec


@pytest.mark.slow
@pytest.mark.extended
def test_two_searches_at_once_get_a_folder_each_and_the_first_finishes(contended):
    from search.results import load_results

    done = contended["first_done"]
    assert done.returncode == 0, done.stderr[-4000:]
    summary = strict_json(done.stdout)
    assert summary["experiment"] == str(contended["first"]) and summary["best"] is not None
    results = load_results(contended["first"])
    assert len(results.trials) == NUM_SAMPLES and {t.status for t in results.trials} == {"TERMINATED"}, [
        (t.trial_id, t.status, t.error_message()) for t in results.trials
    ]
    assert "search.lock" not in contended["first_files"] and "summary.json" in contended["first_files"]
    assert json.loads((contended["second"] / "search.json").read_text())["space_file"].endswith("busy.yaml")


@pytest.mark.slow
@pytest.mark.extended
def test_a_second_driver_is_refused_while_readers_work(contended):
    assert contended["first_running_at_checks"]
    holders = {"resume_refused": contended["pids"][0], "ensemble_refused": contended["ensemble_holder"]}
    for key, pid in holders.items():
        out = contended[key]
        assert out.returncode == 2, (key, out.stderr[-3000:])
        line = one_line(out.stderr)
        assert f"{contended['first']} is in use by" in line and f"pid {pid}" in line, line
        assert f"host {socket.gethostname()}" in line and "since " in line, line
    assert not contended["ensemble_out"].exists()
    status = contended["status_while_running"]
    assert status.returncode == 0, status.stderr[-3000:]
    assert status.stdout.startswith("trial_id,status,") and len(status.stdout.splitlines()) >= 2


def assert_interrupted(out: subprocess.CompletedProcess, experiment: Path, files: list[str]) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == 130, text[-4000:]
    assert f"continue with: mtbert-search resume {experiment}" in out.stderr
    assert "Tuner.restore" not in text  # Tune's own hint is not what a user of this command runs
    best = [line for line in text.splitlines() if line.lower().startswith("best")]
    assert all(line.startswith("best so far (provisional") for line in best), best
    if "--json" in out.args:  # no best, the command to go on
        result = strict_json(out.stdout)
        assert result["interrupted"] and result["best"] is None and result["resume"].endswith(str(experiment))
        assert result["best_so_far"] is None or result["best_so_far"]["provisional"]
    assert "summary.json" not in files and "search.lock" not in files, files


@pytest.mark.slow
@pytest.mark.extended
def test_ctrl_c_stops_the_search_saves_it_and_says_how_to_go_on(contended):
    second = contended["second"]
    assert_interrupted(contended["interrupted"], second, contended["files_interrupted"])
    assert "trials were stopped and the search's state saved" in contended["interrupted"].stderr
    status = contended["status_interrupted"]
    assert status.returncode == 0, status.stderr[-3000:]
    assert set(pd.read_csv(io.StringIO(status.stdout))["status"]) != {"TERMINATED"}  # it did stop mid-way
    assert_interrupted(contended["resume_interrupted"], second, contended["files_resume_interrupted"])


@pytest.mark.slow
@pytest.mark.extended
def test_killed_at_wrap_up_then_status_and_resume_give_the_whole_search(contended):
    from search.engine.searcher import load_searcher
    from search.results import load_results

    second = contended["second"]
    assert "summary.json" not in contended["files_killed"] and "search.lock" in contended["files_killed"]
    status = contended["status_killed"]
    assert status.returncode == 0 and len(status.stdout.splitlines()) == 1 + NUM_SAMPLES, status.stderr[-3000:]
    out = contended["resumed"]
    assert out.returncode == 0, out.stderr[-4000:]
    assert "took over the lock" in out.stderr  # the killed driver's, on this host
    summary = strict_json(out.stdout)
    assert summary["trials"] == NUM_SAMPLES and summary["best"]["full_dev"] is not None
    assert strict_json((second / "summary.json").read_text())["best"]["trial_id"] == summary["best"]["trial_id"]
    results = load_results(second)
    assert {t.status for t in results.trials} == {"TERMINATED"}
    assert rows_of(second) == contended["rows_at_wrapup"]  # nothing ran again
    study = load_searcher(second).study()
    assert len(study.trials) == NUM_SAMPLES and {s.state.name for s in study.trials} <= {"COMPLETE", "PRUNED"}
    assert warm_started(study) == WARM_LR  # two resumes and a kill later, each point ran once, first
    assert not list(second.glob("trial_*/.kept-*")) and not (second / "search.lock").exists()


@pytest.mark.slow
@pytest.mark.extended
def test_ctrl_c_before_tune_saved_anything_then_resume_runs_the_search(data_dir, token_cache, tmp_path):
    from search.results import load_results

    space = write_space(tmp_path, data_dir, token_cache, "early", steps=8, num_samples=1)
    experiment = tmp_path / "results" / "early"
    (tmp_path / "log").mkdir()
    search = Search(tmp_path / "log", str(space))
    search.wait_for(lambda: (experiment / "search.json").is_file(), every=0.05)
    out = interrupt(search)
    assert out.returncode == 130 and f"mtbert-search resume {experiment}" in out.stderr, out.stderr[-3000:]
    assert not (experiment / "search.lock").exists()
    resumed = cli("resume", str(experiment), "--json")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert strict_json(resumed.stdout)["trials"] == 1
    assert [t.status for t in load_results(experiment).trials] == ["TERMINATED"]
    # started again from the saved copy of the space: its one trial is the first warm-start point
    from search.engine.searcher import load_searcher

    assert warm_started(load_searcher(experiment).study()) == WARM_LR[:1]


def test_a_space_file_that_is_not_utf8_exits_2_naming_it(tmp_path, capsys):
    from search.cli import main

    space = tmp_path / "binary.yaml"
    space.write_bytes(b"model: {encoder: tiny}\n\xff\xfe")
    assert main([str(space)]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{space}: file: is not UTF-8 text" in line, line


def test_gpu_settings_that_no_trial_could_run_exit_2_before_ray_starts(data_dir, tmp_path, monkeypatch, capsys):
    import torch

    from search.cli import main

    space = tmp_path / "s.yaml"
    space.write_text(f"model: {{encoder: tiny}}\ntrain: {{device: cuda}}\n"
                     f"tune: {{num_samples: 1, storage_path: {tmp_path / 'results'}}}\n")  # fmt: skip
    assert main([str(space)]) == 2  # a trial on cuda, but Ray would give it no GPU
    line = one_line(capsys.readouterr().err)
    assert "tune.gpus_per_trial: is 0, but train.device is 'cuda'" in line, line
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    assert main([str(space), "--set", "tune.gpus_per_trial=1"]) == 2  # each trial would wait for a GPU forever
    line = one_line(capsys.readouterr().err)
    assert "tune.gpus_per_trial is 1, but this machine has no GPU" in line, line
    assert not (tmp_path / "results").exists()
