"""Run phases: the config's ``phases`` list, and runs that go through several of them."""

from __future__ import annotations

import math

import pytest
import torch

from mtbert.config import ConfigError, RunConfig, phase_config, run_phases
from mtbert.train.run import open_run, train
from mtbert.validation import load_config, validate

# ---- the config ---------------------------------------------------------------------------------


def test_short_form_and_defaults():
    c = RunConfig().with_overrides({"phases": ["mlm", "multitask", "specialist"]})
    assert [p.kind for p in c.phases] == ["mlm", "multitask", "specialist"]
    assert [p.kind for p in run_phases(RunConfig())] == ["multitask"]


def test_phase_config_applies_its_own_settings():
    c = RunConfig().with_overrides({
        "train.max_steps": 100, "train.eval_every": 50, "optim.lr": 5e-5,
        "phases": [
            {"kind": "multitask", "steps": 30, "lr": 1e-4, "eval_every": 10,
             "set": {"sampling.schedule": "ratios", "sampling.ratios.sst": 0, "sampling.ratios.sts": 0}},
            "multitask",
        ],
    })  # fmt: skip
    first, second = phase_config(c, 0), phase_config(c, 1)
    assert (first.train.max_steps, first.train.eval_every, first.optim.lr) == (30, 10, 1e-4)
    assert (first.sampling.schedule, first.sampling.ratios.sst, first.sampling.ratios.para) == ("ratios", 0, 1)
    assert (second.train.max_steps, second.train.eval_every, second.optim.lr) == (100, 50, 5e-5)
    assert second.sampling.schedule == "round_robin"
    assert first.phases == [] and c.phases[0].set  # the phase's config has no phases of its own


