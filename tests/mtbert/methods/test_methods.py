"""Gradient combiners: PCGrad on hand-made vectors and against the paper's loop, each other method
against its paper's defining property, and every combiner on a tiny real model and in training."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch

from mtbert.config import GradConfig, OptimConfig, PerTask
from mtbert.data.course import to_device
from mtbert.methods import COMBINERS
from mtbert.methods.base import conflict_diagnostics
from mtbert.methods.cagrad import conflict_averse
from mtbert.methods.gradvac import vaccinate
from mtbert.methods.pcgrad import pcgrad_projections, project_conflicting, sample_weights
from mtbert.methods.uncertainty import Uncertainty
from mtbert.tasks import TASKS
from mtbert.train.checkpoint import load_checkpoint, read_state
from mtbert.train.run import start, train

METHODS = ["sum", "weighted", "pcgrad", "pcgrad_weighted", "cagrad", "gradvac", "uncertainty"]
F64 = torch.float64


def reference_pcgrad(grads, generator, weights=None):
    """The paper's Algorithm 1, written out on the vectors (same draws from the generator)."""
    T = len(grads)
    g = grads * (torch.ones(T, dtype=grads.dtype) if weights is None else weights).unsqueeze(1)
    out = []
    for i in range(T):
        pc = g[i].clone()
        for j in torch.randperm(T, generator=generator).tolist():
            if j != i and torch.dot(pc, g[j]) < 0:
                pc = pc - torch.dot(pc, g[j]) / torch.dot(g[j], g[j]) * g[j]
        out.append(pc)
    return torch.stack(out).sum(0)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_pcgrad_on_hand_made_pairs():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)  # dot -1: a conflict
    # g1 - (-1/2) g2 = (0.5, 0.5) and g2 - (-1/1) g1 = (0, 1): each is orthogonal to the other original
    assert torch.allclose(project_conflicting(g), torch.tensor([0.5, 1.5], dtype=F64))
    projected = pcgrad_projections(g @ g.T) @ g  # row i: g_i after its projections
    assert torch.allclose(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]], dtype=F64))
    assert torch.dot(projected[0], g[1]) >= -1e-12 and torch.dot(projected[1], g[0]) >= -1e-12
    aligned = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)  # dot 1: left alone, summed
    assert torch.equal(project_conflicting(aligned, seeded()), torch.tensor([2.0, 1.0], dtype=F64))


def test_pcgrad_two_tasks_closed_form():
    gen = seeded(3)
    for _ in range(20):
        g1, g2 = torch.randn(2, 9, generator=gen, dtype=F64)
        if torch.dot(g1, g2) >= 0:
            g2 = g2 - 2 * torch.dot(g1, g2) / torch.dot(g1, g1) * g1  # reflect: now they conflict
        d = torch.dot(g1, g2)
        closed = g1 + g2 - d / torch.dot(g2, g2) * g2 - d / torch.dot(g1, g1) * g1
        torch.testing.assert_close(project_conflicting(torch.stack([g1, g2]), seeded()), closed)


