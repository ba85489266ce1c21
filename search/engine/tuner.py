"""The search: Optuna's TPE proposes run configs, ASHA stops weak trials early, Ray Tune runs them.

Everything here that touches Ray (with ``search.engine.trainable``) is Ray-facing; the command line,
``search.export`` and ``search.status`` work with the plain records this module returns.

A defect of Ray's ``OptunaSearch`` fixed here: it tells Optuna that a trial ASHA stopped early is
COMPLETE, with the score of its last (low-budget) evaluation, so TPE learns from early scores as if
they were final. ``PruningOptunaSearch`` tells Optuna such trials are PRUNED, with every evaluation
recorded as an intermediate value, which is how Optuna's own pruners leave them.

Layout of a search's folder, ``<tune.storage_path>/<tune.name>``:

    space.yaml, search.json       the space file as given and how it was loaded (for ``resume``)
    trial_<id>/                   one per trial: result.json, progress.csv, params.json, the
                                  TensorBoard event files, checkpoint_<n>/ (mtbert checkpoints)
    summary.json                  the best trial, written when the search ends
    search.lock                   while a command writes here: which one (``search.lock``)
    experiment_state-*.json, tuner.pkl, searcher-state-*.pkl, ...   Ray Tune's and Optuna's state

Ctrl-C while Tune runs stops a search the way Tune's own stop request does (its trials stopped, the
state saved for ``resume``), then raises ``SearchInterrupted``; a second Ctrl-C, or one before Tune
runs, stops at once (``KeyboardInterrupt``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import json
import logging
import math
import os
import pickle
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback
from ray.tune.search.optuna import OptunaSearch

from mtbert.evaluate import strict_json
from search.lock import LOCK_FILE, LockHeld, SearchLock
from search.engine.retention import KeepRestorable, drop_kept, restore_kept
from search.engine.tensorboard import TrialBoard
from search.engine.trainable import (
    COMPLETE_KEY,
    STOP_KEY,
    TrialSetup,
    fixed_settings,
    prepare_shared,
    run_trial,
    share,
    space_signatures,
)

SPACE_COPY = "space.yaml"
SEARCH_FILE = "search.json"
SUMMARY_FILE = "summary.json"
TRAINING_ITERATION = "training_iteration"
PROGRESS_METRICS = ("overall", "sst_acc", "para_acc", "sts_pearson", "step", "train_samples_per_s")
SCORE_KEYS = ("sst_acc", "para_acc", "para_f1", "sts_pearson", "sts_spearman", "overall")
# Keys Tune adds to every result; the rest came from the trainable.
TUNE_KEYS = frozenset({
    "training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "timesteps_total", "episodes_total", "timestamp", "date", "hostname", "node_ip",
    "pid", "config", "done", "trial_id", "experiment_id", "experiment_tag", "checkpoint_dir_name",
    "should_checkpoint", "__duplicate__",
})  # fmt: skip


# the first line of an exception at the end of a traceback: "ray.exceptions.RayTaskError(RuntimeError): ..."
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)(\([\w.]+\))?: ")


class SearchError(ValueError):
    """Bad input to a search command (a folder that holds no search, say); the message says why."""


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C ended a search after its trials were stopped and its state saved: ``resume`` goes on."""

    def __init__(self, experiment: Path):
        super().__init__(str(experiment))
        self.experiment = experiment


# ---- Optuna: pruned trials are PRUNED ---------------------------------------------------------------


class PruningOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna a trial stopped before its full budget is PRUNED.

    Every result is an intermediate value of the Optuna trial (``trial.report(value, step)`` with
    the training iteration as step, as ``OptunaSearch`` does). When a trial ends it is COMPLETE if
    it ran its whole budget: the trainable flagged its last evaluation (``trial_complete``), it
    reached ``max_t``, or it ended by itself (the trainer's patience), which Tune shows by passing
    the last result a second time when a function trainable returns. Otherwise it was stopped
    (by ASHA, or the time budget) and is PRUNED, and Optuna takes its last intermediate value as
    its value; TPE then ranks it below completed trials, by how far it got. Either way the result
    the trial was stopped on, which Tune does not pass to ``on_trial_result``, is recorded first,
    so the intermediate values are every evaluation the trial reported. A trial that ended itself
    on a non-finite loss (``stop_reason``) is PRUNED too, its NaN the last intermediate value.
    """

    def __init__(self, *args: Any, max_t: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._reported: dict[str, int] = {}  # trial id -> last step told to Optuna
        self._repeated: set[str] = set()  # trials whose last result came a second time: they returned

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._unknown(trial_id):
            return
        step = result.get(TRAINING_ITERATION)
        if step is not None and self._reported.get(trial_id) == step:
            self._repeated.add(trial_id)  # Tune's repeat of the last result: the trainable returned
            return
        super().on_trial_result(trial_id, result)
        if trial_id not in self._completed_trials:
            self._reported[trial_id] = step

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if self._unknown(trial_id):
            return
        if (error or not result or trial_id in self._completed_trials
                or isinstance(self.metric, list) or result.get(self.metric) is None):  # fmt: skip
            return super().on_trial_complete(trial_id, result=result, error=error)
        step = result.get(TRAINING_ITERATION, 0)
        finished = not result.get(STOP_KEY) and (
            bool(result.get(COMPLETE_KEY)) or (self._max_t is not None and step >= self._max_t)
            or trial_id in self._repeated
        )  # fmt: skip
        ot_trial = self._ot_trials[trial_id]
        if self._reported.get(trial_id, 0) < step:  # the result the trial was stopped on
            ot_trial.report(result[self.metric], step)
            self._reported[trial_id] = step
        if finished:
            return super().on_trial_complete(trial_id, result=result, error=error)
        self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def _unknown(self, trial_id: str) -> bool:
        """A trial Optuna never proposed, in this searcher's state. Tune saves the trials' state first
        and the searcher's a moment later, so a search killed in between resumes a trial the saved
        searcher has not heard of (Ray's ``OptunaSearch`` then fails with a KeyError). It runs on;
        Optuna does not learn from it."""
        if trial_id in self._ot_trials:
            return False
        ignored = self.__dict__.setdefault("_ignored", set())  # not in the state of searchers saved before
        if trial_id not in ignored:
            ignored.add(trial_id)
            logging.getLogger(__name__).warning(
                "trial %s is not in the Optuna study saved with the search (it was stopped between saving its "
                "trials and its study); the trial runs, but Optuna does not learn from it", trial_id)  # fmt: skip
        return True

    def study(self) -> Any:
        return self._ot_study

    def optuna_trial(self, trial_id: str) -> Any:
        """The Optuna trial (a FrozenTrial) behind a Tune trial id, or None."""
        trial = self._ot_trials.get(trial_id)
        if trial is None:
            return None
        return self._ot_study.trials[trial.number]


def load_searcher(experiment: str | Path) -> PruningOptunaSearch | None:
    """The searcher's state as Tune last saved it in the search folder (None if there is none).
    The file is the search's own state (Tune pickles it), not user data."""
    searcher = PruningOptunaSearch()
    try:
        searcher.restore_from_dir(str(experiment))
    except (RuntimeError, OSError, EOFError, ValueError, AttributeError, ImportError, pickle.UnpicklingError):
        return None  # none saved yet, or a file cut short by a killed search: no Optuna states to show
    return searcher


# ---- TensorBoard and per-trial files -------------------------------------------------------------


class TensorBoardCallback(TBXLoggerCallback):
    """Writes each trial's TensorBoard run (``search.engine.tensorboard``) into the trial's folder under
    the storage path, as results arrive, so ``tensorboard --logdir <storage_path>/<name>`` shows the
    running search. A subclass of Tune's TBXLoggerCallback only so that Tune does not add its own
    (a second set of ``ray/tune/*`` tags and hparams in the same folders); tensorboardX is not used."""

    def __init__(self, space: Any, metric: str):
        self._space, self._metric = space, metric
        self._boards: dict[str, TrialBoard] = {}

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the run config
        return {"_space": self._space, "_metric": self._metric, "_boards": {}}

    def log_trial_start(self, trial: Any) -> None:
        if trial.trial_id in self._boards:
            self._boards.pop(trial.trial_id).close()
        directory = trial.path if trial.storage.storage_filesystem.type_name == "local" else trial.local_path
        try:
            hparams = self._space.decode(trial.config)
        except ValueError:
            hparams = dict(trial.config)
        self._boards[trial.trial_id] = TrialBoard(directory, hparams, self._metric)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial.trial_id not in self._boards:
            self.log_trial_start(trial)
        self._boards[trial.trial_id].log({k: v for k, v in result.items() if k not in TUNE_KEYS})

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        board = self._boards.pop(trial.trial_id, None)
        if board:
            board.close()


class TrialStarts(Callback):
    """The wall-clock time each trial started, as Tune's controller saw it (for benchmarks)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.time())


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


# ---- running and resuming ------------------------------------------------------------------------


@dataclass
class Launch:
    """How a search was started: enough to load its space again for ``resume``."""

    space_file: str  # as given
    overrides: dict[str, str] = field(default_factory=dict)
    profile: str | None = None
    smoke: bool = False
    metric: str = "overall"
    mode: str = "max"
    max_t: int = 1
    fixed: dict[str, Any] = field(default_factory=dict)

    def save(self, experiment: Path, space_text: str) -> None:
        experiment.mkdir(parents=True, exist_ok=True)
        (experiment / SPACE_COPY).write_text(space_text)
        (experiment / SEARCH_FILE).write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def read(cls, experiment: Path) -> Launch:
        path = experiment / SEARCH_FILE
        if not path.is_file() or not (experiment / SPACE_COPY).is_file():
            raise SearchError(f"{experiment} holds no mtbert search: {SEARCH_FILE} and {SPACE_COPY} are missing "
                              "(they are written when a search starts)")  # fmt: skip
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise SearchError(f"{path} is not a search description ({e})") from None


def experiment_dir(space: Any) -> Path:
    return Path(space.tune.storage_path) / space.tune.name


def max_t(space: Any) -> int:
    return space.tune.max_t or space.max_evaluations()


def check_new(experiment: Path) -> None:
    """A new search must not write into an earlier one's folder (its own lock file aside)."""
    if experiment.exists() and any(p.name != LOCK_FILE for p in experiment.iterdir()):
        raise SearchError(f"{experiment} already holds a search; continue it with 'mtbert-search resume {experiment}', "
                          "or choose another tune.name or tune.storage_path")  # fmt: skip


def free_name(space: Any) -> str | None:
    """A folder name for a new search next to an earlier one with the same name (``<name>-2``, ...),
    or None when ``tune.name`` is free: running a README command twice starts a second search
    instead of failing or mixing trials into the first one."""
    storage, name = Path(space.tune.storage_path), space.tune.name
    taken = storage / name
    if not (taken.exists() and any(taken.iterdir())):
        return None
    k = 2
    while (storage / f"{name}-{k}").exists():
        k += 1
    return f"{name}-{k}"


def claim_folder(space: Any, command: str | None = None) -> SearchLock:
    """The lock of a new folder for ``space``'s search: ``tune.name``, or the first free
    ``<name>-<k>`` (``free_name``) when that holds a search or another new search is taking it;
    ``space.tune.name`` is set to the folder's name. Two searches started at once with one name
    each get a folder of their own: whichever takes a folder's lock first owns it."""
    storage = Path(space.tune.storage_path)
    while True:
        name = free_name(space) or space.tune.name
        folder = storage / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = SearchLock.acquire(folder, command)
        except LockHeld:
            continue  # another search holds it; its lock file makes free_name skip the folder now
        except OSError as e:
            raise SearchError(f"cannot write the search's folder {folder} (tune.storage_path "
                              f"{str(storage)!r}): {e.strerror or e}") from None  # fmt: skip
        try:
            check_new(folder)  # a search that took the lock and wrote its files before we locked
        except SearchError:
            lock.release()
            continue
        space.tune = dataclasses.replace(space.tune, name=name)
        return lock


def lock_search(experiment: Path, command: str | None = None, read_only_ok: bool = False) -> Any:
    """The lock of an existing search folder (a context manager that releases it), for a command
    that writes into it; ``SearchError`` naming the holder when another command has it. With
    ``read_only_ok``, for a command that only needs the search to stay as it is: a folder nobody
    may write into needs no lock."""
    try:
        return SearchLock.acquire(experiment, command)
    except LockHeld as e:
        raise SearchError(str(e)) from None
    except OSError as e:
        if read_only_ok and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return contextlib.nullcontext()
        raise SearchError(f"cannot write to {experiment}: {e.strerror or e}") from None


def check_address(address: str | None) -> None:
    """A cluster address given as ``host:port`` (or ``ray://host:port``) must take a TCP connection
    within 5 s: ``ray.init`` would otherwise retry for minutes. ``auto`` and no address pass."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local": Ray finds the cluster itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise SearchError(f"--address {address}: no Ray cluster answers there ({e.strerror or e}); start one with "
                          "'ray start --head' or 'ray up cluster.yaml', or leave --address out for a local Ray") from None


def check_local_gpus(space: Any, address: str | None) -> None:
    """A local Ray has only this machine's GPUs: trials that each ask for a GPU on a machine with none
    would wait for one forever. (A cluster may add GPU nodes as trials wait: not checked there.)"""
    if address or os.environ.get("RAY_ADDRESS") or not space.tune.gpus_per_trial:
        return
    import torch

    if not torch.cuda.is_available():
        raise SearchError(f"tune.gpus_per_trial is {space.tune.gpus_per_trial}, but this machine has no GPU that "
                          "torch can use, so the trials would wait for one forever; set tune.gpus_per_trial: 0 "
                          "(or --profile cpu), or give --address of a cluster with GPUs")  # fmt: skip


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local Ray; returns whether
    this process started Ray (and so shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    # Ray's INFO lines (a line per checkpoint from every trial) would bury the progress table.
    quiet = ray.LoggingConfig(log_level="WARNING")
    # Trials share the cores with Ray's own processes (and each other): OpenMP threads that spin
    # while they wait for work then starve the thread they wait for. Measured on a busy 2-core
    # machine, a 2-thread step of the tiny encoder took 2.5 s spinning and 0.03 s passive.
    env = {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, log_to_driver=True, logging_config=quiet, runtime_env=env)
        except ConnectionError as e:
            raise SearchError(f"--address {address}: no Ray cluster there ({str(e).splitlines()[0]})") from None
    else:  # "local": never attach to another user's cluster on this machine by accident
        # A local Ray serves this machine alone, so its servers listen on 127.0.0.1 only. Ray binds
        # all interfaces unless its node address is the loopback one, and Ray 2.60 swaps a loopback
        # _node_ip_address for the machine's routable address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
        # is off, which it reads once, at import: hence the constant as well. Ray's processes start
        # with the variable and keep it; this process gets both back once Ray is up.
        from ray._private import ray_constants

        variable = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
        saved = os.environ.get(variable), ray_constants.ENABLE_RAY_CLUSTER
        os.environ[variable], ray_constants.ENABLE_RAY_CLUSTER = "0", False
        try:
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=True,
                     logging_config=quiet, runtime_env=env)  # fmt: skip
        finally:
            if saved[0] is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = saved[0]
            ray_constants.ENABLE_RAY_CLUSTER = saved[1]
    # With keep_checkpoints, Tune snapshots the experiment state at every checkpoint, on purpose
    # (the snapshot must know which checkpoint files exist), and warns each time trials are short.
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.ERROR)
    return True


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """``connect(address)`` for the block; Ray is shut down after it if the block started it."""
    started = connect(address)
    try:
        yield
    finally:
        if started:
            _shutdown()


def read_data(setup: TrialSetup, log: Any = print) -> dict[str, Any]:
    """Read and tokenise the data of every signature the space can produce, once, before Ray starts
    or anything is written: a data file that cannot be used is a ``DataError`` here, not in every trial."""
    signatures, complete = space_signatures(setup)
    data = prepare_shared(signatures.values())
    for row in sorted({str(r) for d in data.values() for r in d.malformed}):
        log(f"malformed row skipped: {row}")
    log(f"data: {len(data)} tokenised set(s) shared with the trials"
        + ("" if complete else "; trials whose data settings were not listed tokenise their own"))  # fmt: skip
    return data


def search_setup(space: Any) -> TrialSetup:
    """What every trial of a new search shares: the space and its settings fixed for this search."""
    return TrialSetup(space, fixed_settings(space))


def build_trainable(setup: TrialSetup, refs: dict[str, Any], fn: Any = run_trial, **kwargs: Any) -> Any:
    """``fn`` (``run_trial``, or a function that calls it) as a Tune trainable with the space's
    resources per trial; ``kwargs`` go to ``fn`` with ``setup`` and ``data``."""
    from ray import tune

    t = setup.space.tune
    resources = {"cpu": t.cpus_per_trial, "gpu": t.gpus_per_trial or 0}
    trainable = tune.with_resources(tune.with_parameters(fn, setup=setup, data=refs, **kwargs), resources)
    trainable._progress_metrics = PROGRESS_METRICS  # the columns of Tune's progress table
    return trainable


def run_config(space: Any, name: str, storage_path: str | Path, callbacks: tuple = ()) -> Any:
    """Tune's RunConfig for the trials of ``space``: checkpoints kept by the search metric (and the
    one a resume needs, ``KeepRestorable``), retries, TensorBoard."""
    from ray import tune

    t = space.tune
    return tune.RunConfig(
        name=name, storage_path=str(storage_path), verbose=1,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=t.keep_checkpoints, checkpoint_score_attribute=t.metric, checkpoint_score_order=t.mode,
        ),
        failure_config=tune.FailureConfig(max_failures=t.max_failures),
        callbacks=[TensorBoardCallback(space, t.metric), KeepRestorable(), *callbacks],
    )  # fmt: skip


def restore_tuner(experiment: Path, trainable: Any, log: Any = print) -> Any:
    """The Tuner of an interrupted Tune run in ``experiment``: unfinished trials continue from their
    last checkpoints (put back from the kept copies where Tune had deleted them), errored ones restart."""
    from ray import tune

    for path in restore_kept(experiment):
        log(f"{path.parent.name}: its latest checkpoint was deleted after the search's state was saved; "
            f"continuing from the copy kept for this ({path.name})")  # fmt: skip
    return tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True, restart_errored=True)


def build_tuner(space: Any, setup: TrialSetup, refs: dict[str, Any], callbacks: tuple = ()) -> Any:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    t = space.tune
    budget = max_t(space)
    searcher = PruningOptunaSearch(
        space=space.define_by_run, metric=t.metric, mode=t.mode, sampler=optuna.samplers.TPESampler(seed=t.seed),
        max_t=budget,
    )  # fmt: skip
    scheduler = ASHAScheduler(
        time_attr=TRAINING_ITERATION, max_t=budget, grace_period=min(t.grace_period, budget),
        reduction_factor=t.reduction_factor, metric=t.metric, mode=t.mode,
    )  # fmt: skip
    return tune.Tuner(
        build_trainable(setup, refs),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=t.max_concurrent) if t.max_concurrent else searcher,
            scheduler=scheduler,
            num_samples=t.num_samples, time_budget_s=t.time_budget_s,
            # the worker process, its imports and the shared data stay between trials
            reuse_actors=True, trial_dirname_creator=trial_dirname,
        ),
        run_config=run_config(space, t.name, t.storage_path, callbacks),
    )  # fmt: skip


# Tune's own stop request: ``tune.run`` handles SIGUSR1 as it handles a first SIGINT (stop the trials,
# save the state, return), and installs its SIGINT handler unless this variable is 1.
_TUNE_SIGINT_VAR = "TUNE_DISABLE_SIGINT_HANDLER"
# Tune's lines about a stop request; the command says what to do instead (``mtbert-search resume``).
_TUNE_STOP_LINES = ("Stop signal received", "Experiment has been interrupted")


class _DropStopLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TUNE_STOP_LINES)


class CtrlC:
    """What ``stop_on_sigint`` saw: ``requested`` (Ctrl-C was pressed), ``graceful`` (Tune was asked
    to stop its trials and save the search's state)."""

    def __init__(self) -> None:
        self.requested = self.graceful = False

    def check(self, experiment: Path) -> None:
        """Raise what a Ctrl-C seen so far calls for. Python runs a signal handler wherever the main
        thread is, and drops its exception in a few places (a fork's callbacks, which Ray's many
        process starts run): the flag is what is certain."""
        if self.graceful:
            raise SearchInterrupted(experiment)
        if self.requested:
            raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_sigint(log: Any = print) -> Iterator[CtrlC]:
    """For a search's session: the first Ctrl-C (SIGINT) during ``Tuner.fit()`` makes Tune stop
    its trials, save the search's state and return (``graceful``); a second Ctrl-C, or one before
    Tune runs, raises KeyboardInterrupt at once. Tune's own handler would do the first part too,
    but leaves no way to tell that the run was interrupted rather than finished, and tells the user
    to call ``Tuner.restore``. Call ``check`` after each step that could have swallowed the exception."""
    seen = CtrlC()
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield seen
        return
    usr1_before = signal.getsignal(signal.SIGUSR1)

    def on_sigint(signum: int, frame: Any) -> None:
        tune_stop = signal.getsignal(signal.SIGUSR1)
        first, seen.requested = not seen.requested, True
        if not first or not callable(tune_stop) or tune_stop is usr1_before:
            raise KeyboardInterrupt
        seen.graceful = True
        log("mtbert-search: Ctrl-C: stopping the trials and saving the search's state (Ctrl-C again to stop at "
            "once; resume then goes on from the last state saved)")  # fmt: skip
        tune_stop(signal.SIGUSR1, frame)

    sigint_before = signal.signal(signal.SIGINT, on_sigint)
    variable = os.environ.get(_TUNE_SIGINT_VAR)
    os.environ[_TUNE_SIGINT_VAR] = "1"
    tune_log, quiet = logging.getLogger("ray.tune.tune"), _DropStopLines()
    tune_log.addFilter(quiet)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if sigint_before is None else sigint_before)
        if usr1_before is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGUSR1, usr1_before)
        if variable is None:
            os.environ.pop(_TUNE_SIGINT_VAR, None)
        else:
            os.environ[_TUNE_SIGINT_VAR] = variable
        tune_log.removeFilter(quiet)


