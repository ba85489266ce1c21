"""Helpers tests share: the repository's folders; the one space template of a real search, running
the CLI, reading a search's trial folders, a stand-in for Tune's report, a searcher on a
one-dimension space; a few hand-written rows per task with the tiny random encoder; tiny
checkpoints on the fixture course files, and a search and an ensemble made of them."""

from __future__ import annotations

import copy
import csv
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtbert.model.heads import HeadSpec
from mtbert.model.pretrained import load_encoder

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"

NUM_SAMPLES = 6
MAX_T = 4  # 16 steps, an evaluation every 4
EVAL_EVERY = 4

# The search of every test that runs one: the tiny encoder on a few hundred real rows per task.
SPACE = """\
model: {{encoder: tiny}}
data: {{dir: {data}, cache_dir: {cache}, max_train_per_task: 160, max_length: 64}}
heads: {{sst: {{hidden: [16]}}, para: {{hidden: [16]}}, sts: {{hidden: [16]}}}}
sampling: {{schedule: ratios, batch_size: {batch}}}
train: {{max_steps: {steps}, eval_every: 4}}
{grad}search:
{search}
tune:
  num_samples: {num_samples}
  max_concurrent: {max_concurrent}
  cpus_per_trial: 1
  grace_period: {grace}
  reduction_factor: 2
  eval_subset: 48
  final_eval: {final_eval}
  seed: {seed}
  storage_path: {storage}
  name: {name}
{extra}"""
SEARCH = """\
  optim.lr: {loguniform: [1.0e-6, 1.0e-2]}
  optim.head_lr: {loguniform: [1.0e-6, 1.0e-2]}"""
DIAGNOSE = "grad: {diagnose_every: 4}\n"


def write_space(tmp: Path, data_dir: Path, token_cache: Path, name: str = "e2e", search: str = SEARCH, *,
                gpus: float | None = None, max_failures: int | None = None, storage: str | None = None,
                shared: bool | None = None, top_k: int | None = 1, **values) -> Path:  # fmt: skip
    """``tmp/<name>.yaml``: the template with ``values`` (steps, num_samples, max_concurrent, grace,
    final_eval, seed, batch, grad); ``gpus``, ``max_failures`` and ``shared`` set tune.gpus_per_trial,
    tune.max_failures and tune.storage_shared when given (else the profile's and the default);
    ``storage`` is tune.storage_path (default ``tmp/results``); ``top_k`` is tune.final_top_k (1: one
    full-dev evaluation at the end, 4 s a search; None: the default, 3)."""
    fields = {"steps": 16, "num_samples": NUM_SAMPLES, "max_concurrent": 2, "grace": 1, "final_eval": "best",
              "seed": 0, "batch": 8, "grad": DIAGNOSE, **values}  # fmt: skip
    given = (("gpus_per_trial", gpus), ("max_failures", max_failures),
             ("storage_shared", None if shared is None else str(shared).lower()), ("final_top_k", top_k))  # fmt: skip
    extra = "".join(f"  {key}: {value}\n" for key, value in given if value is not None)
    path = tmp / f"{name}.yaml"
    path.write_text(SPACE.format(data=data_dir, cache=token_cache, storage=storage or tmp / "results", name=name,
                                 search=search,
                                 extra=extra, **fields))  # fmt: skip
    return path


def cli(*args: str, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True, text=True, check=False,
                          timeout=timeout, env=env, **kw)  # fmt: skip


def trial_rows(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("trial_"))


def rows_of(experiment: Path) -> dict[str, list[dict]]:
    dirs = trial_dirs(experiment) if experiment.is_dir() else []
    return {d.name.removeprefix("trial_"): trial_rows(d) for d in dirs if (d / "result.json").is_file()}


# ---- a search in a subprocess, interrupted and resumed -----------------------------------------------


