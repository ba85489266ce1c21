"""Space files: the format, every check load_space makes, define-by-run with a real Optuna study,
profiles, smoke, --set, and the shipped spaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from mtbert.config import RunConfig
from mtbert.validation import load_config
from search.space import file as space_module
from search.space.file import Dimension, Space, SpaceError, TuneSettings, detect_profile, evaluations, load_space
import helpers

REPO = helpers.REPO
SPACES = sorted((REPO / "spaces").glob("*.yaml"))
BASE = "model: {encoder: tiny}\ntrain: {max_steps: 40, eval_every: 10}\n"  # 4 evaluations, a 2-layer encoder
optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))


def ask(space: Space, n: int, seed: int = 0) -> list[dict]:
    """``n`` trials of a real study, each told a score, as Ray's OptunaSearch drives it."""
    s, out = study(seed), []
    for i in range(n):
        trial = s.ask()
        assert space.define_by_run(trial) is None
        out.append(dict(trial.params))
        s.tell(trial, float(i % 3))
    return out


# ---- bad space files: one error each, naming the file, the key and what is allowed ---------------

S = BASE + "search:\n"
BAD = [
    ("model: {encoder: tiny\nsearch: [", "yaml", r"not valid YAML at line \d+, column \d+"),
    ("- model\n- search\n", "top level", "must be a mapping of sections"),
    (BASE + "optim: {lrr: 1.0e-5}\n", "optim.lrr", "unknown setting (did you mean 'optim.lr'?)"),
    (BASE + "model: {encoder: tiny}\n", "yaml", "duplicate key 'model'"),
    ("model: {encoder: tiny, freeze_depth: 3}\n", "model.freeze_depth", "is 3, but 'tiny' has 2 layers"),
    (
        S + "  optim.lrr: {loguniform: [1.0e-5, 1.0e-4]}\n",
        "search.optim.lrr",
        "is not a run setting (did you mean 'optim.lr'?)",
    ),
    (
        S + "  optim.lr: {logunifrom: [1.0e-5, 1.0e-4]}\n",
        "search.optim.lr",
        "unknown dimension kind 'logunifrom' (did you mean 'loguniform'?); kinds: choice, int, loguniform, uniform",
    ),
    (S + "  optim.lr: {uniform: [1.0e-5, 1.0e-4], wen: {x: [1]}}\n", "search.optim.lr", "(did you mean 'when'?)"),
    (S + "  optim.lr: {uniform: [1.0e-5, 1.0e-4], choice: [1]}\n", "search.optim.lr", "has 2 kinds"),
    (S + "  optim.lr: 1.0e-5\n", "search.optim.lr", "must be a dimension such as"),
    (
        S + "  optim: {lr: {loguniform: [1.0e-5, 1.0e-4]}}\n",
        "search.optim",
        ("is a section; key each dimension by its dotted setting, e.g. optim.lr"),
    ),
    (
        S + "  heads.sst.dropout: {uniform: [low, 0.5]}\n",
        "search.heads.sst.dropout",
        "uniform bounds must be two numbers [low, high]",
    ),
    (S + "  heads.sst.dropout: {uniform: [0.1]}\n", "search.heads.sst.dropout", "two numbers"),
    (S + "  model.freeze_depth: {int: [0, 1.5]}\n", "search.model.freeze_depth", "int bounds must be two integers"),
    (S + "  grad.method: {choice: sum}\n", "search.grad.method", "choice is 'sum', but must be a non-empty list"),
    (S + "  grad.method: {choice: []}\n", "search.grad.method", "must be a non-empty list"),
    (S + "  grad.method: {choice: [sum, sum]}\n", "search.grad.method", "choice has 'sum' twice"),
    (
        S + "  grad.method: {choice: [sum, weighted]}\n  grad.weights.sst: {uniform: [0.5, 2.0], when: weighted}\n",
        "search.grad.weights.sst.when",
        "must be a mapping {dimension key: [values]}",
    ),
    (
        S + "  grad.method: {choice: [sum, weighted]}\n  grad.weights.sst: {uniform: [0.5, 2.0], "
        "when: {grad.method: weighted}}\n",
        "search.grad.weights.sst.when.grad.method",
        "must be a non-empty list",
    ),
    (S + "  optim.lr: {uniform: [1.0e-3, 1.0e-4]}\n", "search.optim.lr", "range [0.001, 0.0001] is empty: low must be"),
    (S + "  heads.sst.dropout: {uniform: [0.3, 0.3]}\n", "search.heads.sst.dropout", "is empty"),
    (
        S + "  optim.lr: {loguniform: [0, 1.0e-3]}\n",
        "search.optim.lr",
        "loguniform bounds are [0, 0.001], but must be > 0",
    ),
    (S + "  optim.lr: {loguniform: [1.0e-5, 1.0e-3], step: 1.0e-5}\n", "search.optim.lr.step", "takes no step"),
    (
        S + "  train.max_steps: {int: [20, 45], step: 10}\n",
        "search.train.max_steps.step",
        "not a whole number of steps of 10; end it at 40 or 50",
    ),
    (
        S + "  model.freeze_depth: {int: [0, 4]}\n",
        "search.model.freeze_depth",
        "high 4: is 4, but 'tiny' has 2 layers (allowed: 0 to 2",
    ),
    (S + "  model.freeze_depth: {choice: [0, 3]}\n", "search.model.freeze_depth", "choice 3: is 3, but 'tiny' has 2"),
    (
        (
            "model: {encoder: tiny}\nsampling: {ratios: {sst: 0, para: 0, sts: 0}}\nsearch:\n"
            "  sampling.schedule: {choice: [round_robin, ratios]}\n  sampling.ratios.sst: {choice: [0]}\n"
        ),
        "search.sampling.ratios.sst",
        (
            "choice 0 (with sampling.schedule='ratios'): sampling.ratios: are all zero, but "
            "at least one task needs a ratio > 0"
        ),
    ),
    (
        (
            "model: {encoder: tiny}\nsampling: {schedule: ratios}\nsearch:\n  sampling.ratios.sst: {int: [0, 2]}\n"
            "  sampling.ratios.para: {int: [0, 3]}\n  sampling.ratios.sts: {int: [0, 1]}\n"
        ),
        "search.sampling.ratios.sst",
        "low 0: sampling.ratios: are all zero",
    ),
    (
        "model: {encoder: tiny}\nsampling: {schedule: ratios}\nsearch:\n  sampling.ratios.sst: {uniform: [0.5, 2.0]}\n",
        "search.sampling.ratios.sst",
        "ratio * sampling.batch_size must be a whole number",
    ),
    (
        S + "  grad.method: {choice: [sum, pcgard]}\n",
        "search.grad.method",
        "choice 'pcgard': unknown 'pcgard' (did you mean 'pcgrad'?); choose from: ",
    ),
    (
        S + "  heads.sst.kind: {choice: [mlp, lstm]}\n",
        "search.heads.sst.kind",
        "unknown 'lstm'; choose from: linear, mlp",
    ),
    (S + "  losses.sts.kind: {choice: [mse, huber]}\n", "search.losses.sts.kind", "unknown 'huber'; choose from: bce"),
    (
        S + "  sampling.schedule: {choice: [round_robin, roundrobin]}\n",
        "search.sampling.schedule",
        "unknown 'roundrobin' (did you mean 'round_robin'?)",
    ),
    (
        S + "  heads.sst.pooling: {choice: [cls, max]}\n",
        "search.heads.sst.pooling",
        "choice 'max': is \"max\", but must be one of: cls, pooler, mean",
    ),
    (
        S + "  heads.sst.dropout: {uniform: [0.1, 1.5]}\n",
        "search.heads.sst.dropout",
        "high 1.5: is 1.5, but must be in [0.0, 1.0)",
    ),
    (
        S + "  losses.sts.kind: {choice: [mse, cosine_mse]}\n",
        "search.losses.sts.kind",
        "choice 'cosine_mse': heads.sts.kind: losses.sts.kind 'cosine_mse' needs",
    ),
    (  # each value is fine with the other's first value; only the pair fails
        S + "  heads.sts.kind: {choice: [siamese, regression]}\n  losses.sts.kind: {choice: [mse, cosine_mse]}\n",
        "search.heads.sts.kind",
        "choice 'regression' (with losses.sts.kind='cosine_mse'): losses.sts.kind 'cosine_mse' needs",
    ),
    (
        S + "  train.eval_every: {int: [10, 50]}\n",
        "search.train.eval_every",
        "high 50: is 50, but must be <= train.max_steps (40)",
    ),
    (
        S + "  phases: {choice: [[multitask], [multitask, specialist]]}\n  phases.1.steps: {int: [10, 20]}\n",
        "search.phases.1.steps",
        "low 10 (with phases=[\"multitask\"]): has index '1', but phases has 1 item(s)",
    ),
    (
        S + "  grad.method: {choice: [sum, weighted]}\n  grad.weights.sst: {uniform: [0.5, 2.0], "
        "when: {grad.methd: [weighted]}}\n",
        "search.grad.weights.sst.when",
        "refers to grad.methd, which is not in search (did you mean 'grad.method'?)",
    ),
    (
        S + "  grad.method: {choice: [sum, weighted]}\n  grad.weights.sst: {uniform: [0.5, 2.0], "
        "when: {grad.method: [pcgrad_weighted]}}\n",
        "search.grad.weights.sst.when.grad.method",
        "has 'pcgrad_weighted', which grad.method can never take; it is choice [sum, weighted]",
    ),
    (
        S + "  optim.lr: {loguniform: [1.0e-5, 1.0e-4]}\n  optim.head_lr: {loguniform: [1.0e-4, 1.0e-3], "
        "when: {optim.lr: [1.0e-5]}}\n",
        "search.optim.head_lr.when",
        "conditions may only refer to choice and int",
    ),
    (
        S + "  grad.method: {choice: [sum, weighted], when: {sampling.schedule: [ratios]}}\n"
        "  sampling.schedule: {choice: [round_robin, ratios], when: {grad.method: [weighted]}}\n",
        "search.grad.method.when",
        "conditions form a cycle: grad.method -> sampling.schedule -> grad.method",
    ),
    (
        S + "  losses.sts.kind: {choice: [mse, ce]}\n  heads.sts.kind:\n"
        "    - {choice: [regression], when: {losses.sts.kind: [mse]}}\n"
        "    - {choice: [bins], when: {losses.sts.kind: [mse, ce]}}\n",
        "search.heads.sts.kind",
        "has 2 alternatives whose conditions can hold at once",
    ),
    (
        S + "  heads.sts.kind:\n    - {choice: [regression]}\n    - {choice: [bins]}\n",
        "search.heads.sts.kind#0",
        "needs a when: condition",
    ),
    (BASE + "tune: {num_sample: 4}\n", "tune.num_sample", "unknown setting (did you mean 'num_samples'?)"),
    (BASE + "tune: {reduction_factor: 1}\n", "tune.reduction_factor", "reduction_factor is 1, but must be >= 2"),
    (BASE + "tune: {gpus_per_trial: -0.5}\n", "tune.gpus_per_trial", "gpus_per_trial is -0.5, but must be >= 0"),
    (BASE + "tune: {gpus_per_trial: 1.5}\n", "tune.gpus_per_trial", "must be a fraction up to 1"),
    (BASE + "tune: {num_samples: 0}\n", "tune.num_samples", "num_samples is 0, but must be an integer >= 1"),
    (BASE + "tune: {mode: maximize}\n", "tune.mode", "mode is 'maximize', but must be max or min"),
    (
        BASE + "tune: {metric: overal}\n",
        "tune.metric",
        "metric is 'overal' (did you mean 'overall'?), but must be one of",
    ),
    (BASE + "tune: {metric: cfimdb_acc}\n", "tune.metric", "cfimdb_acc needs data.extra_sst"),
    (BASE + "tune: {keep_checkpoints: 3}\n", "tune.keep_checkpoints", "keep_checkpoints is 3, but must be 1 or 2"),
    (BASE + "tune: {eval_subset: 0}\n", "tune.eval_subset", "eval_subset is 0, but must be an integer >= 1 or null"),
    (BASE + "tune: {final_eval: yes}\n", "tune.final_eval", "must be best or all or none"),
    (BASE + "tune: {final_top_k: 0}\n", "tune.final_top_k", "final_top_k is 0, but must be an integer >= 1"),
    (BASE + "tune: {final_top_k: 2.5}\n", "tune.final_top_k", "final_top_k is 2.5, but must be an integer >= 1"),
    (BASE + "tune: {name: a/b}\n", "tune.name", "must be a folder name"),
    (
        BASE + "tune: {grace_period: 5}\n",
        "tune.grace_period",
        ("grace_period is 5, but must be <= max_t (4: the evaluations of the longest trial)"),
    ),
    (
        BASE + "tune: {profiles: {cpu: {num_sample: 2}}}\n",
        "tune.profiles.cpu.num_sample",
        "(did you mean 'num_samples'?)",
    ),
    (
        BASE + "tune: {profiles: {cpu: {set: {train.max_step: 10}}}}\n",
        "tune.profiles.cpu.set.train.max_step",
        "unknown setting (did you mean 'train.max_steps'?)",
    ),
    (
        BASE + "tune: {profiles: {cpu: {reduction_factor: 1}}}\n",
        "tune.profiles.cpu.reduction_factor",
        "reduction_factor is 1, but must be >= 2",
    ),
]