def fit(tuner: Any, ctrl_c: CtrlC, experiment: Path) -> None:
    """``tuner.fit()`` unless Ctrl-C came first; ``SearchInterrupted`` when Ctrl-C stopped it."""
    usr1 = signal.getsignal(signal.SIGUSR1)
    ctrl_c.check(experiment)
    try:
        tuner.fit()
    finally:  # Tune leaves its stop handler behind: a later Ctrl-C must not go to a run that has ended
        if usr1 is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, usr1)
    ctrl_c.check(experiment)


def run_search(space: Any, launch: Launch, space_text: str, setup: TrialSetup, data: dict[str, Any], *,
               address: str | None = None, log: Any = print) -> Path:  # fmt: skip
    """Run a search to the end; returns its folder. ``setup`` and ``data`` come from ``search_setup``
    and ``read_data``, before the caller took the folder's lock (``claim_folder``)."""
    experiment = experiment_dir(space)
    check_new(experiment)
    launch.fixed, launch.metric, launch.mode, launch.max_t = (
        setup.fixed,
        space.tune.metric,
        space.tune.mode,
        max_t(space),
    )
    launch.save(experiment, space_text)
    with stop_on_sigint(log) as ctrl_c:
        with ray_session(address):
            fit(build_tuner(space, setup, share(data)), ctrl_c, experiment)
        ctrl_c.check(experiment)
    drop_kept(experiment)  # only when it ended: an interrupted search's resume may need the kept copies
    return experiment


