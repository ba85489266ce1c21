"""Search spaces: everything about a space file, checked before Ray starts or any folder exists.

The parts, each in its own module:

- ``file``: the space file format and ``load_space``: a base run config, a ``search:`` section
  and ``tune:`` settings, merged in layers (the file, a profile, ``--smoke``, ``--set``), and the
  ``Space`` a search runs (``define_by_run`` for Optuna, ``config_for`` for a trial);
- ``dimensions``: the ``search:`` entries, one small class per kind (``Choice``, ``IntRange``,
  ``Uniform``, ``LogUniform``) registered in ``KINDS``; ``conditions``: their ``when:`` checks
  and order;
- ``settings``: the tune settings (``TuneSettings``), each a field with a default and a rule, as
  the run config declares its own (``mtbert.config.check``);
- ``values`` and ``checks``: a space's values on the run config, and the checks of each
  dimension's extremes (and pairs of them) against it;
- ``smoke``: the smoke profile (``--smoke``);
- ``sampler``: ``tune.sampler`` (the Optuna sampler, its options and the default rule);
  ``warm_start``: ``tune.warm_start`` (points as Optuna parameters, earlier search folders);
  ``schedulers``: ``tune.scheduler``; ``trackers``: ``tune.trackers`` (TensorBoard, MLflow, W&B);
- ``search.errors.SpaceError``: the one error, naming the file, the key path and what is allowed.

Dependencies point down: ``search.space`` imports ``mtbert``'s public API (``validate``), its
config (``mtbert.config``) and words (``mtbert.errors``), two facts (the tiny encoder's depth,
``mtbert.model.pretrained.encoder_layers``; the dev metrics' names, ``mtbert.evaluate.Scores``)
and ``search.errors``; neither Ray nor Optuna: a dimension asks for its value through the trial
object it is handed (``trial.suggest_float(...)``), and the engine hands it an Optuna trial. From
``search.engine`` one function alone, imported when a file gives ``tune.sampler`` options:
``search.engine.samplers.check_options``, since the options a sampler takes are its Optuna
constructor's.
"""