@pytest.mark.parametrize("text, key, fragment", BAD)
def test_bad_space_files_fail_with_file_key_and_rule(tmp_path, monkeypatch, text, key, fragment):
    monkeypatch.chdir(tmp_path)  # the default results folder would be made here
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as info:
        load_space(path, profile="cpu")
    e = info.value
    assert e.path == str(path) and e.key == key, str(e)
    assert str(e) == f"{path}: {key}: {e.message}"
    if fragment.startswith("not valid YAML"):
        import re

        assert re.search(fragment, e.message), e.message
    else:
        assert fragment in e.message, e.message
    assert os.listdir(tmp_path) == ["space.yaml"]  # no results folder, nothing else


BAD_SETS = [
    ({"optim.lrr": "1e-5"}, "--set optim.lrr", "is not a run setting (did you mean 'optim.lr'?)"),
    ({"tune.num_sample": "2"}, "--set tune.num_sample", "unknown setting (did you mean 'num_samples'?)"),
    ({"tune.num_samples": "0"}, "--set tune.num_samples", "num_samples is 0, but must be an integer >= 1"),
    ({"train.max_steps": "ten"}, "--set train.max_steps", 'is "ten", but must be an integer'),
    ({"search.optim.lr": "{loguniform: [0, 1]}"}, "--set search.optim.lr", "but must be > 0"),
    (
        {"search.optim.head_lr": "null"},
        "--set search.optim.head_lr",
        ("is null, which removes a dimension, but optim.head_lr is not in search"),
    ),
]


