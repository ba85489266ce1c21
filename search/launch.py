"""Starting a search, and the folder it lives in.

Layout of a search's folder, ``<tune.storage_path>/<tune.name>``:

    space.yaml, search.json       the space file as given and how it was loaded (``Launch``, for ``resume``)
    trial_<id>/                   one per trial: result.json, progress.csv, params.json, the
                                  TensorBoard event files, checkpoint_<n>/ (mtbert checkpoints)
    summary.json                  the final pick and best trial, written when the search ends (``search.summary``)
    final-eval.json               the full-dev scores of the finalists scored so far (a resume does not redo them)
    asha-rungs.json               ASHA's rungs and decisions, for ``resume`` (``search.engine.rungs``)
    study.db                      the Optuna study, written as trials report (SQLite; the default
                                  tune.study_storage, ``search.engine.study``): optuna.load_study or
                                  ``mtbert-search dashboard`` read it while the search runs
    search.lock                   while a command writes here: which one (``search.lock``)
    experiment_state-*.json, tuner.pkl, searcher-state-*.pkl, ...   Ray Tune's and Optuna's state

Here: the launch record, the folder a new search takes (``claim_folder``) and the lock of an existing
one (``lock_search``), the checks made before Ray starts (``check_address``, ``check_local_gpus``,
``read_data``), and ``run_search`` / ``resume_search``, which hand the work to ``search.engine.tuner``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search import storage
from search.engine.trainable import TrialSetup, fixed_settings, prepare_shared, space_signatures
from search.errors import SearchError
from search.lock import LOCK_FILE, LockHeld, SearchLock
from search.space.file import load_space

SPACE_COPY = "space.yaml"
SEARCH_FILE = "search.json"
SUMMARY_FILE = "summary.json"


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
    # the run config names Tune's CSV and JSON loggers itself (searches started by earlier versions
    # relied on Tune adding them, which a resume must then let it do: ``run_restored(tune_loggers=)``)
    explicit_loggers: bool = False
    # tune.study_storage as resolved (``search.engine.study.resolve``): "sqlite" (study.db here), a URL,
    # or None: no database (also every search started before the setting existed)
    study_storage: str | None = None

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
    return storage.folder_at(space.tune.storage_path, space.tune.name)


def shown_folder(experiment: Path) -> str:
    """A search folder as a user names it in a command: a working copy by its URI."""
    uri = storage.remote_of(experiment)
    return storage.shown(uri) if uri else str(experiment)


def _holds_search(folder: Path) -> bool:
    uri = storage.remote_of(folder)
    if uri is not None:
        return storage.holds_files(uri)
    return folder.exists() and any(p.name != LOCK_FILE for p in folder.iterdir())


def check_new(experiment: Path) -> None:
    """A new search must not write into an earlier one's folder (its own lock file aside)."""
    if _holds_search(experiment):
        raise SearchError(f"{shown_folder(experiment)} already holds a search; continue it with 'mtbert-search resume "
                          f"{shown_folder(experiment)}', or choose another tune.name or tune.storage_path")  # fmt: skip


def free_name(space: Any) -> str | None:
    """A folder name for a new search next to an earlier one with the same name (``<name>-2``, ...),
    or None when ``tune.name`` is free: running a README command twice starts a second search
    instead of failing or mixing trials into the first one."""
    at, name = space.tune.storage_path, space.tune.name
    if not _in_use(storage.folder_at(at, name)):
        return None
    k = 2
    while _in_use(storage.folder_at(at, f"{name}-{k}"), empty_too=True):
        k += 1
    return f"{name}-{k}"


def _in_use(folder: Path, empty_too: bool = False) -> bool:
    """Whether a search, or a command starting one (its lock), has the folder (a local folder that
    exists at all, with ``empty_too``)."""
    uri = storage.remote_of(folder)
    if uri is None:
        return folder.exists() and (empty_too or any(folder.iterdir()))
    return (folder / LOCK_FILE).exists() or storage.holds_files(uri)


