"""The Ray connection of a search: join a cluster, or start a local Ray that serves this machine alone.

``ray_session(address)`` is the one way the search, ``resume`` and ``ensemble --retrain-seeds``
reach Ray; ``share`` puts the tokenised data into its object store. The two places where Ray 2.60
has no public API for what is needed are each one function here: ``_start_local_ray`` (a local Ray
on the loopback address only) and ``set_progress_metrics`` (the columns of Tune's progress table).
"""

from __future__ import annotations

import contextlib
import logging
import os
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


def set_progress_metrics(trainable: Any, metrics: tuple[str, ...]) -> None:
    """The columns of Tune's progress table for ``trainable``'s trials. Ray 2.60's progress output
    (the default one) reads them from the trainable's ``_progress_metrics`` only: the public
    ``RunConfig(progress_reporter=CLIReporter(metric_columns=...))`` is ignored by that output."""
    trainable._progress_metrics = metrics


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local Ray; returns whether
    this process started Ray (and so shuts it down)."""
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
        _start_local_ray(include_dashboard=False, log_to_driver=True, logging_config=quiet, runtime_env=env)
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
            ray.shutdown()