@pytest.mark.parametrize("overrides, key, fragment", BAD_SETS)
def test_bad_set_overrides(tmp_path, monkeypatch, overrides, key, fragment):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, BASE + "search:\n  optim.lr: {loguniform: [1.0e-5, 1.0e-4]}\n")
    with pytest.raises(SpaceError) as info:
        load_space(path, overrides, profile="cpu")
    assert info.value.key == key and fragment in info.value.message, str(info.value)
    assert os.listdir(tmp_path) == ["space.yaml"]


def test_missing_file_and_unknown_profile(tmp_path):
    with pytest.raises(SpaceError, match=r"nope\.yaml: file: does not exist"):
        load_space(tmp_path / "nope.yaml")
    dimension = "  optim.lr: {loguniform: [1.0e-5, 1.0e-4]}\n"  # several trials need something to vary
    path = write(tmp_path, S + dimension + "tune: {profiles: {laptop: {num_samples: 2}}}\n")
    with pytest.raises(SpaceError) as info:
        load_space(path, profile="lapton")
    assert info.value.key == "tune.profiles"
    assert "has no profile 'lapton' (did you mean 'laptop'?); choose from: cpu, gpu, laptop" in info.value.message
    assert load_space(path, profile="laptop").tune.num_samples == 2


# ---- define-by-run with a real Optuna study ----------------------------------------------------