def claim_folder(space: Any, command: str | None = None) -> SearchLock:
    """The lock of a new folder for ``space``'s search: ``tune.name``, or the first free
    ``<name>-<k>`` (``free_name``) when that holds a search or another new search is taking it;
    ``space.tune.name`` is set to the folder's name. Two searches started at once with one name
    each get a folder of their own: whichever takes a folder's lock first owns it."""
    at = space.tune.storage_path
    while True:
        name = free_name(space) or space.tune.name
        folder = storage.folder_at(at, name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = SearchLock.acquire(folder, command)
        except LockHeld:
            continue  # another search holds it; its lock file makes free_name skip the folder now
        except OSError as e:
            raise SearchError(f"cannot write the search's folder {folder} (tune.storage_path "
                              f"{str(at)!r}): {e.strerror or e}") from None  # fmt: skip
        try:
            check_new(folder)  # a search that took the lock and wrote its files before we locked
        except SearchError:
            lock.release()
            continue
        if storage.remote_of(folder) is not None:  # a working copy of a search deleted from the storage since
            for stale in folder.iterdir():
                if stale.name not in storage.LOCAL_ONLY:
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
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
        raise SearchError(
            f"--address {address}: no Ray cluster answers there ({e.strerror or e}); start one with "
            "'ray start --head' or 'ray up cluster.yaml', or leave --address out for a local Ray"
        ) from None


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


def run_search(space: Any, launch: Launch, space_text: str, setup: TrialSetup, data: dict[str, Any], *,
               address: str | None = None, log: Any = print) -> Path:  # fmt: skip
    """Run a search to the end; returns its folder. ``setup`` and ``data`` come from ``search_setup``
    and ``read_data``, before the caller took the folder's lock (``claim_folder``). Ctrl-C while
    Tune runs stops the search with its state saved (``SearchInterrupted``)."""
    from search.engine.tuner import max_t, run_new

    experiment = experiment_dir(space)
    check_new(experiment)
    launch.fixed, launch.metric, launch.mode, launch.max_t = (
        setup.fixed,
        space.tune.metric,
        space.tune.mode,
        max_t(space),
    )
    launch.explicit_loggers = True
    from search.engine.study import check_new_study

    check_new_study(space.tune.study_storage, experiment)  # a study of this name in a shared database: refused
    launch.study_storage = space.tune.study_storage
    # saved once Ray has started and the storage has passed the checks a cluster needs (tuner.run_new)
    run_new(
        space, setup, data, experiment, address=address, log=log, before=lambda: launch.save(experiment, space_text)
    )
    return experiment


def resume_search(experiment: Path, space: Any, launch: Launch, *, address: str | None = None,
                  log: Any = print) -> Path:  # fmt: skip
    """Continue an interrupted search: unfinished trials from their last checkpoints, errored ones
    again from the start, the Optuna study where it was, then new trials up to ``num_samples``. A
    search stopped before Tune saved any state starts from the beginning, in the same folder. The
    caller holds the folder's lock (``lock_search``)."""
    from search.engine.tuner import can_restore, run_restored

    setup = TrialSetup(space, launch.fixed or fixed_settings(space))
    saved = any(experiment.glob("experiment_state-*.json"))
    if saved and not can_restore(experiment):
        raise SearchError(f"{experiment} holds Ray Tune's trial states but not its tuner.pkl; it cannot be resumed")
    data = read_data(setup, log)  # a data file that moved or broke since: an error before Ray starts
    if saved:
        from search.engine.repair import repair_study

        repair_study(experiment, space, launch.max_t, log)  # a study cut short by a kill: rebuilt from the results
        storage.push(experiment)  # what the repair changed, on the storage Tune restores from
    run_restored(
        experiment, space, setup, data, saved=saved, address=address, tune_loggers=not launch.explicit_loggers, log=log
    )
    return experiment


def saved_space(experiment: str | Path) -> tuple[Any, Launch]:
    """The space of a search folder, loaded from the copy saved when the search started."""
    experiment = Path(experiment).expanduser().resolve()
    if not experiment.is_dir():
        raise SearchError(f"{experiment} is not a folder; give a search folder, <tune.storage_path>/<tune.name>")
    launch = Launch.read(experiment)
    uri = storage.remote_of(experiment)
    at, name = storage.parent_and_name(uri) if uri else (str(experiment.parent), experiment.name)
    # tune.warm_start's files and folders are read only if the search starts again (its searcher holds them)
    space = load_space(experiment / SPACE_COPY, launch.overrides or None, profile=launch.profile, smoke=launch.smoke,
                       read_warm_start=False)  # fmt: skip
    # the copy's name is not the search's: the search is where it is now; its study is where it was kept
    space.tune = dataclasses.replace(space.tune, storage_path=at, name=name,
                                     study_storage=launch.study_storage)  # fmt: skip
    space.notes = [f"results: {shown_folder(experiment)};{n.split(';', 1)[1]}" if n.startswith("results: ") and ";" in n else n
                   for n in space.notes]  # fmt: skip
    return space, launch
