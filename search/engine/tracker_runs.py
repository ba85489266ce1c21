"""The runs of one tracker (``tune.trackers``' mlflow or wandb) of one search folder: the parent run,
one run per trial, and what ``search.engine.trackers`` logs to them. Every mlflow and wandb call is here.

- MLflow: runs nested the MLflow way (``mlflow.parentRunId``) in the experiment ``experiment``
  (default: the search's folder name), at ``tracking_uri`` (default: ``$MLFLOW_TRACKING_URI`` if
  set, else the search folder's own store ``<search folder>/mlflow.db`` (SQLite), artifacts in
  ``<search folder>/mlartifacts``). The own store is found again wherever the folder has moved.
- W&B: runs in the group named after the search, the parent of ``job_type`` search, the trials of
  ``job_type`` trial; ``project`` (default ``$WANDB_PROJECT``, else mtbert-search), ``entity``
  (``$WANDB_ENTITY``), ``mode`` (``$WANDB_MODE``, else offline: nothing leaves the machine until
  ``wandb sync``), files under ``$WANDB_DIR``, else the search folder (``<folder>/wandb/``). Each
  ``wandb.init`` and ``finish`` takes a second or more in Tune's driver loop: one per trial start
  (and per resume), and one per run the final pick completes.

Neither library reports usage by itself here: before the first import, ``MLFLOW_DISABLE_TELEMETRY``
(MLflow's usage telemetry) and ``WANDB_ERROR_REPORTING`` (wandb-core's error reports) are set to
off in the search's process, unless the user has set them (``quiet_network``).
"""

from __future__ import annotations

import importlib
import os
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from search.engine.tensorboard import STEP_KEY

WANDB_GROUPS = ("dev/*", "train/*", "grad/*", "other/*", "pbt/*")
ENDED = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}  # MLflow's end state of a trial by Tune's status; else KILLED