CONDITIONAL = (
    BASE
    + """
sampling: {schedule: ratios, batch_size: 8}
grad: {method: sum}
search:
  grad.method: {choice: [sum, weighted]}
  grad.weights.sst: {uniform: [0.5, 2.0], when: {grad.method: [weighted]}}
  optim.lr: {loguniform: [1e-5, 1e-4]}
  heads.sst.dropout: {uniform: [0.1, 0.5], step: 0.1}
  model.freeze_depth: {int: [0, 2]}
  sampling.ratios.para: {int: [1, 3]}
"""
)


def test_define_by_run_suggests_active_dimensions_within_bounds(tmp_path):
    space = load_space(write(tmp_path, CONDITIONAL), profile="cpu")
    seen = set()
    for params in ask(space, 24):
        method = params["grad.method"]
        seen.add(method)
        assert ("grad.weights.sst" in params) == (method == "weighted"), params
        assert 1e-5 <= params["optim.lr"] <= 1e-4  # "1e-5" is a string to YAML 1.1: read as a number
        assert min(abs(params["heads.sst.dropout"] - v) for v in (0.1, 0.2, 0.3, 0.4, 0.5)) < 1e-9
        assert params["model.freeze_depth"] in (0, 1, 2) and params["sampling.ratios.para"] in (1, 2, 3)
        config = space.config_for(params)
        assert isinstance(config, RunConfig)
        assert config.grad.method == method and config.optim.lr == params["optim.lr"]
        assert config.model.freeze_depth == params["model.freeze_depth"]
        assert config.sampling.ratios.para == params["sampling.ratios.para"]
        expected = params["grad.weights.sst"] if method == "weighted" else 1.0  # the base keeps it
        assert config.grad.weights.sst == expected
        assert space.decode(params) == params  # all scalars: decoding changes nothing
    assert seen == {"sum", "weighted"}