def resume_search(experiment: Path, space: Any, launch: Launch, *, address: str | None = None,
                  log: Any = print) -> Path:  # fmt: skip
    """Continue an interrupted search: unfinished trials from their last checkpoints, errored ones
    again from the start, the Optuna study where it was, then new trials up to ``num_samples``. A
    search stopped before Tune saved any state starts from the beginning, in the same folder. The
    caller holds the folder's lock (``lock_search``)."""
    from ray import tune

    setup = TrialSetup(space, launch.fixed or fixed_settings(space))
    saved = any(experiment.glob("experiment_state-*.json"))
    if saved and not tune.Tuner.can_restore(str(experiment)):
        raise SearchError(f"{experiment} holds Ray Tune's trial states but not its tuner.pkl; it cannot be resumed")
    data = read_data(setup, log)  # a data file that moved or broke since: an error before Ray starts
    with stop_on_sigint(log) as ctrl_c:
        with ray_session(address):
            refs = share(data)
            if saved:
                tuner = restore_tuner(experiment, build_trainable(setup, refs), log)
            else:
                log(f"{experiment}: the search was stopped before Tune saved its state; starting it from the "
                    "beginning")  # fmt: skip
                here = copy.copy(space)
                here.tune = dataclasses.replace(space.tune, storage_path=str(experiment.parent), name=experiment.name)
                tuner = build_tuner(here, setup, refs)
            fit(tuner, ctrl_c, experiment)
        ctrl_c.check(experiment)
    drop_kept(experiment)
    return experiment