@pytest.mark.parametrize("T", [3, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_pcgrad_matches_the_papers_loop(T, weighted):
    data = seeded(T)
    for trial in range(10):
        g = torch.randn(T, 6, generator=data, dtype=F64)
        w = torch.rand(T, generator=data, dtype=F64) + 0.1 if weighted else None
        expected = reference_pcgrad(g, seeded(trial), w)
        torch.testing.assert_close(project_conflicting(g, seeded(trial), w), expected)
        if w is not None:  # weights act as scaling the rows first
            torch.testing.assert_close(project_conflicting(g * w.unsqueeze(1), seeded(trial)), expected)


def test_pcgrad_is_deterministic_per_seed_and_the_order_matters():
    g = torch.randn(4, 5, generator=seeded(1), dtype=F64)
    g[1:] -= 2 * g[0]  # every later task conflicts with the first: the order of projections matters
    assert torch.equal(project_conflicting(g, seeded(7)), project_conflicting(g, seeded(7)))
    assert any(not torch.allclose(project_conflicting(g, seeded(7)), project_conflicting(g, seeded(s)))
               for s in range(8))  # fmt: skip


@pytest.mark.parametrize("call, message", [
    (lambda: project_conflicting(torch.ones(3)), r"grads has shape \(3,\), but must be \(T, P\)"),
    (lambda: project_conflicting(torch.ones(2, 3), weights=torch.ones(3)), "weights is .*, but must be 2 finite"),
    (lambda: project_conflicting(torch.ones(2, 3), weights=torch.tensor([1.0, -1.0])), "must be 2 finite numbers >= 0"),
    (lambda: project_conflicting(torch.ones(2, 3), weights=torch.tensor([1.0, math.nan])), "must be 2 finite"),
    (lambda: sample_weights(["para", "sts"], {"para": 48, "sts": 0}, PerTask()), r"counts\['sts'\] is 0, but"),
    (lambda: sample_weights(["sst"], {"sst": 8}, PerTask(sst=0.0)), r"grad.weights .* \(sst\) are all zero"),
    (lambda: conflict_averse(torch.ones(2, 3), -1.0), "grad.cagrad_c is -1.0, but must be >= 0"),
    (lambda: vaccinate(torch.ones(2, 3), torch.zeros(3, 3), 0.1), r"must be a \(2, 2\) matrix of cosines"),
    (lambda: vaccinate(torch.ones(2, 3), torch.zeros(2, 2), 1.5), "grad.gradvac_beta is 1.5, but must be in"),
    (lambda: Uncertainty(GradConfig(), [], seeded()).load_state_dict({"log_vars": {"sst": torch.zeros(())}}),
     "combiner state 'log_vars' is \\['sst'\\], but"),
    (lambda: COMBINERS.get("pcgrad")(GradConfig(), [], seeded()).backward({"mnli": torch.ones(())}, {"mnli": 4}),
     "losses has task 'mnli', but tasks are: sst, para, sts"),
])  # fmt: skip
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_sample_weights_are_inverse_counts_times_task_weights_summing_to_T():
    w = sample_weights(["sst", "para", "sts"], {"sst": 16, "para": 48, "sts": 16}, PerTask())
    torch.testing.assert_close(w, torch.tensor([9, 3, 9], dtype=F64) / 7)  # (1/16, 1/48, 1/16) scaled to sum 3
    w = sample_weights(["para", "sts"], {"para": 48, "sts": 16}, PerTask(para=3.0, sts=1.0))
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0], dtype=F64))  # 3/48 = 1/16


@pytest.mark.parametrize("T, c", [(2, 0.5), (3, 0.5), (3, 2.0), (4, 0.3), (3, 0.0)])  # c = 0: the mean
def test_cagrad_maximises_the_worst_improvement_in_the_ball(T, c):
    gen = seeded(T)
    for _ in range(5):
        g = torch.randn(T, 3, generator=gen, dtype=F64)
        d, g0 = conflict_averse(g, c), g.mean(0)
        radius = c * g0.norm()
        assert (d - g0).norm() <= radius * (1 + 1e-9) + 1e-12
        u = torch.randn(200_000, 3, generator=gen, dtype=F64)
        ball = torch.cat([g0 + radius * u / u.norm(dim=1, keepdim=True), g0.unsqueeze(0)])  # the sphere and centre
        best = (ball @ g.T).min(1).values.max()
        worst_of_d = (g @ d).min()
        assert worst_of_d >= best - 1e-9 and worst_of_d - best < 1e-2 * g0.norm() ** 2


def cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


