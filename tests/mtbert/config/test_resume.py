"""What a resume may change (``RESUME_FIXED``, ``RESUME_CHANGEABLE``) and the conflicts it reports."""

from __future__ import annotations

import pytest

from mtbert.config import (
    RESUME_CHANGEABLE,
    RESUME_FIXED,
    RunConfig,
    may_change_at_resume,
    resume_conflicts,
    resume_fixed,
)

# What Population Based Training mutates, besides rates and weights that were never fixed.
CHANGEABLE = [
    "heads.sst.dropout", "heads.para.dropout", "heads.sts.dropout", "sampling.alpha", "sampling.anneal_start",
    "sampling.anneal_end", "sampling.ratios.sst", "sampling.ratios.para", "sampling.ratios.sts",
    "sampling.samples_per_epoch.sts", "optim.lr", "optim.head_lr", "optim.weight_decay", "grad.weights.sst",
    "losses.para.weight", "train.max_steps", "train.patience", "data.dir", "phases.1.steps", "phases.0.lr",
]  # fmt: skip
FIXED = {
    "model.encoder": "rebuilt from the checkpoint's own config", "model.freeze_depth": "rebuilt",
    "model.shared_pair_layer": "rebuilt", "heads.sst.kind": "rebuilt", "heads.para.hidden": "rebuilt",
    "heads.sts.pooling": "rebuilt", "heads.para.pair_encoding": "rebuilt", "heads.sts.bins": "rebuilt",
    "heads.sst": "rebuilt", "heads": "rebuilt", "sampling": "the plan it was saved with",
    "sampling.schedule": "another schedule is another plan", "sampling.batch_size": "length buckets",
    "sampling.mixed": "one task's batch, or one batch of every task", "sampling.per_step": "round-robin variant",
    "grad.method": "gradient-combiner state", "train.seed": "drawn from it", "data.max_length": "length-bucketed",
    "data.max_train_per_task": "task streams", "mlm.epochs": "mlm phases", "phases": "the run's phases",
    "phases.0.kind": "the run's phases", "phases.2.heads_only": "frozen encoder",
}  # fmt: skip


@pytest.mark.parametrize("key", CHANGEABLE)
def test_a_changeable_key_is_not_fixed(key):
    assert resume_fixed(key) is None and may_change_at_resume(key)


@pytest.mark.parametrize("key, why", FIXED.items())
def test_a_fixed_key_says_why(key, why):
    assert why in resume_fixed(key) and not may_change_at_resume(key)


def test_every_changeable_pattern_sits_under_a_fixed_key_and_says_what_happens():
    """An entry of RESUME_CHANGEABLE that no fixed key covers would be dead: its setting may change anyway."""
    for pattern, what in RESUME_CHANGEABLE.items():
        parent = pattern.rsplit(".", 1)[0]
        assert resume_fixed(parent) is not None, pattern
        assert what and pattern not in RESUME_FIXED


def test_resume_conflicts_let_the_changeable_settings_through_and_name_the_fixed():
    saved = RunConfig().with_overrides({"model.encoder": "tiny", "sampling.schedule": "ratios"})
    mutated = saved.with_overrides({"heads.sst.dropout": 0.0, "sampling.alpha": 0.9, "sampling.ratios.sts": 2,
                                    "sampling.samples_per_epoch.sst": 100, "sampling.anneal_end": 0.2})  # fmt: skip
    assert resume_conflicts(saved, mutated) == []
    fixed = mutated.with_overrides({"heads.sst.pooling": "mean", "sampling.mixed": True})
    conflicts = resume_conflicts(saved, fixed)
    assert [c.split(" is ")[0] for c in conflicts] == ["heads.sst.pooling", "sampling.mixed"]
    assert "one task's batch, or one batch of every task" in conflicts[1]
    # inside a phase's set: too
    phased = saved.with_overrides({"phases": ["multitask", "multitask"]})
    assert resume_conflicts(phased, phased.with_overrides({"phases.1.set": {"sampling.ratios.sst": 0}})) == []
    assert resume_conflicts(phased, phased.with_overrides({"phases.1.set": {"sampling.mixed": True}}))[0].startswith(
        "phases.1.set.sampling.mixed is true"
    )