def _shutdown() -> None:
    import ray

    ray.shutdown()


# ---- reading a search's results ------------------------------------------------------------------


@dataclass
class TrialRecord:
    trial_id: str
    status: str  # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    iterations: int
    params: dict[str, Any]  # as sampled (the Optuna params, the trial's Tune config)
    best: dict[str, Any] | None  # the result with the best metric
    last: dict[str, Any] | None
    checkpoint: Path | None  # the checkpoint of the best result
    path: Path
    state: str | None = None  # Optuna's: COMPLETE, PRUNED, FAIL, RUNNING
    error: str | None = None  # the path of Tune's error.txt, if the trial ever failed
    stop_reason: str | None = None  # why it ended itself before its budget (a non-finite loss)
    failures: int = 0  # the times it failed (an exception, or its node was lost), retries included

    def error_message(self) -> str | None:
        """The exception its last failure raised, in a line or a few (None if it never failed)."""
        if not self.error or not Path(self.error).is_file():
            return None
        return error_message(Path(self.error).read_text())


@dataclass
class SearchResults:
    experiment: Path
    metric: str
    mode: str
    trials: list[TrialRecord]

    def ranked(self) -> list[TrialRecord]:
        """Trials with a checkpoint, best first by their best result."""
        scored = [t for t in self.trials if t.best is not None and t.checkpoint is not None
                  and t.best.get(self.metric) is not None]  # fmt: skip
        sign = -1 if self.mode == "max" else 1
        return sorted(scored, key=lambda t: (sign * t.best[self.metric], t.trial_id))