@pytest.mark.parametrize("target", [-0.5, 0.0, 0.3, 0.9])
def test_gradvac_lifts_a_pair_to_its_target_and_leaves_pairs_above_it(target):
    g = torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.5]], dtype=F64)
    phi = cos(g[0], g[1])  # about 0.25
    targets = torch.full((2, 2), target, dtype=F64)
    out, new = vaccinate(g, targets, beta=0.1)
    for i, j in ((0, 1), (1, 0)):
        if phi < target:
            assert cos(out[i], g[j]) == pytest.approx(target, abs=1e-12)
        else:
            assert torch.equal(out[i], g[i])
        assert float(new[i, j]) == pytest.approx(0.9 * target + 0.1 * phi)


def test_gradvac_matches_the_papers_loop():
    data = seeded(5)
    for trial in range(10):
        g, targets = torch.randn(3, 6, generator=data, dtype=F64), torch.rand(3, 3, generator=data, dtype=F64) - 0.5
        expected, new_expected, gen = g.clone(), targets.clone(), seeded(trial)
        for i in range(3):  # Algorithm 1 of Wang et al. on the vectors, the same draws from the generator
            for j in torch.randperm(3, generator=gen).tolist():
                if j == i:
                    continue
                phi, t = cos(expected[i], g[j]), float(targets[i, j])
                if phi < t:
                    lift = expected[i].norm() * (t * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - t**2))
                    expected[i] = expected[i] + lift / (g[j].norm() * math.sqrt(1 - t**2)) * g[j]
                new_expected[i, j] = 0.7 * t + 0.3 * phi
        out, new = vaccinate(g, targets, 0.3, seeded(trial))
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(new, new_expected)


def test_uncertainty_log_variance_settles_at_log_of_the_loss():
    shared = [torch.nn.Parameter(torch.zeros(2))]
    combiner = Uncertainty(GradConfig(method="uncertainty"), shared, seeded())
    step = lambda: combiner.backward({"sst": shared[0].sum() + 4.0, "sts": shared[0].sum() + 0.25}, {})
    with torch.no_grad():
        combiner.log_vars["sst"].fill_(math.log(4.0))  # the stationary point exp(-s) L = 1
    step()
    assert abs(float(combiner.log_vars["sst"].grad)) < 1e-6
    assert float(combiner.log_vars["sts"].grad) == pytest.approx(1 - 0.25)  # s = 0: d/ds = 1 - L
    group = combiner.param_groups(OptimConfig(head_lr=0.05))[0]  # uncertainty_lr null: optim.head_lr
    assert group["lr"] == 0.05 and group["weight_decay"] == 0
    assert Uncertainty(GradConfig(uncertainty_lr=0.2), [], None).param_groups(OptimConfig())[0]["lr"] == 0.2
    optimizer = torch.optim.Adam(group["params"], lr=group["lr"])
    for _ in range(400):
        optimizer.zero_grad()
        step()
        optimizer.step()
    assert combiner.log_vars["sts"].item() == pytest.approx(math.log(0.25), abs=0.05)
    assert combiner.log_vars["sst"].item() == pytest.approx(math.log(4.0), abs=0.05)


def flatten(grads, params):
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1).double() for g, p in zip(grads, params)]
    )


def step_losses(trainer):
    """One step's losses as the trainer computes them (separate graphs through the shared encoder)."""
    objective = trainer.objective  # schedule, streams, losses and model of the step
    plan = objective.schedule.plan(0)
    losses = {}
    for task, n in plan.items():
        batch = to_device(objective.streams[task].take(n), objective.device)
        losses[task] = objective.losses[task](objective.model(task, batch), batch["labels"])
    return losses, dict(plan)


def expected_update(method, grads, counts, tasks, combiner, generator):
    """The shared update each method should leave, from independently computed task gradients."""
    cfg, T = combiner.config, len(tasks)
    if method in ("sum", "weighted"):
        w = torch.tensor([getattr(cfg.weights, t) if method == "weighted" else 1.0 for t in tasks], dtype=F64)
        return (w * T / w.sum()) @ grads
    if method == "uncertainty":
        return torch.tensor([math.exp(-combiner.log_vars[t].item()) for t in tasks], dtype=F64) @ grads
    if method == "pcgrad":
        return project_conflicting(grads, generator)
    if method == "pcgrad_weighted":
        return project_conflicting(grads, generator, sample_weights(tasks, counts, cfg.weights))
    if method == "cagrad":
        return conflict_averse(grads, cfg.cagrad_c) * T / (1 + cfg.cagrad_c**2)
    return vaccinate(grads, torch.zeros(T, T, dtype=F64), cfg.gradvac_beta, generator)[0].sum(0)


