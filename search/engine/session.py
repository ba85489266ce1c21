"""The Ray connection of a search: join a cluster, or start a local Ray that serves this machine alone.

``ray_session(address)`` is the one way the search, ``resume`` and ``ensemble --retrain-seeds``
reach Ray; ``share`` puts the tokenised data into its object store. The two places where Ray 2.60
has no public API for what is needed are each one function here: ``_start_local_ray`` (a local Ray
on the loopback address only) and ``set_progress_metrics`` (the columns of Tune's progress table).

Two of Ray's start-up messages would point the wrong way, and are replaced here:

- Tune's "To visualize your results with TensorBoard, run: `tensorboard --logdir
  /tmp/ray/session_.../driver_artifacts`" names a staging folder that holds none of the search's
  event files. Tune prints it when one of the run's callbacks is a ``TBXLoggerCallback``, which it
  adds by itself unless ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1`` (a documented setting, set for the
  session): the search's own ``TensorBoardCallback`` and the CSV and JSON loggers are given
  explicitly (``search.engine.tuner.run_config``), and the command prints the right line.
- Ray's token-authentication warning (a WARNING line with a timestamp) becomes one line of ours,
  once per command (``TokenNote``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import ray

from search.errors import SearchError


def _start_local_ray(**init_kwargs: Any) -> None:
    """``ray.init(address="local", ...)`` with every server of this Ray on 127.0.0.1 only.

    Ray 2.60 binds all interfaces unless its node address is the loopback one; ``ray.init`` takes
    the node address only as the private ``_node_ip_address``. It then swaps a loopback address for
    the machine's routable one unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is off, which Ray reads
    once, at import, into ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``: hence the constant as
    well. No public setting does either (``--node-ip-address`` exists for ``ray start`` only). Ray's
    processes start with the variable and keep it; this process gets both back once Ray is up."""
    from ray._private import ray_constants

    variable = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved = os.environ.get(variable), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[variable], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", **init_kwargs)
    finally:
        if saved[0] is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


class TokenNote(logging.Filter):
    """Ray's token-authentication warnings, said once per command as a one-line note of ours on
    stderr instead of Ray's WARNING with a timestamp (a filter on Ray's logger, which keeps the record)."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not TokenNote.said:
            TokenNote.said = True
            print(token_note(record.getMessage()), file=sys.stderr, flush=True)
        return False


def token_note(message: str) -> str:
    if message.startswith("Token authentication is enabled"):
        return "note: the local Ray runs with token authentication (Ray's default; its token is in ~/.ray/auth_token)"
    if message.startswith("Token authentication is disabled"):
        return ("note: this Ray cluster runs without token authentication: anyone who can reach it can run code "
                "on it; turn it on with 'ray get-auth-token --generate' or RAY_AUTH_MODE=token")  # fmt: skip
    return f"note: Ray: {message.split(' For more information')[0]}"


def set_progress_metrics(trainable: Any, metrics: tuple[str, ...]) -> None:
    """The columns of Tune's progress table for ``trainable``'s trials. Ray 2.60's progress output
    (the default one) reads them from the trainable's ``_progress_metrics`` only: the public
    ``RunConfig(progress_reporter=CLIReporter(metric_columns=...))`` is ignored by that output."""
    trainable._progress_metrics = metrics


ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local Ray; returns whether
    this process started Ray (and so shuts it down)."""
    if ray.is_initialized():
        return False
    token_logger = logging.getLogger(TOKEN_LOGGER)
    if not any(isinstance(f, TokenNote) for f in token_logger.filters):
        token_logger.addFilter(TokenNote())
    # Ray's INFO lines (a line per checkpoint from every trial) would bury the progress table.
    quiet = ray.LoggingConfig(log_level="WARNING")
    # Trials share the cores with Ray's own processes (and each other): OpenMP threads that spin
    # while they wait for work then starve the thread they wait for. Measured on a busy 2-core
    # machine, a 2-thread step of the tiny encoder took 2.5 s spinning and 0.03 s passive.
    env = {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}
    # The S3-compatible server a URI tune.storage_path names (MinIO, ...), for trials on every node;
    # credentials are not sent: each node has its own (an instance profile, its environment)
    env["env_vars"].update({k: os.environ[k] for k in ENDPOINT_VARIABLES if os.environ.get(k)})
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, log_to_driver=True, logging_config=quiet, runtime_env=env)
        except ConnectionError as e:
            raise SearchError(f"--address {address}: no Ray cluster there ({str(e).splitlines()[0]})") from None
    else:  # "local": never attach to another user's cluster on this machine by accident
        _start_local_ray(include_dashboard=False, log_to_driver=True, logging_config=quiet, runtime_env=env)
    # With keep_checkpoints, Tune snapshots the experiment state at every checkpoint, on purpose
    # (the snapshot must know which checkpoint files exist), and warns each time trials are short.
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.ERROR)
    # Optuna's INFO line for the in-memory study, with its timestamp, tells a user nothing to act on.
    logging.getLogger("optuna").setLevel(logging.WARNING)
    return True


@contextlib.contextmanager
def ray_session(address: str | None, tune_loggers: bool = False) -> Iterator[None]:
    """``connect(address)`` for the block; Ray is shut down after it if the block started it. Tune
    adds no logger callbacks of its own in the block (``AUTO_LOGGERS``: see the module's docstring)
    unless ``tune_loggers``: a search started by an earlier version names no CSV or JSON logger in
    its saved run config, and its resume needs Tune's to go on writing ``progress.csv`` and
    ``result.json``."""
    saved = os.environ.get(AUTO_LOGGERS)
    os.environ[AUTO_LOGGERS] = "0" if tune_loggers else "1"
    try:
        started = connect(address)
        try:
            yield
        finally:
            if started:
                ray.shutdown()
    finally:
        if saved is None:
            os.environ.pop(AUTO_LOGGERS, None)
        else:
            os.environ[AUTO_LOGGERS] = saved


def alive_nodes() -> int:
    """The nodes of the Ray cluster this process is connected to that are alive."""
    return sum(1 for node in ray.nodes() if node.get("Alive"))