def load_results(experiment: str | Path) -> SearchResults:
    """The trials of a search folder, from Tune's files (``ExperimentAnalysis``) and the Optuna study."""
    from ray.tune import ExperimentAnalysis

    experiment = Path(experiment).expanduser().resolve()
    if not experiment.is_dir():
        raise SearchError(f"{experiment} is not a folder; give a search folder, <tune.storage_path>/<tune.name>")
    launch = Launch.read(experiment)
    try:
        analysis = ExperimentAnalysis(str(experiment), default_metric=launch.metric, default_mode=launch.mode)
    except ValueError as e:
        raise SearchError(f"{experiment} has no Ray Tune results yet: {str(e).splitlines()[0]}") from None
    searcher = load_searcher(experiment)
    frames = analysis.trial_dataframes
    trials = []
    for trial in analysis.trials:
        df = frames.get(trial.trial_id)
        rows = df.to_dict("records") if df is not None and len(df) else []
        rows = [r for r in rows if r.get(launch.metric) is not None]
        # a trial that stopped on a non-finite loss reports NaN last: its best is an earlier evaluation
        scored = [r for r in rows if _finite(r[launch.metric])]
        best = None
        if scored:
            pick = max if launch.mode == "max" else min
            best = pick(scored, key=lambda r: r[launch.metric])
        checkpoint = analysis.get_best_checkpoint(trial, launch.metric, launch.mode) if scored else None
        stop = rows[-1].get(STOP_KEY) if rows else None
        state = None
        if searcher is not None:
            ot = searcher.optuna_trial(trial.trial_id)
            state = ot.state.name if ot is not None else None
        trials.append(TrialRecord(
            trial_id=trial.trial_id, status=trial.status, iterations=int(rows[-1][TRAINING_ITERATION]) if rows else 0,
            params=dict(trial.config), best=best, last=rows[-1] if rows else None,
            checkpoint=Path(checkpoint.path) if checkpoint is not None else None, path=Path(trial.path), state=state,
            error=_error_file(trial), stop_reason=stop if isinstance(stop, str) else None,
            failures=trial.run_metadata.num_failures,
        ))  # fmt: skip
    return SearchResults(experiment, launch.metric, launch.mode, trials)