def test_dotted_keys_reach_into_phases(tmp_path):
    c = RunConfig().with_overrides({"phases": ["multitask", "specialist"]})
    c = c.with_overrides({"phases.1.steps": 70, "phases.0.set.optim.lr": "2e-5"})
    assert c.phases[1].steps == 70
    assert phase_config(c, 0).optim.lr == 2e-5
    (tmp_path / "run.yaml").write_text(c.to_yaml())
    assert load_config(tmp_path / "run.yaml") == c  # a checkpoint's config.yaml reads back the same


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"phases": ["mlm"]}, "phases: is ['mlm'], but a run needs a multitask or specialist phase"),
        ({"phases": ["specialist", "multitask"]}, "phases.0.kind: is 'specialist'"),
        ({"phases": ["multitask", "mlm"]}, "phases.1.kind: is 'mlm' after ['multitask']"),
        ({"phases": ["multi"]}, 'phases.0.kind: is "multi", but must be one of: mlm, multitask, specialist'),
        ({"phases": [{"kind": "multitask", "stpes": 3}]}, "phases.0.stpes: unknown setting (did you mean 'phases.0.steps'?)"),
        ({"phases": [{"kind": "multitask", "steps": 0}]}, "phases.0.steps: is 0, but must be > 0"),
        ({"phases": [{"kind": "multitask", "heads_only": True}]}, "phases.0.heads_only: is true, but only a specialist"),
        ({"phases": [{"kind": "multitask", "set": {"model.freeze_depth": 1}}]},
         "phases.0.set.model.freeze_depth: cannot change per phase"),
        ({"phases": [{"kind": "multitask", "set": {"sampling.shedule": "x"}}]},
         "phases.0.set.sampling.shedule: unknown setting (did you mean 'sampling.schedule'?)"),
        ({"phases": [{"kind": "multitask", "set": {"grad.method": "pcgard"}}]}, "phases.0.set.grad.method: unknown 'pcgard'"),
        ({"phases": [{"kind": "multitask", "steps": 10, "eval_every": 20}]}, "phases.0.eval_every: is 20, but must be <="),
        ({"phases": [{"kind": "multitask", "set": [1]}]}, "phases.0.set: is [1], but must be a mapping"),
        ({"phases": "multitask"}, 'phases: is "multitask", but must be a list'),
        ({"phases.2.steps": 5}, "phases.2.steps: has index '2', but phases has 0 item(s)"),
    ],
)
def test_bad_phases(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        validate(RunConfig().with_overrides(overrides))
    assert fragment in str(e.value)


# ---- runs ---------------------------------------------------------------------------------------


def finite(result) -> bool:
    return all(math.isfinite(v) for m in result.history for k, v in m.items() if k.startswith("train_loss"))


def test_quora_first_then_all_tasks(small_run):
    """Paper 001: a Quora-only phase, then all three tasks; steps and evaluations run on."""
    cfg = small_run(**{"phases": [
        {"kind": "multitask", "steps": 4, "eval_every": 2,
         "set": {"sampling.schedule": "ratios", "sampling.ratios.sst": 0, "sampling.ratios.sts": 0}},
        {"kind": "multitask", "steps": 4, "lr": 5e-4, "eval_every": 2},
    ]})  # fmt: skip
    result = train(cfg)
    assert [m["step"] for m in result.history] == [2, 4, 6, 8]
    assert [m["phase"] for m in result.history] == [0, 0, 1, 1]
    first, second = result.history[1], result.history[3]
    assert "train_loss_para" in first and "train_loss_sst" not in first  # phase 0 trained Quora only
    assert {"train_loss_sst", "train_loss_para", "train_loss_sts"} <= set(second)
    assert result.steps == 8 and finite(result)
    assert result.metrics == max(result.history, key=lambda m: m["overall"])


def test_specialists_score_each_task_with_its_own_encoder(small_run, tmp_path):
    cfg = small_run(**{"model.freeze_depth": 1, "phases": ["multitask", {"kind": "specialist", "steps": 4}]})
    run = open_run(cfg)
    result = run.run(checkpoint_dir=tmp_path / "ckpt")
    assert result.steps == 12 and finite(result)
    enc = run.model.encoder
    assert hasattr(enc, "task_parameters")  # one encoder branch per task
    # the frozen bottom is shared: one module, no gradient; the top layers are per task
    params = {t: {id(p) for p in enc.task_parameters(t)} for t in run.model.tasks}
    assert not params["sst"] & params["para"] and not params["para"] & params["sts"]
    assert [m["phase"] for m in result.history] == [0, 0, 1]


def test_heads_only_specialists_leave_the_encoder_alone(small_run):
    cfg = small_run(**{"phases": ["multitask", {"kind": "specialist", "steps": 4, "heads_only": True}]})
    run = open_run(cfg)
    before: dict[str, torch.Tensor] = {}

    def keep(step, metrics, save):
        if step == 8:  # the multitask phase's last evaluation: one plain encoder
            before.update({k: v.clone() for k, v in run.model.encoder.state_dict().items()})

    result = run.run(on_eval=keep)
    assert result.steps == 12 and before
    for task in run.model.tasks:
        after = run.model.encoder.branch(task).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), task


def test_mlm_then_multitask(small_run):
    cfg = small_run(**{"phases": [{"kind": "mlm", "steps": 3}, "multitask"], "mlm.batch_size": 8})
    run = open_run(cfg)
    start = {k: v.clone() for k, v in run.model.encoder.state_dict().items()}
    result = run.run()
    assert len(run.mlm) == 1 and run.mlm[0].steps == 3
    assert result.steps == 8 and [m["phase"] for m in result.history] == [1, 1]
    word = "embeddings.word_embeddings.weight"
    assert not torch.equal(start[word], run.model.encoder.state_dict()[word])


@pytest.mark.parametrize("phases", [
    ["multitask", "multitask"],
    ["multitask", {"kind": "specialist", "steps": 4}],
])  # fmt: skip
def test_resume_across_phases_is_exact(small_run, tmp_path, phases):
    """Save at the first phase's end and inside the second, resume each: the same weights as straight."""
    cfg = small_run(**{"phases": phases, "train.max_steps": 4, "train.eval_every": 2})
    saved = {}

    def save_at(step, metrics, save):
        if step in (4, 6):
            saved[step] = save(tmp_path / f"at-{step}")

    straight = open_run(cfg)
    straight.run(on_eval=save_at)
    want = straight.model.state_dict()
    for step, directory in saved.items():
        resumed = open_run(cfg, resume=directory)
        assert resumed.step == step
        result = resumed.run()
        assert result.steps == 8
        got = resumed.model.state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), f"resumed at step {step}"  # promised exact
