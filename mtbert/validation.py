"""A run config checked as a whole, once, where it enters: ``load_config`` (a YAML file and its
``--set`` overrides) and ``validate`` (a config built in code, a search trial's).

Building a config (``mtbert.config``) checks each field by itself; here the checks that span
several settings or need the plug-ins run: every plug-in name is registered (heads, losses,
sampling schedules, gradient combiners), each plug-in's own check (``Schedule.check``,
``Combiner.check``, the heads' ``check_heads``, the losses' ``compatibility``), the phases, each
phase's config as it will train, and the encoder's depth from its config.json. Errors are
``ConfigError`` naming the file (``source``), the dotted key, the value and what is allowed.

This module sits above the plug-ins and the config: nothing in ``config``, ``data``, ``model``,
``methods``, ``train.losses`` or ``train.optim`` imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtbert.config.fields import ConfigError
from mtbert.config.phases import phase_config
from mtbert.config.run import RunConfig, read_config
from mtbert.config.sections import PHASE_SECTIONS
from mtbert.data.sampling import SCHEDULES
from mtbert.methods import COMBINERS
from mtbert.model.heads import HEADS
from mtbert.model.multitask import check_heads
from mtbert.model.pretrained import encoder_layers
from mtbert.registry import Registry
from mtbert.tasks import TASKS
from mtbert.train.losses import LOSSES, compatibility


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, section: bool = True) -> RunConfig:
    """Read a run config from YAML (``yaml.safe_load`` only), apply ``--set`` overrides and validate:
    the file's config as written (errors name the file), then with the overrides (errors name --set).

    Top-level sections other than the run's (a search space's ``search:`` and ``tune:``) are left to
    their readers when ``section`` is true.
    """
    config = read_config(path, section=section)
    validate(config, str(path))
    if overrides:
        config = config.with_overrides(overrides)
        validate(config, "--set")
    return config


def validate(config: RunConfig, source: str | None = None) -> RunConfig:
    """Raise ``ConfigError`` for the first problem of ``config`` as a whole; return it unchanged."""
    try:
        check_plugins(config)
    except ConfigError as e:
        raise ConfigError(e.key, e.message, source) from None
    if config.train.eval_every > config.train.max_steps:
        raise ConfigError(
            "train.eval_every",
            f"is {config.train.eval_every}, but must be <= train.max_steps ({config.train.max_steps})",
            source,
        )
    validate_phases(config, source)
    layers = encoder_layers(config.model.encoder)
    if layers is not None and config.model.freeze_depth > layers:
        raise ConfigError(
            "model.freeze_depth",
            f"is {config.model.freeze_depth}, but {config.model.encoder!r} has {layers} layers "
            f"(allowed: 0 to {layers}; {layers} trains the heads only)",
            source,
        )
    return config


def check_plugins(config: RunConfig) -> None:
    """Every plug-in ``config`` names exists, and each one's own check passes."""
    names: list[tuple[str, Any, Registry[Any]]] = [
        ("sampling.schedule", config.sampling.schedule, SCHEDULES),
        ("grad.method", config.grad.method, COMBINERS),
    ]
    for task in TASKS:
        names.append((f"heads.{task}.kind", getattr(config.heads, task).kind, HEADS[task]))
        names.append((f"losses.{task}.kind", getattr(config.losses, task).kind, LOSSES))
    for key, name, registry in names:
        if name not in registry:
            raise ConfigError(key, registry.unknown_message(name, named=False))
    for task in TASKS:
        head = getattr(config.heads, task)
        problem = compatibility(task, head, getattr(config.losses, task), head.pair_encoding)
        if problem:
            raise ConfigError(f"heads.{task}.kind", problem)
    check_heads(config)
    SCHEDULES.get(config.sampling.schedule).check(config)
    COMBINERS.get(config.grad.method).check(config)


def validate_phases(config: RunConfig, source: str | None) -> None:
    """The phases' order and settings, and each phase's config as it will train (``phase_config``)."""
    kinds = [p.kind for p in config.phases]
    if kinds and all(k == "mlm" for k in kinds):
        raise ConfigError("phases", f"is {kinds}, but a run needs a multitask or specialist phase after mlm", source)
    for i, kind in enumerate(kinds):
        if kind == "mlm" and any(k != "mlm" for k in kinds[:i]):
            raise ConfigError(f"phases.{i}.kind", f"is 'mlm' after {kinds[:i]}; mlm phases come first "
                              "(fine-tuning starts from their encoder)", source)
        if kind == "specialist" and i != len(kinds) - 1:
            raise ConfigError(f"phases.{i}.kind", f"is 'specialist' in {kinds}, but the specialist phase must be "
                              "the last (its model has one encoder per task)", source)
    for i, phase in enumerate(config.phases):
        if phase.heads_only and phase.kind != "specialist":
            raise ConfigError(f"phases.{i}.heads_only", f"is true, but only a specialist phase trains heads alone "
                              f"(this one is {phase.kind!r})", source)
        for key in phase.set:
            if not any(key == p or key.startswith(p + ".") for p in PHASE_SECTIONS):
                raise ConfigError(f"phases.{i}.set.{key}", "cannot change per phase; a phase may set keys under: "
                                  + ", ".join(PHASE_SECTIONS), source)
        try:
            validate(phase_config(config, i))
        except ConfigError as e:  # a problem of this phase's set: name it where the user wrote it
            key = e.key if e.key.startswith("phases.") else f"phases.{i}.set.{e.key}"
            raise ConfigError(key, e.message, source) from None
        if phase.eval_every and phase.steps and phase.eval_every > phase.steps:
            raise ConfigError(f"phases.{i}.eval_every", f"is {phase.eval_every}, but must be <= phases.{i}.steps "
                              f"({phase.steps})", source)
