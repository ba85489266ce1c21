"""The run config: typed dataclasses, one flat dotted name per setting, read from YAML.

- ``fields``: ``ConfigError`` and the per-field rules (``check(default, rule)``);
- ``sections``: one dataclass per section (``OptimConfig``, ``HeadConfig``, ``PhaseConfig``, ...);
- ``run``: ``RunConfig`` and building it from plain data, a YAML file or dotted overrides;
- ``reader``: the one YAML reader (duplicate keys refused, one-line errors);
- ``phases``: the config each phase trains with, a run's steps and evaluations;
- ``resume``: the settings fixed at resume, and those that may change.

This package is the bottom of ``mtbert``: it imports only ``mtbert.errors`` and its own modules,
knows no plug-in and reads no file but the YAML it is given. Every field is checked when a config
is built; the checks that need the plug-ins (names of heads, losses, schedules, gradient methods,
how they fit together) or the encoder's shape run once, at each entry point, in ``mtbert.validation``.

Code outside ``mtbert`` may import these names from here; modules inside ``mtbert`` import them
from the module that defines them.
"""

from mtbert.config.fields import ConfigError, check
from mtbert.config.phases import evaluations, phase_config, run_phases, total_steps
from mtbert.config.reader import DuplicateKey, load_yaml, read_text, refused_tag, yaml_problem
from mtbert.config.resume import RESUME_CHANGEABLE, RESUME_FIXED, may_change_at_resume, resume_conflicts, resume_fixed
from mtbert.config.run import RunConfig, all_keys, flatten, from_dict, parse_set, parse_value, read_config, set_dotted
from mtbert.config.sections import (
    PHASE_KINDS,
    PHASE_SECTIONS,
    DataConfig,
    GradConfig,
    HeadConfig,
    HeadsConfig,
    LossConfig,
    LossesConfig,
    MlmConfig,
    ModelConfig,
    OptimConfig,
    PerTask,
    PerTaskCount,
    PhaseConfig,
    SamplingConfig,
    TrainConfig,
)

__all__ = [
    "PHASE_KINDS", "PHASE_SECTIONS", "RESUME_CHANGEABLE", "RESUME_FIXED", "ConfigError", "DataConfig", "GradConfig",
    "HeadConfig", "HeadsConfig", "LossConfig", "LossesConfig", "MlmConfig", "ModelConfig", "OptimConfig", "PerTask",
    "PerTaskCount", "PhaseConfig", "RunConfig", "SamplingConfig", "TrainConfig", "all_keys", "check",
    "DuplicateKey", "evaluations", "flatten", "from_dict", "load_yaml", "may_change_at_resume", "parse_set",
    "parse_value", "phase_config", "read_config", "read_text", "refused_tag", "resume_conflicts", "resume_fixed",
    "run_phases", "set_dotted", "total_steps", "yaml_problem",
]  # fmt: skip
