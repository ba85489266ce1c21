"""search: hyperparameter search over mtbert runs with Ray Tune and Optuna (``mtbert-search``).

Layout, top to bottom; a module imports only from its own row or the rows below it:

    cli.py          ``mtbert-search``: parses, dispatches, prints; exit codes
    status.py, export.py, ensemble.py, report.py (figures: plots.py), cluster.py
                    the commands: the trials as a table, the best checkpoints, an ensemble of them,
                    an HTML report, ``cluster check`` (is a cluster.yaml safe to ``ray up``)
    summary.py      the end of a search: its best trial, ``summary.json``
    results.py      a search's results as plain records (``TrialRecord``, ``SearchResults``)
    launch.py       the launch record and the search folder's layout, its lock (lock.py), the checks
                    before Ray starts, starting and resuming a search
    engine/         the only code that imports ``ray`` or ``optuna``: the Ray session, the Tuner, the
                    trainable, the PRUNED-aware Optuna searcher, checkpoint retention, the TensorBoard
                    callback, Ctrl-C, reading Tune's files, the retraining grid, Ray's cluster schema
    space/          the space file: dimensions, settings, checks (``SpaceError``)
    errors.py       the errors of the search (``SpaceError``, ``SearchError``, ``SearchInterrupted``)

Below all of it: ``mtbert``, through its public API (``mtbert/__init__``) where that has the name.
"""