def _error_file(trial: Any) -> str | None:
    name = trial.run_metadata.error_filename
    return str(Path(trial.path) / name) if name else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def error_message(text: str, max_lines: int = 3) -> str:
    """The exception at the end of a Tune error.txt (``Failure # N ...`` then a traceback), without
    the traceback: ``RuntimeError: ...`` and the lines of its message, at most ``max_lines``."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    # Tune's file holds the latest failure last; a Ray traceback ends with the exception's lines
    start = next((i for i in range(len(lines) - 1, -1, -1) if _EXCEPTION_LINE.match(lines[i])), None)
    if start is None:
        return "\n".join(lines[-max_lines:])
    return "\n".join(lines[start : start + max_lines])


# ---- the end of a search -------------------------------------------------------------------------


def summarize(results: SearchResults, space: Any, *, final_eval: str | None = None, log: Any = print) -> dict[str, Any]:
    """The best trial: its sampled settings, config, checkpoint and scores on the selection subset,
    and on the full dev sets as ``tune.final_eval`` says (``best``: the best trial's checkpoint,
    ``all``: every trial's best checkpoint, ``none``). Written to ``summary.json`` too."""
    from mtbert.train.checkpoint import CONFIG_FILE, METRICS_FILE

    final_eval = final_eval or getattr(space.tune, "final_eval", "best")
    states: dict[str, int] = {}
    for t in results.trials:
        key = (t.state or t.status).lower()
        states[key] = states.get(key, 0) + 1
    summary: dict[str, Any] = {
        "experiment": str(results.experiment), "metric": results.metric, "mode": results.mode,
        "trials": len(results.trials), "trial_states": states, "final_eval": final_eval, "best": None,
    }  # fmt: skip
    # why trials ended early or failed: the exception of each errored trial (after its retries),
    # the reason of each that stopped itself (a non-finite loss)
    errors = {t.trial_id: t.error_message() or "(no error file)" for t in results.trials if t.status == "ERROR"}
    stopped = {t.trial_id: t.stop_reason for t in results.trials if t.stop_reason}
    summary.update(errors=errors, stopped=stopped)
    ranked = results.ranked()
    if ranked:
        best = ranked[0]
        metrics = json.loads((best.checkpoint / METRICS_FILE).read_text())
        summary["best"] = {
            "trial_id": best.trial_id, "params": decoded(space, best.params),
            "config": str(best.checkpoint / CONFIG_FILE), "checkpoint": str(best.checkpoint),
            "step": metrics.get("step"), "iteration": best.best.get(TRAINING_ITERATION), "state": best.state,
            "selection": {k: metrics[k] for k in SCORE_KEYS if k in metrics},
            "selection_dev_examples": getattr(space.base.data, "max_eval_per_task", None), "full_dev": None,
        }  # fmt: skip
        scored = {"best": ranked[:1], "all": ranked}.get(final_eval, [])
        full = {}
        for trial in scored:
            log(f"scoring trial {trial.trial_id}'s best checkpoint on the full dev sets")
            full[trial.trial_id] = full_evaluation(trial.checkpoint, log)
        summary["best"]["full_dev"] = full.get(best.trial_id)
        if final_eval == "all":
            summary["full_dev"] = full
    # written whole or not at all: a search killed here leaves no half a summary (resume writes it)
    path = results.experiment / SUMMARY_FILE
    partial = path.with_name(f".{SUMMARY_FILE}.partial")
    partial.write_text(strict_json(summary, indent=2))
    os.replace(partial, path)
    return summary


def full_evaluation(checkpoint: Path, log: Any = print) -> dict[str, float]:
    """mtbert-train's final evaluation of a checkpoint: the full dev sets, and dev and test
    prediction files in ``<checkpoint>/predictions``."""
    from mtbert.train.checkpoint import CONFIG_FILE, ENCODER_DIR
    from mtbert.cli import final_evaluation
    from mtbert.config import load_config
    from mtbert.model.pretrained import load_tokenizer
    from mtbert.train.loop import resolve_device

    config = load_config(Path(checkpoint) / CONFIG_FILE)
    tokenizer = load_tokenizer(Path(checkpoint) / ENCODER_DIR)
    scores, _, _ = final_evaluation(Path(checkpoint), config, tokenizer, resolve_device(config.train.device))
    return scores


def decoded(space: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Sampled settings under their dotted keys with their real values (raw Optuna values without a space)."""
    if space is None:
        return dict(params)
    try:
        return space.decode(params)
    except (ValueError, KeyError):
        return dict(params)


def saved_space(experiment: str | Path) -> tuple[Any, Launch]:
    """The space of a search folder, loaded from the copy saved when the search started."""
    from search.space.file import load_space

    experiment = Path(experiment).expanduser().resolve()
    if not experiment.is_dir():
        raise SearchError(f"{experiment} is not a folder; give a search folder, <tune.storage_path>/<tune.name>")
    launch = Launch.read(experiment)
    space = load_space(experiment / SPACE_COPY, launch.overrides or None, profile=launch.profile, smoke=launch.smoke)
    # the copy's name is not the search's: the search is where it is now
    space.tune = dataclasses.replace(space.tune, storage_path=str(experiment.parent), name=experiment.name)
    space.notes = [f"results: {experiment};{n.split(';', 1)[1]}" if n.startswith("results: ") and ";" in n else n
                   for n in space.notes]  # fmt: skip
    return space, launch