class Search:
    """The CLI in a subprocess, its output in files (a pipe nobody reads would stall it)."""

    def __init__(self, logs: Path, *args: str):
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.out, self.err = logs / "stdout.txt", logs / "stderr.txt"
        with self.out.open("w") as out, self.err.open("w") as err:
            # its own session: killing it leaves the cluster, which this test process started, alone
            self.proc = subprocess.Popen([sys.executable, "-m", "search.cli", *args], stdout=out, stderr=err,
                                         env=env, start_new_session=True)  # fmt: skip

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.running():
            os.killpg(self.proc.pid, signal.SIGKILL)  # the CLI (the driver) and anything it started
        self.proc.wait()

    def finish(self, timeout: float = 600) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout)
        finally:
            self.kill()
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, self.out.read_text(),
                                           self.err.read_text())  # fmt: skip

    def wait_for(self, ready, timeout: float = 300, every: float = 0.25):
        """Poll ``ready()`` while the search runs: its first truthy value, else a failure with the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            found = ready()
            if found:
                return found
            time.sleep(every)
        self.kill()
        pytest.fail(
            f"the search ended (or {timeout} s passed) before the awaited moment: {self.err.read_text()[-3000:]}"
        )


def finished(trial_dir: Path) -> bool:
    rows = trial_rows(trial_dir) if (trial_dir / "result.json").is_file() else []
    return bool(rows) and bool(rows[-1].get("done"))


def running_with_checkpoint(trial_dir: Path) -> bool:
    return not finished(trial_dir) and any(trial_dir.glob("checkpoint_*"))


def running_past_a_saved_checkpoint(trial_dir: Path) -> bool:
    """Running, with a checkpoint that Tune's saved state already names: Tune saves its state after it
    registers a result's checkpoint and before it handles the next result, so a second result means
    the first checkpoint is in the saved state (a kill right after the first may come before it)."""
    try:
        return running_with_checkpoint(trial_dir) and len(trial_rows(trial_dir)) >= 2
    except ValueError:  # a line being written
        return False


def assert_resumed(experiment: Path, trials: list, done_before: dict[str, list[dict]]) -> None:
    """Finished trials kept as they were; steps run on across the restart; at least one trial
    continued from its checkpoint rather than from step 0."""
    for trial_id, rows in done_before.items():
        assert trial_rows(experiment / f"trial_{trial_id}") == rows, trial_id
    resumed = 0
    for t in trials:
        rows = trial_rows(t.path)
        # every evaluation is EVAL_EVERY steps after the one before
        assert [r["step"] for r in rows] == [EVAL_EVERY * r["training_iteration"] for r in rows], t.trial_id
        resumed += any(r["iterations_since_restore"] == 1 and r["training_iteration"] > 1 for r in rows)
    assert resumed >= 1


# ---- a trial without Tune ----------------------------------------------------------------------------

SMALL = """\
model: {{encoder: tiny}}
data: {{dir: {data}, cache_dir: {cache}, max_train_per_task: 96, max_length: 48}}
heads: {{sst: {{hidden: [16]}}, para: {{hidden: [16]}}, sts: {{hidden: [16]}}}}
sampling: {{batch_size: 8}}
train: {{max_steps: 12, eval_every: 4}}
optim: {{lr: 1.0e-3}}
search:
{search}
tune: {{eval_subset: 32, storage_path: {storage}}}
"""


def space_file(tmp_path: Path, data_dir: Path, token_cache: Path, search: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SMALL.format(data=data_dir, cache=token_cache, storage=tmp_path / "results", search=search))
    return path


class FakeTune:
    """tune.report and tune.get_checkpoint as a test sees them: reports kept, checkpoints copied."""

    def __init__(self, root: Path, checkpoint=None):
        from ray import tune

        self.tune = tune
        self.root, self.checkpoint, self.reports = root, checkpoint, []

    def report(self, metrics, checkpoint=None):
        kept = self.root / f"report_{len(self.reports)}"
        shutil.copytree(checkpoint.path, kept)  # the trainable removes its copy after report()
        self.reports.append((dict(metrics), self.tune.Checkpoint.from_directory(str(kept))))

    def install(self, monkeypatch):
        monkeypatch.setattr(self.tune, "report", self.report)
        monkeypatch.setattr(self.tune, "get_checkpoint", lambda: self.checkpoint)
        return self


# ---- a searcher on a one-dimension space -------------------------------------------------------------


def define_by_run(trial):
    trial.suggest_float("optim.lr", 1e-6, 1e-2, log=True)


def searcher(cls=None, **kw):
    """A PruningOptunaSearch (or ``cls``, Ray's OptunaSearch say) with TPE seeded 0 and ``max_t`` MAX_T."""
    import optuna

    from search.engine.searcher import PruningOptunaSearch

    cls = cls or PruningOptunaSearch
    kw = {"max_t": MAX_T, **kw} if cls is PruningOptunaSearch else kw
    return cls(space=define_by_run, metric="overall", mode="max", sampler=optuna.samplers.TPESampler(seed=0), **kw)


# ---- a few hand-written rows per task and the tiny random encoder (heads and losses tests) ----

SST = [
    (" The Rock is destined to be the 21st Century 's new `` Conan '' .", 3),
    (" A gorgeously elaborate continuation of `` The Lord of the Rings '' trilogy .", 4),
    (" You 'd think by now America would have had enough of plucky British eccentrics .", 2),
    (" It 's a lousy one at that .", 0),
    (" The plot is nothing but boilerplate clichés from start to finish .", 1),
]
PARA = [
    ("How can I master myself in geometry?", "How can I master geometry for the CAT-14?", 0),
    ("Who is the best prime minister India has ever had?", "Who is the best prime minister of india till now?", 1),
    ("Can deleted pictures on Instagram be recovered?", "How do I delete a picture on Instagram?", 0),
    ("What qualifications do I need to get a job in CERN?", "What qualifications do I need to work for CERN?", 1),
    ("What is the best way to learn French?", "How do I learn French quickly?", 1),
    ("Why is the sky blue?", "What is the capital of Peru?", 0),
]
STS = [
    ("13 killed in Afgan terror attack", "6 killed in Afghan capital mosque attack", 2.0),
    ("China to resume US investment talks", "China and Taiwan hold historic talks", 0.8),
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A yellow vested person is doing road work.", "A person is doing very well on their skateboard.", 0.2),
    ("A woman is slicing an onion.", "A woman is cutting an onion.", 4.2),
    ("The cat sat on the mat.", "Stocks fell sharply on Monday.", 0.0),
]
HIDDEN = {"linear": ()}  # every other head gets one hidden layer of 16


@functools.cache
def _tiny():
    return load_encoder("tiny", seed=0)


def tokenizer():
    return _tiny()[1]


def fresh_encoder():
    return copy.deepcopy(_tiny()[0])


def spec(kind: str, **kw) -> HeadSpec:
    return HeadSpec(kind, hidden=HIDDEN.get(kind, (16,)), **kw)


def make_batch(task: str, encoding: str) -> dict:
    """The data layer's batch format for ``task`` built as ``encoding`` says."""
    tok = tokenizer()
    if task == "sst":
        text, labels = zip(*SST)
        return {**tok(list(text), padding=True, return_tensors="pt"), "labels": torch.tensor(labels)}
    a, b, labels = zip(*(PARA if task == "para" else STS))
    y = torch.tensor(labels, dtype=torch.float)
    if encoding == "siamese":
        side = [dict(tok(list(s), padding=True, return_tensors="pt")) for s in (a, b)]
        return {"a": side[0], "b": side[1], "labels": y}
    return {**tok(list(a), list(b), padding=True, return_tensors="pt"), "labels": y}




# ---- tiny checkpoints on the fixture data, and a search and ensemble made of them (predict, cards) ----


def fixture_data(folder: Path) -> Path:
    """The fixture course files (dev and test, with malformed rows) in ``folder``, plus the training
    files a data folder must name (empty: nothing here trains)."""
    from mtbert.data.course import REQUIRED_FILES, TASK_FILES

    shutil.copytree(FIXTURES / "course", folder)
    for task, split in REQUIRED_FILES:
        (folder / TASK_FILES[task][split]).touch(exist_ok=True)
    return folder


def tiny_checkpoint(folder: Path, data_dir: Path, seed: int = 0, final_eval: bool = True) -> Path:
    """A random tiny-encoder checkpoint (``seed``) and, with ``final_eval``, its final evaluation's
    prediction files, as ``mtbert-train`` writes them, in ``folder/predictions``."""
    from mtbert.config import RunConfig
    from mtbert.model.multitask import build_model
    from mtbert.predict import final_evaluation
    from mtbert.train.checkpoint import save_checkpoint

    config = RunConfig().with_overrides({"model.encoder": "tiny", "heads.sst.hidden": [16], "heads.para.hidden": [16],
                                         "heads.sts.hidden": [16], "data.dir": str(data_dir), "train.seed": seed,
                                         "data.cache_dir": str(data_dir / ".tokens"), "data.max_eval_per_task": 4})  # fmt: skip
    encoder, tok = load_encoder("tiny", seed=seed)
    torch.manual_seed(seed)
    model = build_model(config, encoder)
    metrics = {"overall": 0.5 - 0.1 * seed, "sst_acc": 0.4, "para_acc": 0.6, "para_f1": 0.2, "sts_pearson": 0.1,
               "sts_spearman": 0.1, "step": 4}  # fmt: skip
    checkpoint = save_checkpoint(folder, model, tok, config, metrics)
    if final_eval:
        final_evaluation(checkpoint, config, tok, torch.device("cpu"))
    return checkpoint


def tiny_search(folder: Path, data_dir: Path, seeds=(0, 1)):
    """A finished search folder made by hand: one trial per seed, each with a tiny checkpoint (best
    first), and the ``SearchResults`` that ``load_results`` would read from Ray Tune's files."""
    from search.launch import Launch
    from search.results import SearchResults, TrialRecord

    experiment = folder / "results" / "tiny"
    space = ("model: {encoder: tiny}\nsearch:\n  optim.lr: {loguniform: [1.0e-5, 1.0e-3]}\n"
             f"tune: {{num_samples: {len(seeds)}, eval_subset: 4}}\n")  # fmt: skip
    Launch("tiny.yaml", max_t=2).save(experiment, space)
    trials = []
    for i, seed in enumerate(seeds):
        checkpoint = tiny_checkpoint(experiment / f"trial_t{i}" / "checkpoint_000001", data_dir, seed, final_eval=False)
        best = {"overall": 0.6 - 0.1 * i, "training_iteration": 2, "step": 4}
        trials.append(TrialRecord(f"t{i}", "TERMINATED", 2, {"optim.lr": 1e-4 * (i + 1)}, best, best, checkpoint,
                                  checkpoint.parent, "COMPLETE"))  # fmt: skip
    return experiment, SearchResults(experiment.resolve(), "overall", "max", trials)


def tiny_ensemble(folder: Path, data_dir: Path, monkeypatch, args=()) -> Path:
    """``mtbert-search ensemble`` (the command's own code) on a ``tiny_search``; returns its OUT. With
    these two seeds, the selection weights the members 2:1 for sts."""
    from search.cli import main

    experiment, results = tiny_search(folder, data_dir, seeds=(0, 3))
    monkeypatch.setattr("search.ensemble.load_results", lambda _: results)
    monkeypatch.setenv("MTBERT_DATA", str(data_dir))
    out = folder / "ens"
    assert main(["ensemble", str(experiment), "--top-k", "2", "--out", str(out), *args]) == 0
    return out


# ---- trials without training: a function of the sampled values, fed as Tune feeds a searcher --------


def play_trials(searcher, space, score, n: int, max_t: int = MAX_T, stop_below_median: bool = True) -> list[dict]:
    """``n`` trials through ``searcher`` one after another, each reporting ``score(values)`` (its
    dotted keys' real values) minus 0.1 per evaluation short of ``max_t``, as a learning curve that
    rises to it. With ``stop_below_median``, a trial below the median of the trials that reached its
    rung (evaluations 1 and 2) is stopped there, as ASHA with reduction factor 2 stops it: Tune then
    calls ``on_trial_complete`` with that result. Returns ``{"params", "values", "score",
    "proposed_by"}`` per trial, in order."""
    rungs: dict[int, list[float]] = {}
    out = []
    for i in range(n):
        trial_id = f"t{i}"
        params = searcher.suggest(trial_id)
        values = space.decode(params)
        final = score(values)
        for step in range(1, max_t + 1):
            value = final - 0.1 * (max_t - step)
            seen = rungs.setdefault(step, [])
            seen.append(value)
            stopped = stop_below_median and step in (1, 2) and len(seen) > 1 and value < sorted(seen)[len(seen) // 2]
            if stopped or step == max_t:
                searcher.on_trial_complete(trial_id, {"training_iteration": step, "overall": value})
                break
            searcher.on_trial_result(trial_id, {"training_iteration": step, "overall": value})
        proposed = searcher.optuna_trial(trial_id).user_attrs.get("proposed_by")
        out.append({"params": params, "values": values, "score": final, "proposed_by": proposed})
    return out


# ---- dev files with planted labels (data.dev_holdout: nothing a run or search chooses reads the report half) ----

LABEL_COLUMN = {"sst": "sentiment", "quora": "is_duplicate", "sts": "similarity"}
DEV_ROWS = 300  # of each dev file in the planted data folders: enough rows for both halves, quick to tokenise


def planted_dev(data_dir: Path, folder: Path, half: str) -> Path:
    """A data folder with the course's training files and the first ``DEV_ROWS`` rows of each dev
    file, the labels of the rows in ``half`` ("report", "selection" or "none") turned around: SST
    4 - y, Quora 1 - y, STS 5 - y. Every turned label would change the evaluations that read it."""
    from mtbert.data.course import TASK_FILES
    from mtbert.data.holdout import in_report_half

    folder.mkdir()
    for path in data_dir.iterdir():
        if path.is_file() and "-dev" not in path.name:
            (folder / path.name).symlink_to(path)
    for task in ("sst", "quora", "sts"):
        name = TASK_FILES[task]["dev"]
        with open(data_dir / name, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        header, body = rows[0], rows[1 : DEV_ROWS + 1]
        col, top = header.index(LABEL_COLUMN[task]), {"sst": 4, "quora": 1, "sts": 5}[task]
        for row in body:
            in_report = in_report_half(row[header.index("id")], 0.5, 0)
            if half != "none" and in_report == (half == "report"):
                value = top - float(row[col])
                row[col] = str(int(value)) if task == "sst" else str(value)
        with open(folder / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows([header, *body])
    return folder


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster():
    """A ``ray.cluster_utils.Cluster``: a head with no CPUs for trials and two worker nodes of one CPU
    each, every node started with this process's environment; the caller shuts it down."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            c.add_node(num_cpus=1)
        c.wait_for_nodes(timeout=120)
    except BaseException:
        c.shutdown()
        raise
    return c
