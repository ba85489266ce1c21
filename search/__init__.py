"""search: hyperparameter search over mtbert runs with Ray Tune and Optuna.

The only package that imports Ray; it drives ``mtbert`` through its typed config.

- ``space``, ``dimensions``, ``settings``: a space file (run config, ``search:``, ``tune:``), checked before anything runs
- ``trainable``: the trainer as a Tune function trainable (the one caller of ``tune.report``), shared data
- ``tuner``: Optuna (TPE) + ASHA + Tuner, start and resume, reading a search's results
- ``lock``: one writer per search folder (the search, ``resume``, ``ensemble --retrain-seeds``)
- ``tensorboard``: per-trial curves and the HParams summary
- ``export``, ``status``: the best trials as mtbert checkpoints; the trials as a table
- ``cli``: ``mtbert-search``
"""