def test_config_for_ignores_inactive_dimensions_and_validates(tmp_path):
    space = load_space(write(tmp_path, CONDITIONAL), profile="cpu")
    config = space.config_for({"grad.method": "sum", "grad.weights.sst": 1.7})
    assert config.grad.weights.sst == 1.0 and space.decode({"grad.method": "sum", "grad.weights.sst": 1.7}) == {
        "grad.method": "sum"
    }
    assert space.config_for({}).flat() == space.base.flat()  # nothing suggested: the base point
    with pytest.raises(SpaceError, match=r"heads\.sst\.dropout: is 1\.5, but must be in"):
        space.config_for({"heads.sst.dropout": 1.5})


NON_SCALAR = (
    BASE
    + """
heads:
  sts: {kind: regression, pooling: mean, hidden: [32]}
search:
  phases: {choice: [[multitask], [multitask, specialist]]}
  phases.1.steps: {int: [10, 30], step: 10, when: {phases: [[multitask, specialist]]}}
  heads.sst.hidden: {choice: [[], [16], [32, 16]]}
  heads.sts: {choice: [{kind: cosine, hidden: [16]}, {kind: regression}]}
  losses.sts: {choice: [{kind: mse}, {kind: l1}]}
"""
)


def test_non_scalar_choices_round_trip(tmp_path):
    space = load_space(write(tmp_path, NON_SCALAR), profile="cpu")
    assert space.max_evaluations() == 4 + 3  # multitask 40/10, then a specialist of up to 30 steps every 10
    shapes = set()
    for params in ask(space, 20):
        assert isinstance(params["phases"], str) and json.loads(params["phases"]) in (
            ["multitask"],
            ["multitask", "specialist"],
        )  # Optuna holds JSON text
        real = space.decode(params)
        assert real["phases"] == json.loads(params["phases"]) and isinstance(real["heads.sst.hidden"], list)
        config = space.config_for(params)
        assert [p.kind for p in config.phases] == real["phases"]
        if len(real["phases"]) == 2:
            assert config.phases[1].steps == real["phases.1.steps"]
        else:
            assert "phases.1.steps" not in real
        assert config.heads.sst.hidden == real["heads.sst.hidden"]
        assert config.heads.sts.kind == real["heads.sts"]["kind"]
        assert config.heads.sts.pooling == "mean"  # a mapping sets those keys of the section, the rest stay
        assert config.losses.sts.kind == real["losses.sts"]["kind"]
        assert space.config_for(real).flat() == config.flat()  # decoded values go back in unchanged
        shapes.add((len(real["phases"]), config.heads.sts.kind))
    assert len(shapes) == 4


ALTERNATIVES = (
    BASE
    + """
search:
  losses.sts.kind: {choice: [mse, cosine_mse, ce]}
  heads.sts.kind:
    - {choice: [regression, cosine], when: {losses.sts.kind: [mse]}}
    - {choice: [cosine, siamese], when: {losses.sts.kind: [cosine_mse]}}
    - {choice: [bins], when: {losses.sts.kind: [ce]}}
  heads.sts.features: {choice: [[u, v], [prod]], when: {heads.sts.kind: [siamese]}}
"""
)


def test_alternatives_give_each_loss_its_heads(tmp_path):
    space = load_space(write(tmp_path, ALTERNATIVES), profile="cpu")
    assert [d.name for d in space.dimensions][:4] == [
        "losses.sts.kind",
        "heads.sts.kind#0",
        "heads.sts.kind#1",
        "heads.sts.kind#2",
    ]
    fits = {"mse": {"regression", "cosine"}, "cosine_mse": {"cosine", "siamese"}, "ce": {"bins"}}
    losses = set()
    for params in ask(space, 30):
        heads = [k for k in params if k.startswith("heads.sts.kind#")]
        assert len(heads) == 1, params
        loss, head = params["losses.sts.kind"], params[heads[0]]
        assert head in fits[loss]
        assert ("heads.sts.features" in params) == (head == "siamese")
        config = space.config_for(params)
        assert (config.losses.sts.kind, config.heads.sts.kind) == (loss, head)
        assert space.decode(params)["heads.sts.kind"] == head
        losses.add(loss)
    assert losses == set(fits)


def test_seeded_sequences_repeat(tmp_path):
    space = load_space(write(tmp_path, CONDITIONAL), profile="cpu")
    first, again, other = ask(space, 15, seed=3), ask(space, 15, seed=3), ask(space, 15, seed=4)
    assert first == again and first != other


def test_dimension_suggest_decodes(tmp_path):
    d = Dimension("phases", "choice", choices=[["multitask"], ["multitask", "specialist"]])
    trial = study().ask()
    value = d.suggest(trial)
    assert value in d.choices and trial.params["phases"] == json.dumps(value)
    assert d.decode(json.dumps(value)) == value and d.decode(value) == value
    with pytest.raises(ValueError):
        d.decode('["mlm"]')