@pytest.mark.parametrize("ratios", [(1, 2, 1), (0, 1, 0)])  # three tasks, or one: nothing to project
@pytest.mark.parametrize("diagnose", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_combiner_on_a_real_model(small_run, method, diagnose, ratios):
    ratio_keys = {f"sampling.ratios.{t}": r for t, r in zip(TASKS, ratios)}
    trainer = start(small_run(**{"grad.method": method, "sampling.schedule": "ratios", **ratio_keys,
                                 "grad.weights.para": 3.0, "model.freeze_depth": 1}))  # fmt: skip
    combiner, shared = trainer.objective.combiner, trainer.objective.combiner.shared
    losses, counts = step_losses(trainer)
    tasks = list(losses)
    heads = {t: trainer.objective.model.head_parameters(t) for t in tasks}
    plain = {t: torch.autograd.grad(losses[t], shared + heads[t], retain_graph=True, allow_unused=True) for t in tasks}
    flat = torch.stack([flatten(plain[t][: len(shared)], shared) for t in tasks])
    generator = torch.Generator()
    generator.set_state(combiner.generator.get_state())  # the draws the combiner is about to make
    expected = expected_update(method, flat, counts, tasks, combiner, generator)
    stats = combiner.backward(losses, counts, diagnose=diagnose)
    weights = {"sst": 0.6, "para": 1.8, "sts": 0.6} if method == "weighted" and len(tasks) == 3 else {}
    for t in tasks:  # heads: their own task's plain gradient (times the task weight where there is one)
        scale = math.exp(-combiner.log_vars[t].item()) if method == "uncertainty" else weights.get(t, 1.0)
        for p, g in zip(heads[t], plain[t][len(shared) :]):
            torch.testing.assert_close(p.grad, g * scale)
    unused = [p for p, g in zip(shared, plain[tasks[0]][: len(shared)]) if g is None]
    assert unused and all(p.grad is None for p in unused)  # the pooler under cls pooling, as after sum
    torch.testing.assert_close(flatten([p.grad for p in shared], shared), expected, rtol=1e-4, atol=1e-6)
    if method not in ("sum", "uncertainty") and len(tasks) == 3:
        assert not torch.allclose(flat.sum(0), expected)  # the method did act on this step
    if method == "sum" and not diagnose:
        assert combiner._buffer is None  # one backward of the sum: no per-task buffer at all
    unit = flat / flat.norm(dim=1, keepdim=True)
    cosines = {f"grad_cos_{a}_{b}": float(unit[i] @ unit[j]) for (i, a), (j, b) in combinations(enumerate(tasks), 2)}
    if not diagnose or len(tasks) == 1:
        assert not any(k.startswith("grad_") for k in stats)
        return
    assert {k: v for k, v in stats.items() if k.startswith("grad_cos_")} == pytest.approx(cosines, abs=1e-5)
    assert stats["grad_conflict_frac"] == sum(v < 0 for v in cosines.values()) / 3


def test_conflict_diagnostics_by_hand():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 0.0]], dtype=F64)
    stats = conflict_diagnostics(["sst", "para", "sts"], g @ g.T)
    assert stats == pytest.approx({"grad_cos_sst_para": -1 / math.sqrt(2), "grad_cos_sst_sts": 0.0,
                                   "grad_cos_para_sts": 0.0, "grad_conflict_frac": 1 / 3})  # fmt: skip
    assert conflict_diagnostics(["sst"], g[:1] @ g[:1].T) == {}


