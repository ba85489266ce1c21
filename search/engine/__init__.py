"""The only code that imports ``ray`` or ``optuna``; a Ray upgrade touches this folder alone.

    session.py       joining a cluster or starting a local Ray on the loopback (``ray_session``)
    tuner.py         building, restoring and fitting the Tuner: the scheduler, the searcher, the callbacks
    trainable.py     the trainer as a Tune function trainable (the one caller of ``tune.report``)
    searcher.py      Optuna with early-stopped trials PRUNED, each trial's proposed_by; the saved study, importances
    study.py         tune.study_storage: the study in a database (SQLite, PostgreSQL, a journal), checks, the dashboard
    samplers.py      tune.sampler: each kind's options from Optuna's signatures, checked; the sampler built
    warm_start.py    tune.warm_start in the study: an earlier search's trials added, the points enqueued
    schedulers.py    tune.scheduler: ASHA, HyperBand, FIFO, or PBT with each trial's lineage (``LineagePBT``)
    rungs.py         ASHA whose rungs, brackets and decisions survive ``resume`` (``ResumableASHA``)
    repair.py        a saved Optuna study cut short by a kill, rebuilt (or pointed at its database) before ``resume``
    retention.py     the checkpoint a saved state points at, kept until the next state is saved
    tensorboard.py   per-trial TensorBoard curves and HParams, fed by a Tune callback
    trackers.py      tune.trackers: MLflow and W&B, a parent run per search and a child per trial (the callback)
    tracker_runs.py  every mlflow and wandb call: the runs of a search
    interrupt.py     Ctrl-C: Tune's stop request, then ``SearchInterrupted``
    analysis.py      a search folder's trials as Tune saved them
    retrain.py       ``ensemble --retrain-seeds``: a grid of (trial, seed)
    cluster.py       a cluster config as ``ray up`` runs it (``mtbert-search cluster check``)
    trial_starts.py  when each trial started (benchmarks)
    stock.py         the search a user wires from Ray's and Optuna's defaults (benchmarks/search_quality.py)

Ray's private APIs are used only where Ray 2.60 has no public one, each behind one function that
says why: ``session._start_local_ray``, ``session.set_progress_metrics``, ``searcher._internals``,
``cluster.prepare`` and ``cluster.default_inbound_rules``. Two classes extend a Ray scheduler through
its internals, each saying which and why in its docstring: ``rungs.ResumableASHA`` (the brackets'
rungs, to save and restore them) and ``schedulers.LineagePBT`` (PBT's per-trial state, its exploit
step and the checkpoint a recipient goes on from: ``_pin_clone``).
"""