# ---- the run settings a space implies ----------------------------------------------------------


def test_max_evaluations_plain_and_phased(tmp_path):
    plain = load_space(write(tmp_path, "model: {encoder: tiny}\ntrain: {max_steps: 40, eval_every: 15}\n"))
    assert plain.max_evaluations() == 3 == plain.tune.max_t  # 15, 30, 40
    phased = load_space(
        write(
            tmp_path,
            """
model: {encoder: tiny}
train: {max_steps: 40, eval_every: 15}
phases: [mlm, {kind: multitask, steps: 30, eval_every: 10}, {kind: specialist, steps: 25}]
search:
  phases.1.steps: {int: [30, 60], step: 15}
""",
            "phased.yaml",
        )
    )
    # mlm reports nothing; multitask: up to 60 steps every 10 = 6; specialist: 25 steps every 15 = 2
    assert phased.max_evaluations() == 8 == phased.tune.max_t
    assert evaluations(phased.base) == 3 + 2
    capped = load_space(phased.path, {"tune.max_t": "5"})
    assert capped.tune.max_t == 5 and capped.max_evaluations() == 8


def test_tune_defaults_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = load_space(write(tmp_path, BASE, "my-search.yaml"), profile="cpu")
    t = space.tune
    assert (t.metric, t.mode, t.keep_checkpoints, t.final_eval) == ("overall", "max", 1, "best")
    assert t.name == "my-search" and t.storage_path == str(tmp_path.resolve() / "results")
    assert not (tmp_path / "results").exists()
    assert space.base.train.final_eval is False  # "best": the tuner scores the best trial, not every trial
    assert TuneSettings().reduction_factor >= 2


def test_eval_subset_and_final_eval_reach_the_run(tmp_path):
    space = load_space(write(tmp_path, BASE + "tune: {eval_subset: 50, final_eval: all}\n"), profile="cpu")
    assert space.base.data.max_eval_per_task == 50 and space.base.train.final_eval is True


PROFILED = (
    BASE
    + """
search:
  optim.lr: {loguniform: [1.0e-5, 1.0e-4]}
tune:
  num_samples: 20
  profiles:
    cpu: {num_samples: 6, cpus_per_trial: 1, set: {train.max_steps: 20}}
    gpu:
      gpus_per_trial: 0.5
      search: {optim.lr: {loguniform: [1.0e-5, 3.0e-5]}}
"""
)


def test_profile_detected_or_chosen(tmp_path, monkeypatch):
    path = write(tmp_path, PROFILED)
    monkeypatch.setattr(space_module, "detect_profile", lambda: "gpu")
    gpu = load_space(path)
    assert gpu.profile == "gpu" and gpu.tune.gpus_per_trial == 0.5 and gpu.tune.num_samples == 20
    assert gpu.dimensions[0].high == 3e-5 and gpu.base.train.max_steps == 40
    assert gpu.notes[0].startswith("GPU visible: gpu profile")
    monkeypatch.setattr(space_module, "detect_profile", lambda: "cpu")
    cpu = load_space(path)
    assert cpu.profile == "cpu" and cpu.tune.num_samples == 6 and cpu.base.train.max_steps == 20
    assert cpu.max_evaluations() == 2 and cpu.dimensions[0].high == 1e-4
    assert cpu.notes[0].startswith("no GPU visible: cpu profile; 6 trials of up to 20 steps")
    chosen = load_space(path, profile="gpu")  # asked for: detection does not matter
    assert chosen.profile == "gpu" and chosen.tune.gpus_per_trial == 0.5
    bare = load_space(write(tmp_path, BASE, "bare.yaml"), profile="gpu")
    assert bare.tune == load_space(bare.path, profile="cpu").tune and "no 'gpu' profile" in bare.notes[0]


def test_detect_profile_follows_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert detect_profile() == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detect_profile() == "cpu"


SMOKY = """
model: {encoder: all-MiniLM-L6-v2, freeze_depth: 3}
data: {max_length: 128}
train: {max_steps: 3000, eval_every: 250, final_eval: true}
phases: [mlm, multitask, {kind: specialist, steps: 500}]
search:
  model.freeze_depth: {int: [0, 4], step: 2}
  train.max_steps: {int: [1000, 3000]}
  phases.2.steps: {int: [100, 500]}
  optim.lr: {loguniform: [1.0e-5, 1.0e-4]}
tune: {num_samples: 64, cpus_per_trial: 4, final_eval: all}
"""