@pytest.mark.parametrize("method", METHODS)
def test_training_with_each_combiner_reports_diagnostics(small_run, method):
    result = train(small_run(**{"grad.method": method, "grad.diagnose_every": 2, "train.max_steps": 4}))
    history = result.history[-1]
    losses = [v for k, v in history.items() if k.startswith("train_loss_")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    keys = {"grad_cos_sst_para", "grad_cos_sst_sts", "grad_cos_para_sts", "grad_conflict_frac"}
    assert keys <= history.keys() and all(-1 <= history[k] <= 1 for k in keys)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("method, key", [("gradvac", "targets"), ("uncertainty", "log_vars")])
def test_resume_is_exact_with_combiner_state(small_run, tmp_path, method, key):
    config = small_run(**{"grad.method": method, "grad.gradvac_beta": 0.5})
    train(config, checkpoint_dir=tmp_path / "straight")

    def stop(step, metrics, save):
        raise Interrupted

    with pytest.raises(Interrupted):
        train(config, checkpoint_dir=tmp_path / "cut", on_eval=stop)
    train(config, checkpoint_dir=tmp_path / "cut", resume=tmp_path / "cut" / "last")
    straight, resumed = (read_state(tmp_path / d / "last") for d in ("straight", "cut"))
    assert straight["step"] == resumed["step"] == 8
    a, b = (s["combiner"][key] for s in (straight, resumed))
    a, b = (torch.stack(list(x.values())) if isinstance(x, dict) else x for x in (a, b))
    assert a.abs().sum() > 0 and torch.equal(a, b)  # the state moved: resuming without it would not be exact
    weights = [load_checkpoint(tmp_path / d / "last").model.state_dict() for d in ("straight", "cut")]
    for k, v in weights[0].items():
        assert torch.equal(v, weights[1][k]), k


# A method written the way the package's docstring says to add one: its own module, registered
# with COMBINERS. Nothing else (trainer, config, validation) knows its name.
HALVED = '''
"""``halved``: the gradient of half the summed task losses."""

from mtbert.methods.base import COMBINERS, Combiner


@COMBINERS.register("halved")
class Halved(Combiner):
    def backward(self, losses, counts, diagnose=False):
        return self.backward_sum({task: loss / 2 for task, loss in losses.items()}, diagnose)
'''


def test_a_new_method_is_one_module_and_its_registration(small_run, tmp_path, monkeypatch):
    import importlib

    from mtbert.config import ConfigError
    from mtbert.validation import validate

    monkeypatch.setattr(COMBINERS, "_entries", dict(COMBINERS._entries))  # the registry as it was, after
    config = small_run(**{"grad.method": "halved", "train.max_steps": 2, "train.eval_every": 2})
    with pytest.raises(ConfigError, match="grad.method.*'halved'"):
        validate(config)  # not yet registered
    (tmp_path / "halved_method.py").write_text(HALVED)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("halved_method")  # the registration
    validate(config)
    trainers = []
    for method in ("halved", "sum"):  # one after the other: each seeds torch's generator (dropout) when made
        trainer = start(small_run(**{"grad.method": method, "train.max_steps": 2, "train.eval_every": 2}))
        trainer.objective.optimizer.zero_grad(set_to_none=True)
        trainer.objective.backward(0)  # the same seed: the same weights, batch and dropout masks
        trainers.append(trainer)
    halved, summed = trainers
    assert type(halved.objective.combiner).__name__ == "Halved"
    pairs = [(a.grad, b.grad) for a, b in zip(halved.objective.model.parameters(), summed.objective.model.parameters())
             if b.grad is not None]
    assert pairs and any(b.abs().max() > 0 for _, b in pairs)
    # Halving a loss halves its backward pass exactly in binary floating point; the tolerance only
    # allows for a kernel that sums in another order on another processor.
    for a, b in pairs:
        torch.testing.assert_close(a, b / 2, rtol=1e-5, atol=1e-8)
