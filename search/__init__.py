"""search: hyperparameter search over mtbert runs with Ray Tune and Optuna.

The only package that imports Ray; it drives ``mtbert`` through its typed config.
"""
