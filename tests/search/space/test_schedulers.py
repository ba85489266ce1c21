"""tune.scheduler: every option checked where it was written, before anything starts (file, key and
what is allowed), the layering of ASHA's options, and PBT's mutations against the dimensions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mtbert.config.resume import resume_fixed
from search.space.file import SpaceError, load_space
from search.space.schedulers import SchedulerSettings

BASE = "model: {encoder: tiny}\ntrain: {max_steps: 40, eval_every: 10}\n"  # 4 evaluations
SEARCH = (
    "search:\n  optim.lr: {loguniform: [1.0e-5, 1.0e-4]}\n  optim.head_lr: {loguniform: [1.0e-4, 1.0e-3]}\n"
    "  model.freeze_depth: {int: [0, 1]}\n"
)
SPACE = BASE + SEARCH


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, overrides: dict | None = None, **kw):
    return load_space(write(tmp_path, text), overrides, profile="cpu", **kw)


BAD = [
    (SPACE + "tune: {scheduler: hyperbnd}\n", {}, "tune.scheduler",
     "scheduler is 'hyperbnd' (did you mean 'hyperband'?), but must be one of: asha, hyperband, pbt, fifo"),
    (SPACE + "tune: {scheduler: {kind: pbtt}}\n", {}, "tune.scheduler.kind", "(did you mean 'pbt'?)"),
    (SPACE + "tune: {scheduler: {grace_period: 2}}\n", {}, "tune.scheduler", "has no kind; give kind: asha | hyperband"),
    (SPACE + "tune: {scheduler: null}\n", {}, "tune.scheduler", "scheduler is null, but must be one of"),
    (SPACE + "tune: {scheduler: {kind: fifo, grace_period: 2}}\n", {}, "tune.scheduler.grace_period",
     "fifo has no option 'grace_period' (grace_period is an option of asha); fifo takes no options"),
    (SPACE + "tune: {scheduler: {kind: hyperband, grace_period: 2}}\n", {}, "tune.scheduler.grace_period",
     "hyperband takes: reduction_factor, max_t"),
    (SPACE + "tune: {scheduler: {kind: asha, perturbation_interval: 2}}\n", {}, "tune.scheduler.perturbation_interval",
     ("asha has no option 'perturbation_interval' (perturbation_interval is an option of pbt); asha takes: "
      "grace_period, reduction_factor, max_t")),
    (SPACE + "tune: {scheduler: {kind: pbt, quantile_fractoin: 0.2}}\n", {}, "tune.scheduler.quantile_fractoin",
     "(did you mean 'quantile_fraction'?)"),
    (SPACE + "tune: {scheduler: {kind: pbt, quantile_fraction: 0.7}}\n", {}, "tune.scheduler.quantile_fraction",
     "quantile_fraction is 0.7, but must be a number > 0 and <= 0.5"),
    (SPACE + "tune: {scheduler: {kind: pbt, resample_probability: 1.5}}\n", {},
     "tune.scheduler.resample_probability", "must be a probability"),
    (SPACE + "tune: {scheduler: {kind: pbt, perturbation_interval: 0}}\n", {},
     "tune.scheduler.perturbation_interval", "must be an integer >= 1 (evaluations)"),
    (SPACE + "tune: {scheduler: {kind: pbt, perturbation_interval: 4}}\n", {},
     "tune.scheduler.perturbation_interval", "is 4, but must be < max_t (4 evaluations)"),
    (SPACE + "tune: {scheduler: {kind: pbt, mutations: optim.lr}}\n", {}, "tune.scheduler.mutations",
     "must be a list of keys of dimensions under search:"),
    (SPACE + "tune: {scheduler: {kind: pbt, mutations: [optim.lr, optim.lr]}}\n", {}, "tune.scheduler.mutations",
     "lists optim.lr twice"),
    (SPACE + "tune: {scheduler: {kind: pbt, mutations: [optim.weight_decay]}}\n", {}, "tune.scheduler.mutations",
     "lists optim.weight_decay, which is not a dimension under search"),
    (SPACE + "tune: {scheduler: {kind: asha, reduction_factor: 1}}\n", {}, "tune.scheduler.reduction_factor",
     "reduction_factor is 1, but must be >= 2"),
    (SPACE + "tune: {grace_period: 2, scheduler: {kind: asha, grace_period: 3}}\n", {},
     "tune.scheduler.grace_period", "is the same setting as tune.grace_period, given in the same place"),
    (SPACE + "tune: {scheduler: pbt, num_samples: 1}\n", {}, "tune.num_samples",
     "num_samples is 1, but tune.scheduler is pbt, which needs at least 2 trials running together"),
    (SPACE + "tune: {scheduler: pbt, max_concurrent: 1}\n", {}, "tune.max_concurrent", "needs at least 2 trials"),
    (SPACE, {"tune.scheduler.kind": "pbt", "tune.scheduler.quantile_fraction": "0"},
     "--set tune.scheduler.quantile_fraction", "must be a number > 0"),
    (SPACE + "tune: {profiles: {cpu: {scheduler: {kind: fifo, max_t: 2}}}}\n", {},
     "tune.profiles.cpu.scheduler.max_t", "fifo has no option 'max_t'"),
]  # fmt: skip


@pytest.mark.parametrize("text, overrides, key, fragment", BAD)
def test_bad_scheduler_settings_fail_before_start(tmp_path, monkeypatch, text, overrides, key, fragment):
    monkeypatch.chdir(tmp_path)  # the default results folder would be made here
    with pytest.raises(SpaceError) as info:
        load(tmp_path, text, overrides)
    e = info.value
    assert e.path == str(tmp_path / "space.yaml") and e.key == key, str(e)
    assert fragment in e.message, e.message
    assert os.listdir(tmp_path) == ["space.yaml"]  # nothing started


@pytest.mark.parametrize("key", ["model.freeze_depth", "model.encoder", "heads.sst.kind", "sampling.schedule",
                                 "sampling.batch_size", "grad.method", "phases"])  # fmt: skip
def test_a_mutation_that_cannot_change_mid_run_is_refused_with_the_reason(tmp_path, monkeypatch, key):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpaceError) as info:
        load(tmp_path, SPACE + f"tune: {{scheduler: {{kind: pbt, mutations: [optim.lr, {key}]}}}}\n")
    why = resume_fixed(key)
    assert why is not None
    assert info.value.key == "tune.scheduler.mutations"
    assert f"lists {key}, but PBT cannot mutate it: it cannot change during a run ({why})" in info.value.message


def test_asha_is_the_default_and_old_top_level_settings_still_apply(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = load(tmp_path, SPACE + "tune: {grace_period: 2, reduction_factor: 3}\n")
    t = space.tune
    assert t.scheduler == SchedulerSettings(kind="asha")
    assert (t.grace_period, t.reduction_factor, t.max_t) == (2, 3, 4)
    assert "ASHA over 4 evaluations (grace 2, reduction 3)" in space.notes[0]


def test_asha_options_under_scheduler_are_the_top_level_settings_and_later_layers_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = SPACE + "tune:\n  scheduler: {kind: asha, grace_period: 2, reduction_factor: 4}\n" \
                   "  profiles: {cpu: {grace_period: 3}}\n"  # fmt: skip
    t = load(tmp_path, text).tune
    assert (t.scheduler.kind, t.grace_period, t.reduction_factor) == ("asha", 3, 4)  # the profile comes later
    t = load(tmp_path, text, {"tune.scheduler.reduction_factor": "2"}).tune
    assert (t.grace_period, t.reduction_factor) == (3, 2)
    with pytest.raises(SpaceError) as info:  # checked as grace_period is, named where it was written
        load(tmp_path, SPACE + "tune: {scheduler: {kind: asha, grace_period: 9}}\n")
    assert info.value.key == "tune.scheduler.grace_period" and "must be <= max_t (4" in info.value.message


def test_hyperband_and_fifo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = load(tmp_path, SPACE + "tune: {scheduler: {kind: hyperband, reduction_factor: 4}}\n")
    assert space.tune.scheduler.kind == "hyperband" and space.tune.reduction_factor == 4
    assert "HyperBand over 4 evaluations (reduction 4)" in space.notes[0]
    space = load(tmp_path, SPACE + "tune: {scheduler: fifo, grace_period: 2}\n")  # the top level: ASHA's, ignored
    assert space.tune.scheduler.kind == "fifo" and "no early stopping (FIFO)" in space.notes[0]


def test_pbt_options_and_default_mutations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = load(tmp_path, SPACE + "tune: {scheduler: pbt}\n")
    s = space.tune.scheduler
    # every searched dimension that may change during a run: the learning rates, not freeze_depth
    assert s.mutations == ("optim.lr", "optim.head_lr")
    assert (s.perturbation_interval, s.interval(4), s.quantile_fraction, s.resample_probability) == (None, 1, 0.25,
                                                                                                   0.25)  # fmt: skip
    assert "PBT over 4 evaluations (every 1, the bottom 0.25 exploit the top; mutating optim.lr, optim.head_lr)" \
        in space.notes[0]  # fmt: skip
    space = load(tmp_path, SPACE + "tune: {scheduler: {kind: pbt, perturbation_interval: 2, quantile_fraction: 0.5, "
                                   "resample_probability: 0, mutations: [optim.head_lr]}}\n")  # fmt: skip
    s = space.tune.scheduler
    assert (s.mutations, s.interval(4), s.quantile_fraction, s.resample_probability) == (("optim.head_lr",), 2, 0.5, 0)
    # --set merges single options into the file's scheduler
    s = load(tmp_path, SPACE + "tune: {scheduler: {kind: pbt, mutations: [optim.lr]}}\n",
             {"tune.scheduler.perturbation_interval": "3"}).tune.scheduler  # fmt: skip
    assert (s.kind, s.mutations, s.perturbation_interval) == ("pbt", ("optim.lr",), 3)


def test_pbt_with_nothing_to_mutate_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpaceError) as info:
        load(tmp_path, BASE + "search:\n  model.freeze_depth: {int: [0, 1]}\ntune: {scheduler: pbt}\n")
    assert info.value.key == "tune.scheduler.mutations"
    assert "model.freeze_depth: " + resume_fixed("model.freeze_depth") in info.value.message


def test_smoke_shortens_a_perturbation_interval_too_long_for_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = BASE.replace("max_steps: 40", "max_steps: 100") + SEARCH
    text += "tune: {scheduler: {kind: pbt, perturbation_interval: 5}}\n"  # 10 evaluations, the smoke run's 4
    assert load(tmp_path, text).tune.scheduler.perturbation_interval == 5
    space = load(tmp_path, text, smoke=True)
    assert space.tune.scheduler.interval(space.tune.max_t) == 1
    assert any("perturbation_interval 5 shortened to 1" in n for n in space.notes)


def test_shipped_space_runs_pbt_on_its_changeable_dimensions(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MTBERT_DATA", str(tmp_path))
    from helpers import REPO

    space = load_space(REPO / "spaces" / "pcgrad.yaml", {"tune.scheduler": "pbt"}, profile="cpu", smoke=True)
    mutated = space.tune.scheduler.mutations
    assert {"optim.lr", "optim.head_lr", "grad.weights.sst"} <= set(mutated)
    assert not {"model.freeze_depth", "grad.method", "sampling.schedule"} & set(mutated)
    assert all(resume_fixed(k) is None for k in mutated)