def test_smoke_shrinks_everything(tmp_path):
    space = load_space(write(tmp_path, SMOKY), profile="cpu", smoke=True)
    b = space.base
    assert b.model.encoder == "tiny" and b.model.freeze_depth == 2  # tiny has 2 layers
    assert (b.data.max_train_per_task, b.data.max_eval_per_task, b.data.max_length) == (256, 64, 64)
    assert (b.train.max_steps, b.train.eval_every, b.train.final_eval) == (8, 2, False)
    assert [(p.kind, p.steps) for p in b.phases] == [("mlm", 2), ("multitask", 8), ("specialist", 8)]
    t = space.tune
    assert (t.num_samples, t.max_concurrent, t.cpus_per_trial, t.grace_period, t.final_eval) == (4, 2, 1, 1, "none")
    assert t.name == "space-smoke" and t.max_t == space.max_evaluations() == 8  # 4 + 4 evaluations
    keys = {d.key: d for d in space.dimensions}
    assert set(keys) == {"model.freeze_depth", "optim.lr"}  # steps are the smoke test's now
    assert keys["model.freeze_depth"].values() == [0, 2]
    assert "not searched, fixed by smoke: train.max_steps, phases.2.steps" in space.notes
    for params in ask(space, 4):
        config = space.config_for(params)
        assert config.model.encoder == "tiny" and config.train.max_steps == 8
    again = load_space(space.path, {"tune.num_samples": "2"}, profile="cpu", smoke=True)
    assert again.tune.num_samples == 2  # --set comes after --smoke
    # and every trial gets the --set values, which the budget (max_t) counts on
    longer = load_space(space.path, {"phases.2.steps": "12", "data.max_train_per_task": "100"}, profile="cpu",
                        smoke=True)  # fmt: skip
    assert longer.max_evaluations() == 4 + 6
    for params in ask(longer, 3):
        config = longer.config_for(params)
        assert [p.steps for p in config.phases] == [2, 8, 12] and config.data.max_train_per_task == 100


def test_set_overrides_of_each_kind(tmp_path):
    path = write(tmp_path, CONDITIONAL)
    space = load_space(
        path,
        {
            "optim.lr": "3e-5",  # a run setting: the base changes and its dimension is dropped
            "tune.num_samples": "5",
            "search.heads.sst.dropout": "{uniform: [0.2, 0.4]}",  # replaces the file's dimension
            "search.model.freeze_depth": "null",  # removes one
            "search.optim.weight_decay": "{choice: [0.0, 0.01]}",  # adds one
        },
        profile="cpu",
    )
    keys = [d.key for d in space.dimensions]
    assert "optim.lr" not in keys and "model.freeze_depth" not in keys and "optim.weight_decay" in keys
    assert space.base.optim.lr == 3e-5 and space.tune.num_samples == 5
    dropout = next(d for d in space.dimensions if d.key == "heads.sst.dropout")
    assert (dropout.low, dropout.high, dropout.origin) == (0.2, 0.4, "--set search")
    assert "not searched, fixed by --set: optim.lr" in space.notes
    # pinning a key others depend on decides their conditions
    weighted = load_space(path, {"grad.method": "weighted"}, profile="cpu")
    weights = next(d for d in weighted.dimensions if d.key == "grad.weights.sst")
    assert weights.when == {} and "grad.method" not in [d.key for d in weighted.dimensions]
    plain = load_space(path, {"grad.method": "sum"}, profile="cpu")
    assert "grad.weights.sst" not in [d.key for d in plain.dimensions]


