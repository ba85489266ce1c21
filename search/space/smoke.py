"""The smoke profile (``--smoke``): the whole pipeline in about a minute on a laptop.

A tiny encoder, a few rows, a few steps, every phase short, a few trials. Its tune values go in
before ``--set``, so ``--smoke --set tune.num_samples=2`` still gets 2 trials; a dimension on a key
the smoke run fixes (``SMOKE_RUN``, a phase's length) is not searched.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from mtbert.config import RunConfig, set_dotted
from mtbert.model.pretrained import encoder_layers
from search.space.values import build

SMOKE_RUN = {
    "model.encoder": "tiny", "data.max_train_per_task": 256, "data.max_eval_per_task": 64,
    "data.max_length": 64, "sampling.batch_size": 8, "train.max_steps": 8, "train.eval_every": 2,
    "train.final_eval": False, "mlm.max_sentences": 256, "mlm.batch_size": 8,
}  # fmt: skip
SMOKE_PHASE_STEPS = {"mlm": 2, "multitask": 8, "specialist": 8}
SMOKE_TUNE = {
    "num_samples": 4, "max_concurrent": 2, "cpus_per_trial": 1, "gpus_per_trial": 0, "grace_period": 1,
    "reduction_factor": 2, "max_t": None, "eval_subset": 64, "final_eval": "none", "time_budget_s": 600,
}  # fmt: skip
PHASE_LENGTH = re.compile(r"^phases\.\d+\.(steps|eval_every)$")


def tiny_layers() -> int:
    """The smoke encoder's layers: a frozen depth beyond them is cut."""
    return encoder_layers(SMOKE_RUN["model.encoder"])


def is_smoke_key(key: str) -> bool:
    """Whether the smoke run fixes ``key`` (so a dimension on it is not searched)."""
    return key in SMOKE_RUN or PHASE_LENGTH.match(key) is not None


def shrink(config: RunConfig) -> RunConfig:
    """The smoke-test version of a run config, built."""
    data = config.to_dict()
    shrink_data(data)
    return build(data)


def shrink_data(data: dict[str, Any], like: RunConfig | None = None) -> None:
    """Make a config's ``data`` a smoke run: tiny encoder, a few rows and steps, every phase short.
    ``like`` (a space's smoke base, --set values included) gives the values instead of the smoke
    defaults, and the phase lengths when the phases in ``data`` are the base's."""
    for key, default in SMOKE_RUN.items():
        set_dotted(data, key, default if like is None else functools.reduce(getattr, key.split("."), like), None)
    data["model"]["freeze_depth"] = min(data["model"]["freeze_depth"], tiny_layers())
    same_phases = like is not None and [p.kind for p in like.phases] == [p["kind"] for p in data["phases"]]
    for i, phase in enumerate(data["phases"]):
        if same_phases:
            phase["steps"], phase["eval_every"] = like.phases[i].steps, like.phases[i].eval_every
            continue
        phase["steps"] = SMOKE_PHASE_STEPS[phase["kind"]]
        phase["eval_every"] = None if phase["kind"] == "mlm" else data["train"]["eval_every"]
