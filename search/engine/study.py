"""A search's Optuna study in a database (``tune.study_storage``), written as trials report.

``tune.study_storage`` is one of (``search.space.settings.STUDY_STORAGES``):

    sqlite                 the default: ``sqlite:///<search folder>/study.db``, which moves with the folder
                           (with a URI ``tune.storage_path``, in the search's working copy on the
                           driver, sent to the storage as the search goes: ``search.storage``)
    sqlite:///PATH         an SQLite file elsewhere (a relative PATH is made absolute when the space is read)
    postgresql://USER:PASSWORD@HOST:PORT/DATABASE   a PostgreSQL server (driver psycopg2), for a cluster
    journal:PATH           Optuna's journal file (``JournalFileBackend``)
    null                   no database: the study lives only in the searcher's state Tune saves (the
                           searches of earlier versions)

The study is named after the search folder (``tune.name``) and records that folder as its user
attribute ``search_folder``; each Optuna trial records its Tune trial id as ``tune_trial_id``. Anyone
can read it while the search runs, with ``optuna.load_study(study_name=NAME, storage=URL)`` or
``mtbert-search dashboard DIR`` (``serve_dashboard``, optuna-dashboard on 127.0.0.1 only).

Here: the checks made before a search starts (``check_storage``: the URL's form, the server answers,
the SQLite or journal folder is writable; ``check_new_study``: the name is free), the reference a
searcher keeps instead of a connection (``StudyRef``), opening the storage and reading a folder's study.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from search.engine.warm_start import EARLIER, PROPOSED_BY
from search.errors import SearchError, SpaceError
from search.space.settings import STUDY_STORAGES

DEFAULT = "sqlite"
STUDY_FILE = "study.db"
FOLDER_ATTR = "search_folder"  # the study's user attribute: the search folder it belongs to
TUNE_TRIAL_ID = "tune_trial_id"  # each Optuna trial's user attribute: its Tune trial id
JOURNAL = "journal:"
KEY = "tune.study_storage"
SEARCH_FILE = "search.json"  # search.launch's launch record, which holds the setting as resolved
CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class StudyRef:
    """Where a search's study is: what a searcher pickles instead of a database connection."""

    setting: str  # tune.study_storage as resolved (``resolve``): "sqlite" or an absolute URL
    url: str  # the storage opened: a SQLAlchemy URL, or journal:/ABSOLUTE/PATH
    name: str  # the study's name: the search folder's
    folder: str  # the search folder

    def storage(self) -> Any:
        return open_storage(self.url)

    def shown(self) -> str:
        return shown(self.url)


def resolve(setting: str | None, cwd: Path | None = None) -> str | None:
    """``tune.study_storage`` in the form a search records: None for no database, ``sqlite`` for the
    folder's own, else the URL with a relative SQLite or journal path made absolute against ``cwd``."""
    if setting is None or setting == "none":
        return None
    base = cwd or Path.cwd()
    if setting.startswith("sqlite:///"):
        return "sqlite:///" + str((base / Path(setting.removeprefix("sqlite:///")).expanduser()).resolve())
    if setting.startswith(JOURNAL):
        return JOURNAL + str((base / Path(setting.removeprefix(JOURNAL)).expanduser()).resolve())
    if setting.startswith("postgresql://"):  # SQLAlchemy 2.1 takes a bare postgresql:// to mean psycopg 3
        return "postgresql+psycopg2://" + setting.removeprefix("postgresql://")
    return setting


def study_ref(setting: str | None, experiment: str | Path) -> StudyRef | None:
    """The study of the search in ``experiment`` under a resolved ``setting`` (None: no database)."""
    setting = resolve(setting)
    folder = Path(experiment)
    if setting is None or (setting == DEFAULT and "://" in str(folder)):  # no folder of its own (check_storage)
        return None
    url = f"sqlite:///{folder / STUDY_FILE}" if setting == DEFAULT else setting
    return StudyRef(setting, url, folder.name, str(folder))


