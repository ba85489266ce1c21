"""``tune.study_storage``: the Optuna study in a database, written as trials report.

Synthetic trials through the searcher first (no training): the database holds what the in-memory
study holds (states, values, intermediate values), a trial's evaluations are there before it ends, a
restored searcher takes the trials from the database (also those told after its state was saved),
its pickle holds no connection, and bad settings fail before any work naming the key. Then real
smoke searches through the CLI, read with plain ``optuna.load_study`` while and after they run: on
SQLite (the default) and on a PostgreSQL server the test starts (skipped, saying why, where none
can be started)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from helpers import cli, play_trials, write_space

from search.engine.searcher import (
    PruningOptunaSearch,
    _internals,
    load_searcher,
    new_searcher,
    optuna_states,
    proposals,
    saved_study,
)
from search.engine.study import TUNE_TRIAL_ID, check_new_study, check_storage, folder_ref, resolve
from search.errors import SearchError, SpaceError
from search.space.file import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
MAX_T = 4

SPACE = """\
model: {{encoder: tiny}}
train: {{max_steps: 40, eval_every: 10}}
search:
  optim.lr: {{loguniform: [1.0e-5, 1.0e-2]}}
  grad.method: {{choice: [sum, pcgrad_weighted]}}
tune:
  num_samples: 8
  storage_path: {storage}
  name: {name}
{extra}"""


def score(v: dict) -> float:
    return -abs(v["optim.lr"] - 1e-3) * 100 + (0.2 if v["grad.method"] == "pcgrad_weighted" else 0.0)


def space_at(tmp_path: Path, name: str = "exp", extra: str = ""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPACE.format(storage=tmp_path / "results", name=name, extra=extra))
    return load_space(path, profile="cpu")


def folder_for(space, setting: str | None) -> Path:
    """The search folder of ``space`` with the launch record a search writes (``search.launch``)."""
    folder = Path(space.tune.storage_path) / space.tune.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "search.json").write_text(json.dumps({"metric": "overall", "mode": "max", "study_storage": setting}))
    return folder


def summary(study) -> list[tuple]:
    return [(t.number, t.state.name, t.params, t.value, dict(t.intermediate_values)) for t in study.trials]


@pytest.mark.parametrize("setting", ["sqlite", "journal:study.log"])
def test_the_database_holds_what_the_in_memory_study_holds(tmp_path, setting, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the journal's relative path: against the current folder
    memory_space = space_at(tmp_path / "memory")
    folder_for(memory_space, None)
    in_memory = new_searcher(memory_space, "overall", "max", MAX_T)
    assert in_memory.study_ref() is None
    play_trials(in_memory, memory_space, score, 8)

    space = space_at(tmp_path)
    folder = folder_for(space, resolve(setting))
    searcher = new_searcher(space, "overall", "max", MAX_T)
    play_trials(searcher, space, score, 8)
    ref = folder_ref(folder)
    url = f"sqlite:///{folder / 'study.db'}" if setting == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    assert ref.url == url and ref.name == "exp"
    storage = ref.storage()
    read = optuna.load_study(study_name="exp", storage=storage if setting != "sqlite" else url)
    # the same seeded sampler over the same trials: the same proposals, states and evaluations
    assert summary(read) == summary(in_memory.study())
    assert {t.state.name for t in read.trials} == {"COMPLETE", "PRUNED"}
    assert [t.user_attrs[TUNE_TRIAL_ID] for t in read.trials] == [f"t{i}" for i in range(8)]
    assert read.user_attrs["search_folder"] == str(folder.resolve())


def test_an_evaluation_is_in_the_database_before_the_trial_ends(tmp_path):
    space = space_at(tmp_path)
    folder = folder_for(space, "sqlite")
    searcher = new_searcher(space, "overall", "max", MAX_T)
    searcher.suggest("a")
    searcher.on_trial_result("a", {"training_iteration": 1, "overall": 0.25})
    searcher.on_trial_result("a", {"training_iteration": 2, "overall": 0.5})
    (running,) = optuna.load_study(study_name="exp", storage=f"sqlite:///{folder / 'study.db'}").trials
    assert running.state.name == "RUNNING" and running.intermediate_values == {1: 0.25, 2: 0.5}
    searcher.on_trial_complete("a", {"training_iteration": 3, "overall": 0.4})  # stopped early: PRUNED
    (done,) = optuna.load_study(study_name="exp", storage=f"sqlite:///{folder / 'study.db'}").trials
    assert done.state.name == "PRUNED" and done.value == 0.4 and done.intermediate_values == {1: 0.25, 2: 0.5, 3: 0.4}


def test_a_restored_searcher_takes_its_trials_from_the_database(tmp_path):
    space = space_at(tmp_path)
    folder = folder_for(space, "sqlite")
    searcher = new_searcher(space, "overall", "max", MAX_T)
    play_trials(searcher, space, score, 3)
    searcher.suggest("late")  # running when the state is saved
    searcher.on_trial_result("late", {"training_iteration": 1, "overall": -1.0})
    searcher.save_to_dir(str(folder), session_str="s")
    state = next(folder.glob("searcher-state-*.pkl")).read_bytes()
    assert b"RDBStorage" not in state and b"sqlalchemy" not in state  # where the study is, not a connection
    # after the save: "late" ends, and "after" is proposed and reports (Tune saves now and then; a kill loses this)
    searcher.on_trial_result("late", {"training_iteration": 2, "overall": -0.5})
    searcher.on_trial_complete("late", {"training_iteration": 4, "overall": -0.2})
    searcher.suggest("after")
    searcher.on_trial_result("after", {"training_iteration": 1, "overall": -0.3})

    restored = load_searcher(folder)
    inside = _internals(restored)
    assert set(inside.trials) == {"t0", "t1", "t2", "late", "after"}
    assert inside.completed == {"t0", "t1", "t2", "late"}
    assert restored._reported["after"] == 1
    # Tune resumes "late" from its checkpoint and "after" from the start: nothing is recorded twice
    restored.on_trial_result("late", {"training_iteration": 2, "overall": -0.9})
    restored.on_trial_result("after", {"training_iteration": 1, "overall": -0.8})
    restored.on_trial_result("after", {"training_iteration": 2, "overall": -0.1})
    restored.on_trial_complete("after", {"training_iteration": 4, "overall": 0.3, "trial_complete": True})
    restored.suggest("new")
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{folder / 'study.db'}")
    by_id = {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.trials}
    assert len(study.trials) == 6 and set(by_id) == {"t0", "t1", "t2", "late", "after", "new"}
    assert by_id["late"].intermediate_values == {1: -1.0, 2: -0.5, 4: -0.2}
    assert by_id["after"].state.name == "COMPLETE" and by_id["after"].intermediate_values == {1: -0.3, 2: -0.1, 4: 0.3}
    assert optuna_states(folder)["after"] == "COMPLETE"


def test_trials_an_earlier_search_adds_are_not_this_searchs_tune_trials(tmp_path):
    old = space_at(tmp_path, "old")
    play_trials(new_searcher(old, "overall", "max", MAX_T), old, score, 3)  # Tune ids t0, t1, t2 there
    folder_for(old, "sqlite")  # written after: the old search kept its study in memory, saved with its searcher
    earlier = tmp_path / "results" / "old"
    searcher = new_searcher(old, "overall", "max", MAX_T)
    play_trials(searcher, old, score, 3)
    searcher.save_to_dir(str(earlier), session_str="s")
    space = space_at(tmp_path, "new", extra=f"  warm_start: [{earlier}]\n")
    folder = folder_for(space, "sqlite")
    searcher = new_searcher(space, "overall", "max", MAX_T)
    play_trials(searcher, space, score, 2)  # Tune ids t0, t1 again, as the earlier trials' recorded ones
    searcher.save_to_dir(str(folder), session_str="s")
    study = optuna.load_study(study_name="new", storage=f"sqlite:///{folder / 'study.db'}")
    assert [t.user_attrs["proposed_by"] for t in study.trials[:3]] == ["earlier search"] * 3
    restored = load_searcher(folder)
    assert {tid: t.number for tid, t in _internals(restored).trials.items()} == {"t0": 3, "t1": 4}
    assert set(optuna_states(folder)) == {"t0", "t1"}


def test_a_pickled_searcher_opens_its_study_when_used(tmp_path):
    # Tune pickles the searcher into tuner.pkl when the search starts: no connection goes with it
    space = space_at(tmp_path)
    folder = folder_for(space, "sqlite")
    searcher = new_searcher(space, "overall", "max", MAX_T)
    play_trials(searcher, space, score, 2)
    copy = pickle.loads(pickle.dumps(searcher))
    assert copy.__dict__["_ot_study"] is None
    assert [t.number for t in copy.study().trials] == [0, 1]
    assert copy.optuna_trial("t1").number == 1
    assert isinstance(copy, PruningOptunaSearch) and (folder / "study.db").is_file()


def test_a_study_that_cannot_be_read_leaves_the_readers_without_one(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    space = space_at(tmp_path)
    folder = folder_for(space, url)
    searcher = new_searcher(space, "overall", "max", MAX_T)
    play_trials(searcher, space, score, 2)
    searcher.save_to_dir(str(folder), session_str="s")
    assert set(optuna_states(folder)) == {"t0", "t1"}
    (tmp_path / "shared.db").write_bytes(b"no database" * 1000)  # the server gone, the file broken: no traceback
    assert optuna_states(folder) is None and proposals(folder) == {} and saved_study(folder) is None
    assert "cannot be read" in capsys.readouterr().err


def test_a_search_does_not_go_on_without_its_study(tmp_path):
    from search.engine.repair import repair_study

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    space = space_at(tmp_path)
    folder = folder_for(space, url)
    searcher = new_searcher(space, "overall", "max", MAX_T)
    play_trials(searcher, space, score, 1)
    searcher.save_to_dir(str(folder), session_str="s")
    optuna.delete_study(study_name="exp", storage=url)
    with pytest.raises(SearchError, match=r"kept in tune.study_storage sqlite:///.*shared.db, and it holds no study "
                                          r"named 'exp' \(was it deleted\?\)"):  # fmt: skip
        repair_study(folder, space, MAX_T, log=lambda line: None)
    folder = folder_for(space_at(tmp_path / "own"), "sqlite")
    searcher = new_searcher(space_at(tmp_path / "own"), "overall", "max", MAX_T)
    searcher.save_to_dir(str(folder), session_str="s")
    (folder / "study.db").unlink()
    with pytest.raises(SearchError, match=r"its Optuna study database study.db is missing"):
        repair_study(folder, space, MAX_T, log=lambda line: None)


def test_a_new_search_does_not_take_a_study_name_in_use(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = space_at(tmp_path)
    folder_for(first, url)
    play_trials(new_searcher(first, "overall", "max", MAX_T), first, score, 1)
    check_new_study(url, tmp_path / "elsewhere" / "other")  # another name: free
    with pytest.raises(SearchError, match=r"already holds a study named 'exp'.*optuna delete-study"):
        check_new_study(url, tmp_path / "elsewhere" / "exp")
    check_new_study("sqlite", tmp_path / "elsewhere" / "exp")  # a new folder's own study.db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("mysql://u@h/db", r"tune\.study_storage: study_storage is 'mysql://u@h/db', but must be sqlite"),
        ("sqlite://", r"tune\.study_storage: .* but must be sqlite \(the default"),
        (7, r"tune\.study_storage: study_storage is 7, but must be"),
    ],
)
def test_a_setting_of_another_form_is_refused_where_it_is_written(tmp_path, value, match):
    with pytest.raises(SpaceError, match=match):
        space_at(tmp_path, extra=f"  study_storage: {value}\n")


def checked(tmp_path: Path, value: str) -> str | None:
    space = space_at(tmp_path, extra=f"  study_storage: '{value}'\n")
    check_storage(space, log=lambda line: None)
    return space.tune.study_storage


def test_a_file_in_a_folder_that_is_missing_is_refused_before_any_work(tmp_path):
    missing = r"tune\.study_storage: .*the folder .*missing does not exist; allowed: sqlite"
    with pytest.raises(SpaceError, match=missing):
        checked(tmp_path, f"sqlite:///{tmp_path / 'missing' / 'study.db'}")
    with pytest.raises(SpaceError, match=r"tune\.study_storage: journal:.* is a folder, not a file"):
        checked(tmp_path, f"journal:{tmp_path}")
    assert checked(tmp_path, f"sqlite:///{tmp_path / 's.db'}") == f"sqlite:///{tmp_path / 's.db'}"


def test_a_file_in_a_folder_nobody_may_write_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as root, who may write into any folder: no folder here is unwritable")
    with pytest.raises(SpaceError, match=r"locked is not writable"):
        checked(tmp_path, f"journal:{locked / 'study.log'}")


def test_an_unreachable_postgresql_server_is_refused_quickly(tmp_path):
    space = space_at(tmp_path, extra=f"  study_storage: 'postgresql://me:secret@127.0.0.1:{free_port()}/db'\n")
    start = time.monotonic()
    with pytest.raises(SpaceError, match=r"tune\.study_storage: postgresql\+psycopg2://me:\*\*\*@127\.0\.0\.1:\d+/db: no "
                                         r"database answers there") as e:  # fmt: skip
        check_storage(space, log=lambda line: None)
    assert "secret" not in str(e.value) and time.monotonic() - start < 10


def test_settings_are_resolved_as_the_search_records_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve("sqlite:///db/s.db") == f"sqlite:///{tmp_path / 'db' / 's.db'}"
    assert resolve("sqlite:////abs/s.db") == "sqlite:////abs/s.db"
    assert resolve("journal:j.log") == f"journal:{tmp_path / 'j.log'}"
    assert resolve("postgresql://u@h:5/d") == "postgresql+psycopg2://u@h:5/d"
    assert resolve("none") is None and resolve(None) is None and resolve("sqlite") == "sqlite"
    space = space_at(tmp_path, extra="  study_storage: null\n")
    check_storage(space, log=lambda line: None)
    assert space.tune.study_storage is None
    remote = space_at(tmp_path)  # on object storage the default is kept: study.db in the working copy, pushed
    remote.tune.storage_path = "s3://bucket/results"
    check_storage(remote, log=lambda line: None)
    assert remote.tune.study_storage == "sqlite"


# ---- real searches ---------------------------------------------------------------------------------


def assert_live_and_final(seen: list, experiment: Path, storage: str) -> None:
    # while it ran: a trial with evaluations recorded and not yet finished, read from the database
    assert any(state == "RUNNING" and n >= 1 for read in seen for state, n in read), seen[-5:]
    study = optuna.load_study(study_name=experiment.name, storage=storage)
    by_tune_id = {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.trials}
    tune_ids = {p.name.removeprefix("trial_") for p in experiment.glob("trial_*")}
    assert set(by_tune_id) == tune_ids  # every Tune trial, once
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert "COMPLETE" in {t.state.name for t in study.trials}
    for t in study.trials:  # every evaluation the trial reported, its last one the trial's value
        rows = [json.loads(line) for line in (experiment / f"trial_{t.user_attrs[TUNE_TRIAL_ID]}" / "result.json")
                .read_text().splitlines()]  # fmt: skip
        steps = {r["training_iteration"]: r["overall"] for r in rows}
        assert t.intermediate_values == steps and t.value == steps[max(steps)]
    # what status and report read (optuna_states) is the database's
    assert optuna_states(experiment) == {tid: t.state.name for tid, t in by_tune_id.items()}


@pytest.mark.slow
def test_a_search_writes_its_sqlite_study_as_it_runs(smoke_search):
    # the session's search, its study read with optuna.load_study once a second while it ran (conftest)
    experiment = smoke_search["experiment"]
    assert_live_and_final(smoke_search["study_reads"], experiment, f"sqlite:///{experiment / 'study.db'}")


@pytest.mark.slow
def test_a_resume_fails_the_trials_tune_never_saved(smoke_search, tmp_path):
    from search.engine.repair import repair_study
    from search.launch import saved_space

    folder = tmp_path / "e2e"
    shutil.copytree(smoke_search["experiment"], folder)
    storage = f"sqlite:///{folder / 'study.db'}"
    study = optuna.load_study(study_name="e2e", storage=storage)
    before = {t.number: t.state for t in study.trials}
    ghost = study.ask()  # proposed, then the search was killed before Tune saved the trial
    ghost.set_user_attr(TUNE_TRIAL_ID, "ghost")
    space, launch = saved_space(folder)
    said = []
    # the copy is the search folder moved: its saved state is pointed at the study.db here, then the ghost fails
    assert repair_study(folder, space, launch.max_t, said.append) is True
    expected = (f"{folder}: Optuna trial(s) {ghost.number} were proposed after Tune last saved the search's state "
                "and will not run: recorded as FAIL")  # fmt: skip
    assert said == [f"{folder}: the search folder moved; its Optuna study is read from {storage}", expected]
    assert load_searcher(folder).study_ref().url == storage
    after = optuna.load_study(study_name="e2e", storage=storage).trials
    assert after[ghost.number].state.name == "FAIL"
    assert {t.number: t.state for t in after if t.number != ghost.number} == before


# ---- PostgreSQL --------------------------------------------------------------------------------------


def _as_postgres_user() -> list[str] | None:
    """The command prefix that runs the PostgreSQL binaries as a user they accept (initdb refuses root)."""
    if os.getuid() != 0:
        return []
    runuser = shutil.which("runuser")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return [runuser, "-u", "postgres", "--"] if runuser else None


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL on a free port of 127.0.0.1 (initdb + pg_ctl into a temporary folder),
    stopped after the module; skipped, saying why, where none can be started."""
    binaries = {name: shutil.which(name) or f"/usr/local/bin/{name}" for name in ("initdb", "pg_ctl")}
    missing = [name for name, path in binaries.items() if not os.access(path, os.X_OK)]
    if missing:
        pytest.skip(f"PostgreSQL not installed here ({', '.join(missing)} not found): the postgresql:// test needs it")
    prefix = _as_postgres_user()
    if prefix is None:
        pytest.skip("running as root, and no 'postgres' user with runuser to run initdb as (initdb refuses root)")
    # not under pytest's temporary folder, which only its owner may enter: the postgres user writes here
    root = Path(tempfile.mkdtemp(prefix="mtbert-postgres-"))
    os.chmod(root, 0o777)
    data = root / "data"
    port = free_port()
    init = subprocess.run([*prefix, binaries["initdb"], "-D", str(data), "-U", "mtbert", "--auth=trust", "-E", "UTF8"],
                          check=False, capture_output=True, text=True)  # fmt: skip
    if init.returncode != 0:
        pytest.skip(f"initdb failed, so no PostgreSQL to test against: {init.stderr.strip()[-500:]}")
    log = root / "server.log"
    start = subprocess.run([*prefix, binaries["pg_ctl"], "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                            f"-h 127.0.0.1 -p {port} -k {root}", "start"], check=False, capture_output=True,
                           text=True)  # fmt: skip
    if start.returncode != 0:
        pytest.skip(f"pg_ctl could not start PostgreSQL: {start.stderr.strip()[-300:]} {log.read_text()[-300:]}")
    try:
        yield f"postgresql+psycopg2://mtbert@127.0.0.1:{port}/postgres"
    finally:
        stop = [*prefix, binaries["pg_ctl"], "-D", str(data), "-m", "immediate", "stop"]
        subprocess.run(stop, check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_a_postgresql_study_is_written_and_restored(postgres, tmp_path):
    space = space_at(tmp_path, extra=f"  study_storage: '{postgres}'\n")
    check_storage(space, log=lambda line: None)  # the server answers
    folder = folder_for(space, space.tune.study_storage)
    searcher = new_searcher(space, "overall", "max", MAX_T)
    play_trials(searcher, space, score, 4)
    searcher.save_to_dir(str(folder), session_str="s")
    read = optuna.load_study(study_name="exp", storage=postgres)
    assert summary(read) == summary(load_searcher(folder).study())
    assert {t.state.name for t in read.trials} <= {"COMPLETE", "PRUNED"} and len(read.trials) == 4
    with pytest.raises(SearchError, match="already holds a study named 'exp'"):
        check_new_study(postgres, tmp_path / "another" / "exp")


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("mysql://u@h/db", "tune.study_storage: study_storage is 'mysql://u@h/db', but must be sqlite"),
        ("postgresql://u:pw@127.0.0.1:{port}/db", "postgresql+psycopg2://u:***@127.0.0.1:{port}/db: no database answers"),
        ("sqlite:///{tmp}/nowhere/s.db", "nowhere does not exist; allowed: sqlite (the default"),
    ],
)  # fmt: skip
def test_the_search_command_refuses_a_bad_storage_before_any_work(data_dir, token_cache, tmp_path, value, said):
    port = free_port()
    space = write_space(tmp_path, data_dir, token_cache, name="bad")
    value, said = value.format(port=port, tmp=tmp_path), said.format(port=port, tmp=tmp_path)
    out = cli(str(space), "--set", f"tune.study_storage={value}", timeout=300)
    assert out.returncode == 2 and said in out.stderr, out.stderr[-2000:]
    assert "pw@" not in out.stderr and not (tmp_path / "results").exists()  # no folder made