def quiet_network() -> None:
    """No usage data leaves the machine unless the user asked: MLflow's telemetry (read when mlflow
    is first imported) and wandb-core's error reports (read when its service starts) are off in this
    process unless those variables are set already."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


def found_errors(*names: str) -> tuple[type[BaseException], ...]:
    """The exception classes ``module:Class`` that this install has (a library's private ones move)."""
    errors = []
    for name in names:
        module, _, attr = name.partition(":")
        try:
            errors.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


class Tracker:
    """One tracker's runs of one search folder; ``ids`` is its part of ``trackers.json``. Each method
    is one event of the search; an exception of ``errors()`` is the tracker failing (its server,
    its files), any other one a bug."""

    def __init__(self, options: dict[str, Any], folder: Path, ids: dict[str, Any]):
        self.options, self.folder, self.ids = options, folder, ids
        self.ids.setdefault("trials", {})

    @staticmethod
    def errors() -> tuple[type[BaseException], ...]:
        """The exceptions of the library and its transport that mean the tracker failed."""
        return (OSError,)

    def start_search(self, name: str, params: dict[str, str]) -> None:
        """The parent run: made, or (a resumed search) running again."""
        raise NotImplementedError

    def start_trial(self, trial_id: str, name: str, params: dict[str, Any], path: str) -> None:
        """A trial's run with its settings ``params``: made, or (a resumed or restarted trial) running again."""
        raise NotImplementedError

    def log(self, trial_id: str, values: dict[str, float], step: int) -> None:
        """One evaluation's ``{tag: value}`` at the trainer's global ``step``."""
        raise NotImplementedError

    def tag(self, trial_id: str, tags: dict[str, Any]) -> None:
        """Text about a running trial (``best_checkpoint``)."""
        raise NotImplementedError

    def end_trial(self, trial_id: str, failed: bool) -> None:
        raise NotImplementedError

    def end_search(self, interrupted: bool) -> None:
        """Tune's run has ended (``interrupted``: by a Ctrl-C, its trials go on at resume): the runs end."""
        raise NotImplementedError

    def settle(self, trials: list[Any]) -> None:
        """After the search, from its results (``search.results.TrialRecord``): each trial's best
        checkpoint as the results say, and no run left running."""
        raise NotImplementedError

    def final(self, trial_id: str | None, scores: dict[str, float], tags: dict[str, Any], step: int) -> None:
        """The final pick's ``scores`` and ``tags`` on a trial's run, or the parent's (``trial_id`` None)."""
        raise NotImplementedError

    def finish(self, files: list[Path]) -> None:
        """The final pick is logged: the parent run ends (with ``files``, where the tracker keeps files)."""


class MlflowTracker(Tracker):
    def __init__(self, options: dict[str, Any], folder: Path, ids: dict[str, Any]):
        quiet_network()
        from mlflow.tracking import MlflowClient

        super().__init__(options, folder, ids)
        explicit = options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        self.own = not explicit  # the search folder's own store: kept in trackers.json as null
        if self.own:
            import logging

            # the table-creation lines of a new SQLite store (these loggers' levels are process-wide)
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=explicit or f"sqlite:///{quote(str(folder.resolve() / 'mlflow.db'))}")
        if ids.get("tracking_uri", explicit) != explicit:  # another store: runs made there are not here
            ids.clear()
            ids["trials"] = {}
        ids["tracking_uri"] = explicit
        name = options.get("experiment") or folder.name
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(
            name, artifact_location=(folder.resolve() / "mlartifacts").as_uri() if self.own else None)  # fmt: skip
        self.open: set[str] = set()

    @staticmethod
    def errors() -> tuple[type[BaseException], ...]:
        from mlflow.exceptions import MlflowException

        return (OSError, MlflowException, *found_errors("requests:RequestException", "sqlalchemy.exc:SQLAlchemyError"))

    def _status(self, run_id: str | None) -> str | None:
        """The run's status (RUNNING, FINISHED, ...), None if this experiment has no such run."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

        if not run_id:
            return None
        try:
            info = self.client.get_run(run_id).info
        except MlflowException as e:
            if e.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                return None
            raise  # the store failed: not a reason to make the run again
        return info.status if info.experiment_id == self.experiment_id and info.lifecycle_stage == "active" else None

    def _params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def start_search(self, name: str, params: dict[str, str]) -> None:
        if self._status(self.ids.get("parent")):
            self.client.update_run(self.ids["parent"], status="RUNNING")
            return
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={"mtbert.kind": "search", "mtbert.search": str(self.folder)})  # fmt: skip
        self.ids["parent"] = run.info.run_id
        self._params(run.info.run_id, params)

    def start_trial(self, trial_id: str, name: str, params: dict[str, Any], path: str) -> None:
        run_id = self.ids["trials"].get(trial_id)
        if self._status(run_id):
            if run_id not in self.open:
                self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {"mlflow.parentRunId": self.ids["parent"], "mtbert.kind": "trial", "mtbert.trial_id": trial_id,
                    "mtbert.trial_dir": path}  # fmt: skip
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            self.ids["trials"][trial_id] = run_id
            self._params(run_id, params)  # once: a param never changes in MLflow (PBT's changes are pbt/ metrics)
        self.open.add(run_id)

    def log(self, trial_id: str, values: dict[str, float], step: int) -> None:
        self.final(trial_id, values, {}, step)

    def tag(self, trial_id: str, tags: dict[str, Any]) -> None:
        self.final(trial_id, {}, tags, 0)

    def end_trial(self, trial_id: str, failed: bool) -> None:
        run_id = self.ids["trials"].get(trial_id)
        if run_id in self.open:
            self.open.discard(run_id)
            self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def end_search(self, interrupted: bool) -> None:
        for run_id in list(self.open):  # trials a Ctrl-C stopped: they go on at resume
            self.client.set_terminated(run_id, "KILLED")
        self.open.clear()
        if self.ids.get("parent"):  # ended here whatever follows; the final pick is added to it
            self.client.set_terminated(self.ids["parent"], "KILLED" if interrupted else "FINISHED")

    def settle(self, trials: list[Any]) -> None:
        records = {t.trial_id: t for t in trials}
        for trial_id, run_id in self.ids["trials"].items():
            status, t = self._status(run_id), records.get(trial_id)
            if status is None:
                continue
            if t is not None:
                self.tag(trial_id, {"tune_status": t.status, "optuna_state": t.state or "",
                                    **({"best_checkpoint": t.checkpoint} if t.checkpoint else {})})  # fmt: skip
            if status == "RUNNING":  # stopped by a kill, or by a restart that gave its trial a new id
                self.client.set_terminated(run_id, ENDED.get(t.status if t else "", "KILLED"))

    def final(self, trial_id: str | None, scores: dict[str, float], tags: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self.ids.get("parent") if trial_id is None else self.ids["trials"].get(trial_id)
        if run_id:
            now = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in scores.items()],
                                  tags=[RunTag(k, str(v)) for k, v in tags.items()])  # fmt: skip

    def finish(self, files: list[Path]) -> None:
        parent = self.ids["parent"]
        # a moved search folder's runs keep their first artifact folder (MLflow's): the files stay in the folder
        if not self.own or self.client.get_run(parent).info.artifact_uri.startswith(self.folder.resolve().as_uri()):
            for path in files:
                self.client.log_artifact(parent, str(path))
        self.client.set_terminated(parent, "FINISHED")


class WandbTracker(Tracker):
    def __init__(self, options: dict[str, Any], folder: Path, ids: dict[str, Any]):
        quiet_network()
        import wandb

        super().__init__(options, folder, ids)
        self.wandb = wandb
        self.ids.setdefault("key", secrets.token_hex(4))  # run ids unique within the project, kept for resume
        self.ids.setdefault("checkpoints", {})  # each trial's best_checkpoint as last logged
        self.group = folder.name
        self.runs: dict[str, Any] = {}
        self.init = {
            "project": options.get("project") or os.environ.get("WANDB_PROJECT") or "mtbert-search",
            "entity": options.get("entity") or os.environ.get("WANDB_ENTITY") or None,
            "mode": options.get("mode") or os.environ.get("WANDB_MODE") or "offline",
            "dir": os.environ.get("WANDB_DIR") or str(folder),
        }
        Path(self.init["dir"]).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def errors() -> tuple[type[BaseException], ...]:
        import wandb

        # wandb-core gone (a Ctrl-C reaches it too): its connection's errors
        gone = found_errors("wandb.sdk.lib.service.service_token:WandbServiceConnectionError",
                            "wandb.sdk.mailbox.mailbox:MailboxClosedError",
                            "wandb.sdk.mailbox.mailbox_handle:HandleAbandonedError",
                            # what wandb-core answers an init with (a run id still held by a killed driver's one)
                            "wandb.sdk.mailbox.mailbox_handle:ServerResponseError")  # fmt: skip
        return (OSError, wandb.Error, *gone)

    def _run(self, run_id: str, **kwargs: Any) -> Any:
        settings = self.wandb.Settings(silent=True, console="off")  # Tune's table and the warnings stay on stdout
        return self.wandb.init(id=run_id, group=self.group, resume="allow", reinit="create_new", settings=settings,
                               **self.init, **kwargs)  # fmt: skip

    def start_search(self, name: str, params: dict[str, str]) -> None:
        self.ids["parent"] = f"{self.ids['key']}-search"
        self._run(self.ids["parent"], name=name, job_type="search", config=params).finish()

    def start_trial(self, trial_id: str, name: str, params: dict[str, Any], path: str) -> None:
        if trial_id in self.runs:
            return
        new = trial_id not in self.ids["trials"]
        run_id = self.ids["trials"].setdefault(trial_id, f"{self.ids['key']}-{trial_id}")
        run = self._run(run_id, name=name, job_type="trial", config=params if new else None)
        run.define_metric(STEP_KEY)
        for group in WANDB_GROUPS:  # curves against the global step, not W&B's count of log calls
            run.define_metric(group, step_metric=STEP_KEY)
        run.summary.update({"trial_dir": path})
        self.runs[trial_id] = run

    def log(self, trial_id: str, values: dict[str, float], step: int) -> None:
        self.runs[trial_id].log({**values, STEP_KEY: step})

    def tag(self, trial_id: str, tags: dict[str, Any]) -> None:
        if trial_id in self.runs:
            self.runs[trial_id].summary.update({k: str(v) for k, v in tags.items()})
            if "best_checkpoint" in tags:
                self.ids["checkpoints"][trial_id] = str(tags["best_checkpoint"])

    def end_trial(self, trial_id: str, failed: bool) -> None:
        run = self.runs.pop(trial_id, None)
        if run is not None:
            run.finish(exit_code=1 if failed else 0)

    def end_search(self, interrupted: bool) -> None:
        for trial_id in list(self.runs):
            self.runs.pop(trial_id).finish(exit_code=1)

    def settle(self, trials: list[Any]) -> None:
        # only the runs whose best checkpoint the results correct (one kept before a resume): each
        # reopening costs a wandb.init; W&B's runs end with their process, none is left running
        for t in trials:
            logged = self.ids["checkpoints"].get(t.trial_id)
            if t.checkpoint and t.trial_id in self.ids["trials"] and logged != str(t.checkpoint):
                self.final(t.trial_id, {}, {"best_checkpoint": t.checkpoint}, 0)
                self.ids["checkpoints"][t.trial_id] = str(t.checkpoint)

    def final(self, trial_id: str | None, scores: dict[str, float], tags: dict[str, Any], step: int) -> None:
        run_id = self.ids.get("parent") if trial_id is None else self.ids["trials"].get(trial_id)
        if run_id:
            run = self._run(run_id)  # the run again (W&B's resume), its summary completed
            run.summary.update({**scores, **{k: str(v) for k, v in tags.items()}})
            run.finish()


KINDS: dict[str, type[Tracker]] = {"mlflow": MlflowTracker, "wandb": WandbTracker}