def folder_ref(experiment: str | Path) -> StudyRef | None:
    """The study a search folder records in its launch record (``search.json``), None when it has no
    database study (``null``, or a search started before ``tune.study_storage`` existed)."""
    try:
        record = json.loads((Path(experiment) / SEARCH_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    setting = record.get("study_storage") if isinstance(record, dict) else None
    return study_ref(setting, Path(experiment).resolve()) if isinstance(setting, str) else None


def open_storage(url: str) -> Any:
    """An Optuna storage for ``url``. SQLite waits up to a minute for a lock (a dashboard reading
    while the search writes); PostgreSQL checks a pooled connection before using it."""
    if url.startswith(JOURNAL):
        return JournalStorage(JournalFileBackend(url.removeprefix(JOURNAL)))
    if url.startswith("sqlite:"):
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return RDBStorage(url, engine_kwargs={"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}})


def shown(url: str) -> str:
    """``url`` with its password hidden, for messages."""
    if url.startswith(("postgresql", "sqlite")):
        from sqlalchemy.engine import make_url

        try:
            return make_url(url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is shown as its scheme only
            return url.split("://", 1)[0] + "://..."
    return url


def check_storage(space: Any, log: Any = print) -> None:
    """Before any work: ``tune.study_storage`` resolved (``resolve``, written back to ``space.tune``)
    and usable: a PostgreSQL server that answers within 5 s, a folder for the SQLite or journal file
    that exists and is writable. ``SpaceError`` naming the key and what is allowed, else. A
    ``postgresql://`` URL is recorded as ``postgresql+psycopg2://``, the driver installed with the
    project, which is the URL to give ``optuna.load_study`` too."""
    t = space.tune
    setting = resolve(t.study_storage)
    space.tune = dataclasses.replace(t, study_storage=setting)
    if setting is None or setting == DEFAULT:
        return  # the search folder is made, and checked, when the search takes it (search.launch.claim_folder)
    problem = _problem(setting)
    if problem:
        raise SpaceError(space.path, KEY, f"{shown(setting)}: {problem}; allowed: {STUDY_STORAGES}")


def check_reachable(ref: StudyRef) -> None:
    """Before a search goes on (``resume``): its study's storage answers and holds the study;
    ``SearchError`` saying which and why, else."""
    if ref.setting == DEFAULT and not Path(ref.url.removeprefix("sqlite:///")).is_file():
        raise SearchError(f"{ref.folder}: its Optuna study database {STUDY_FILE} is missing; the search cannot go on")
    problem = _problem(ref.url)
    if problem is None and existing_study(ref) is None:
        problem = f"it holds no study named {ref.name!r} (was it deleted?)"
    if problem:
        raise SearchError(f"{ref.folder}: its Optuna study is kept in {KEY} {ref.shown()}, and {problem}; the "
                          "search goes on when it can be read")  # fmt: skip


def _problem(url: str) -> str | None:
    if url.startswith(("sqlite:///", JOURNAL)):
        path = Path(url.removeprefix("sqlite:///").removeprefix(JOURNAL))
        if path.is_dir():
            return "is a folder, not a file"
        if not path.parent.is_dir():
            return f"the folder {path.parent} does not exist"
        writable = os.access(path, os.W_OK) if path.exists() else os.access(path.parent, os.W_OK | os.X_OK)
        return None if writable else f"{path if path.exists() else path.parent} is not writable"
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    except ImportError:
        return "the PostgreSQL driver is missing (pip install psycopg2-binary)"
    except sqlalchemy.exc.ArgumentError as e:
        return f"not a database URL ({e})"
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as e:
        first = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        return f"no database answers there within {CONNECT_TIMEOUT_S} s ({first})"
    finally:
        engine.dispose()
    return None


def existing_study(ref: StudyRef) -> dict[str, Any] | None:
    """The user attributes of the study named ``ref.name`` in its storage, None if there is none."""
    storage = ref.storage()
    try:
        study_id = storage.get_study_id_from_name(ref.name)
    except KeyError:
        return None
    return dict(storage.get_study_user_attrs(study_id))


def check_new_study(setting: str | None, experiment: Path) -> None:
    """A new search's study name must be free in its storage: ``SearchError`` naming both ways out."""
    ref = study_ref(setting, experiment)
    if ref is None or ref.setting == DEFAULT:
        return  # a new folder holds no study.db
    attrs = existing_study(ref)
    if attrs is not None:
        raise SearchError(
            f"{KEY} {ref.shown()} already holds a study named {ref.name!r} (of the search in "
            f"{attrs.get(FOLDER_ATTR, 'an unknown folder')}); choose another tune.name, or delete that study: "
            f"optuna delete-study --study-name {ref.name} --storage '{ref.shown()}'"
        )


def load_folder_study(experiment: str | Path, sampler: Any = None) -> Any:
    """The study a search folder keeps in its database, None when it has none (or it cannot be read)."""
    ref = folder_ref(experiment)
    if ref is None or (ref.setting == DEFAULT and not Path(ref.url.removeprefix("sqlite:///")).is_file()):
        return None
    try:
        return optuna.load_study(study_name=ref.name, storage=ref.storage(), sampler=sampler)
    except Exception as e:  # noqa: BLE001 - a server down or a study deleted: the caller falls back
        print(f"{experiment}: the study in {ref.shown()} cannot be read ({str(e).splitlines()[0]})", file=sys.stderr)
        return None


def tune_trial_ids(study: Any) -> dict[str, Any]:
    """``{Tune trial id: FrozenTrial}`` of the trials this search ran. A trial that ``tune.warm_start``
    added from an earlier search keeps that search's user attributes, its Tune trial id among them:
    it is not one of this search's Tune trials."""
    return {str(t.user_attrs[TUNE_TRIAL_ID]): t for t in study.get_trials(deepcopy=False)
            if TUNE_TRIAL_ID in t.user_attrs and t.user_attrs.get(PROPOSED_BY) != EARLIER}  # fmt: skip


HOST = "127.0.0.1"  # the dashboard can rename and delete studies: never served beyond this machine


def serve_dashboard(experiment: Path, port: int, log: Any = print) -> None:
    """optuna-dashboard on the study of the search in ``experiment``, on ``HOST`` only, until Ctrl-C.
    ``SearchError`` when the folder has no database study, it cannot be read, or the port is taken."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from optuna_dashboard import wsgi

    if not (experiment / SEARCH_FILE).is_file():
        raise SearchError(f"{experiment} holds no mtbert search ({SEARCH_FILE} is missing); give a search folder, "
                          "<tune.storage_path>/<tune.name>")  # fmt: skip
    ref = folder_ref(experiment)
    if ref is None:
        raise SearchError(f"{experiment}: the search keeps its Optuna study in no database ({KEY} was null, or the "
                          f"search was started before {KEY} existed), so optuna-dashboard has nothing to read; "
                          f"'mtbert-search report {experiment} --out OUT' shows the study")  # fmt: skip
    if ref.setting == DEFAULT and not Path(ref.url.removeprefix("sqlite:///")).is_file():
        raise SearchError(f"{experiment}: its study database {STUDY_FILE} is missing")
    try:
        storage = ref.storage()
        study_id = storage.get_study_id_from_name(ref.name)
    except KeyError:
        raise SearchError(f"{ref.shown()} holds no study named {ref.name!r} (was it deleted?)") from None
    except Exception as e:  # noqa: BLE001 - the server down, a file that is no database: said plainly
        raise SearchError(f"{ref.shown()} cannot be read: {str(e).strip().splitlines()[0]}") from None

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # the dashboard polls every few seconds: a line per request would bury the URL

    try:
        server = make_server(HOST, port, wsgi(storage), handler_class=Quiet)
    except OSError as e:
        raise SearchError(f"--port {port}: cannot listen on {HOST}:{port} ({e.strerror or e})") from None
    url = f"http://{HOST}:{server.server_port}"
    log(f"optuna-dashboard: {url}/dashboard/studies/{study_id} (study {ref.name!r} in {ref.shown()})")
    log(f"served on {HOST} only; from another machine: ssh -L {server.server_port}:{HOST}:{server.server_port} "
        "<this machine>. Ctrl-C stops it")  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
