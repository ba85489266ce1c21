"""Ctrl-C during a search: the first stops it the way Tune's own stop request does (its trials
stopped, the state saved for ``resume``), then ``SearchInterrupted``; a second Ctrl-C, or one before
Tune runs, stops at once (``KeyboardInterrupt``).

Tune is not imported here; what is used of it is its stop request (SIGUSR1, which ``tune.run``
handles as it handles a first SIGINT), the variable that keeps it off SIGINT, and its log lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from search.errors import SearchInterrupted

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