def test_load_space_does_not_import_ray():
    code = (
        "import sys; from search.space.file import load_space; load_space('spaces/baseline.yaml', profile='cpu'); "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_space_package_imports_neither_the_engine_nor_optuna():
    code = (
        "import sys, pkgutil, importlib, search.space as p\n"
        "for m in pkgutil.walk_packages(p.__path__, 'search.space.'): importlib.import_module(m.name)\n"
        "print(sorted({m.split('.')[0] if not m.startswith('search.') else m for m in sys.modules\n"
        "              if m.split('.')[0] in ('ray', 'optuna') or m.startswith('search.engine')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_duplicate_key_message_in_full(tmp_path):
    path = write(tmp_path, "model: {encoder: tiny}\ntrain: {max_steps: 40}\nmodel: {encoder: tiny}\n")
    with pytest.raises(SpaceError) as e:
        load_space(path, profile="cpu")
    assert e.value.key == "yaml" and e.value.message == (
        "not valid YAML at line 3, column 1: duplicate key 'model' (first at line 1); a key may appear once "
        "(several dimensions on one key are a list of alternatives)"
    )


@pytest.mark.parametrize(
    ("kind", "spec", "cls", "values"),
    [
        ("choice", {"choice": ["sum", "pcgrad"]}, "Choice", ["sum", "pcgrad"]),
        ("int", {"int": [0, 4], "step": 2}, "IntRange", [0, 4]),
        ("uniform", {"uniform": [0.1, 0.5]}, "Uniform", [0.1, 0.5]),
        ("loguniform", {"loguniform": [1.0e-5, 1.0e-4]}, "LogUniform", [1.0e-5, 1.0e-4]),
    ],
)
def test_each_kind_is_its_own_class(kind, spec, cls, values):
    from search.space import dimensions

    d = dimensions.parse_dimension("x", spec, Path("space.yaml"), "x")
    assert type(d).__name__ == cls and dimensions.KINDS[kind] is type(d) and d.kind == kind
    assert d.values() == values and type(Dimension("x", kind, 0, 1, choices=[0])) is type(d)
    assert d.continuous == (kind in ("uniform", "loguniform"))


def test_config_for_sets_fixed_values_after_the_sampled_ones(tmp_path):
    space = load_space(write(tmp_path, S + "  data.cache_dir: {choice: [a, b]}\n"), profile="cpu", smoke=True)
    config = space.config_for({"data.cache_dir": "b"}, {"data.dir": "/data", "model.encoder": "tiny"})
    assert (config.data.dir, config.data.cache_dir, config.train.max_steps) == ("/data", "b", 8)
    with pytest.raises(SpaceError, match="data.dirr: unknown setting"):
        space.config_for({}, {"data.dirr": "/data"})


# ---- the shipped spaces ------------------------------------------------------------------------


def needs_registered_combiners(path: Path) -> None:
    from mtbert.methods import base as gradients

    if "pcgrad" in path.read_text() and "pcgrad" not in gradients.COMBINERS:
        pytest.skip("grad.method pcgrad is not registered in mtbert.methods.base yet")


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_shipped_spaces_load_in_every_mode(path, tmp_path, monkeypatch):
    needs_registered_combiners(path)
    monkeypatch.chdir(tmp_path)
    base = load_config(path)  # what mtbert-train trains from the same file
    assert base.model.encoder == "all-MiniLM-L6-v2" and base.data.dir is None
    for profile in ("cpu", "gpu"):
        space = load_space(path, profile=profile)
        assert space.profile == profile and space.tune.max_t >= space.tune.grace_period
        for params in ask(space, 3):
            space.config_for(params)
    smoke = load_space(path, profile="cpu", smoke=True)
    assert smoke.base.model.encoder == "tiny" and smoke.max_steps <= 24
    for params in ask(smoke, 3):
        assert smoke.config_for(params).train.max_steps == 8
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("path", [p for p in SPACES if p.stem.startswith("paper-")], ids=lambda p: p.stem)
def test_paper_spaces_are_fixed_points(path):
    needs_registered_combiners(path)
    space = load_space(path, profile="gpu")
    assert space.dimensions == [] and space.tune.num_samples == 1
    assert space.base.flat() == load_space(path, profile="gpu").config_for({}).flat()
    assert space.notes[1] == "a fixed point: no search dimensions"


def test_pcgrad_profiles_fit_their_machines():
    path = REPO / "spaces" / "pcgrad.yaml"
    needs_registered_combiners(path)
    space = load_space(path, profile="cpu")
    t = space.tune
    assert {d.key for d in space.dimensions} >= {
        "grad.method",
        "optim.lr",
        "optim.head_lr",
        "heads.sst.dropout",
        "sampling.ratios.para",
        "model.freeze_depth",
    }
    assert next(d for d in space.dimensions if d.key == "grad.method").choices == ["pcgrad", "pcgrad_weighted", "sum"]
    # 2 cores: one trial at a time on both, the first the hand-tuned point, one finalist
    assert t.max_concurrent == 1 and t.cpus_per_trial == 2 and t.final_top_k == 1
    assert (t.grace_period, t.reduction_factor, t.final_eval) == (1, 2, "best")
    assert t.time_budget_s + 180 <= 900  # the trials, then scoring the best on the selection half (~160 s)
    assert t.warm_start[0]["grad.method"] == "sum" and t.warm_start[0]["optim.lr"] == 1.5e-4
    gpu = load_space(path, profile="gpu").tune
    assert gpu.num_samples >= 32 and gpu.gpus_per_trial == 0.5 and load_space(path, profile="gpu").max_steps >= 2000
    cluster = load_space(path, profile="cluster").tune
    assert cluster.num_samples >= 4 * gpu.num_samples and cluster.reduction_factor > gpu.reduction_factor
