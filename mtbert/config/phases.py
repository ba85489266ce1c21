"""A run's phases: the config each phase trains with (``phase_config``), and the steps and
evaluations of the whole run, read from the config as it is (no rebuilding, no validation)."""

from __future__ import annotations

import copy
import dataclasses
import math

from mtbert.config.fields import ConfigError
from mtbert.config.run import RunConfig, from_dict, parse_value, set_dotted
from mtbert.config.sections import PhaseConfig


def phase_config(config: RunConfig, index: int) -> RunConfig:
    """The run config phase ``index`` trains with: its ``set:`` applied, its steps, learning rates
    and evaluation interval in ``train``/``optim``, and no phases of its own. A config without
    ``phases`` trains as it is."""
    if not config.phases:
        return config
    phase = config.phases[index]
    if phase.set:  # values as the user wrote them ("2e-5"): read and checked like --set
        data = config.to_dict()
        data["phases"] = []
        try:
            for key, value in phase.set.items():
                set_dotted(data, key, parse_value(value) if isinstance(value, str) else value, None)
            base = from_dict(data)
        except ConfigError as e:  # a bad value in this phase's set: name it where the user wrote it
            key = e.key if e.key.startswith("phases.") else f"phases.{index}.set.{e.key}"
            raise ConfigError(key, e.message) from None
    else:
        base = dataclasses.replace(copy.deepcopy(config), phases=[])
    max_steps, eval_every = _steps(base, phase)
    return dataclasses.replace(
        base,
        train=dataclasses.replace(base.train, max_steps=max_steps, eval_every=eval_every),
        optim=dataclasses.replace(base.optim, lr=phase.lr or base.optim.lr, head_lr=phase.head_lr or base.optim.head_lr),
    )


def _steps(config: RunConfig, phase: PhaseConfig) -> tuple[int, int]:
    """A phase's (max_steps, eval_every): its own, else the run's (which a ``set:`` cannot change)."""
    max_steps = phase.steps or config.train.max_steps
    return max_steps, min(phase.eval_every or config.train.eval_every, max_steps)


def run_phases(config: RunConfig) -> list[PhaseConfig]:
    """The phases a run goes through: ``phases``, or one multitask phase."""
    return list(config.phases) or [PhaseConfig(kind="multitask")]


def _trained_steps(config: RunConfig) -> list[tuple[int, int]]:
    if not config.phases:
        return [(config.train.max_steps, config.train.eval_every)]
    return [_steps(config, p) for p in config.phases if p.kind != "mlm"]


def total_steps(config: RunConfig) -> int:
    """The global step of a run's last evaluation: the steps of its multitask and specialist phases."""
    return sum(steps for steps, _ in _trained_steps(config))


def evaluations(config: RunConfig) -> int:
    """Evaluations a run reports: every ``eval_every`` steps and at the end of each trained phase."""
    return sum(math.ceil(steps / every) for steps, every in _trained_steps(config))
