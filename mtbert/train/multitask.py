"""The multi-task objective: what one step of a multitask or specialist phase computes.

Each step the sampling schedule (``sampling.schedule``) says how many examples of each task the step
holds; each task's stream hands over that many (length-bucketed, reshuffled every pass); the model
computes one loss per task (``losses.<task>``); the gradient combiner named by ``grad.method`` turns
them into gradients. An evaluation scores every task's dev set (``mtbert.predict.evaluate``).
``multitask_trainer`` puts it in the training loop with the phase's steps, evaluations and checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch

from mtbert.config.run import RunConfig
from mtbert.data.course import to_device
from mtbert.data.prepare import TaskData
from mtbert.data.sampling import schedule_for
from mtbert.data.stream import TaskStream
from mtbert.methods import COMBINERS
from mtbert.model.multitask import MultiTaskModel
from mtbert.predict import Evaluation, evaluate
from mtbert.tasks import TASKS
from mtbert.train.checkpoint import save_checkpoint
from mtbert.train.device import resolve_device
from mtbert.train.loop import StepLosses, Trainer
from mtbert.train.losses import task_loss
from mtbert.train.optim import build_optimizer, build_scheduler


class MultitaskObjective:
    """The model's task losses on ``data``, as ``config`` (the phase's config) sets them up."""

    def __init__(self, config: RunConfig, model: MultiTaskModel, data: TaskData):
        self.config, self.model, self.data = config, model, data
        self.device = resolve_device(config.train.device)
        self.bf16 = config.train.bf16 and self.device.type == "cuda"
        model.to(self.device)
        seed = config.train.seed
        self.schedule = schedule_for(config, {t: len(ds) for t, ds in data.train.items()})
        self.streams = {t: TaskStream(ds, config.sampling.batch_size, seed + i) for i, (t, ds) in enumerate(data.train.items())}
        self.losses = {t: task_loss(config, t, model.head(t)) for t in TASKS}
        self.combiner = COMBINERS.get(config.grad.method)(
            config.grad, model.encoder_parameters(), torch.Generator().manual_seed(seed)
        )
        self.optimizer = build_optimizer(model.encoder, model.head_parameters(), config.optim)
        for group in self.combiner.param_groups(config.optim):  # e.g. uncertainty's log-variances
            self.optimizer.add_param_group(group)
        self.scheduler = build_scheduler(self.optimizer, config.optim, config.train.max_steps)
        self.clip_norm = config.optim.clip_norm
        # Specialists (one encoder branch per task) share no trainable weights, so each is clipped
        # alone, as if trained by itself; a shared encoder's gradient is clipped as one.
        if hasattr(model.encoder, "task_parameters"):
            self.clip_groups = [model.encoder.task_parameters(t) + model.head_parameters(t) for t in model.tasks]
        else:
            self.clip_groups = [[p for p in model.parameters() if p.requires_grad]]

    def backward(self, step: int) -> StepLosses:
        plan = self.schedule.plan(step)
        self.model.train()
        losses = {}
        for task, n in plan.items():
            batch = to_device(self.streams[task].take(n), self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.model(task, batch)
            losses[task] = self.losses[task](out, batch["labels"])
        every = self.config.grad.diagnose_every
        diagnostics = self.combiner.backward(losses, dict(plan), diagnose=bool(every) and (step + 1) % every == 0)
        return StepLosses({f"train_loss_{t}": v for t, v in losses.items()}, sum(plan.values()), diagnostics)

    def not_finite(self, values: dict[str, float], step: int) -> str:
        return f"a training loss is not finite at step {step}: {values}"

    def evaluate(self) -> Evaluation:
        return evaluate(self.model, self.data.dev, self.device, self.bf16, self.data.cfimdb_dev)

    def epoch_of(self, step: int) -> int:
        return self.schedule.epoch_of(step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.state_dict(),
            "streams": {t: s.state_dict() for t, s in self.streams.items()},
            "combiner_rng": self.combiner.generator.get_state(),
            "combiner": self.combiner.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # a resume that changes the schedule's rates or counts re-plans from the saved step on
        self.schedule.load_state_dict(state["schedule"], step=state["step"])
        for t, s in self.streams.items():
            s.load_state_dict(state["streams"][t])
        self.combiner.generator.set_state(state["combiner_rng"])
        self.combiner.load_state_dict(state.get("combiner", {}))


def multitask_trainer(config: RunConfig, model: MultiTaskModel, tokenizer: Any, data: TaskData, *,
                      run_config: RunConfig | None = None, phase: int = 0, offset: int = 0) -> Trainer:
    """The training loop over ``MultitaskObjective``: ``config`` is the phase's config
    (``phase_config``); ``run_config`` the whole run's, written into checkpoints so a resume knows
    every phase; ``offset`` counts the steps of earlier phases."""
    objective = MultitaskObjective(config, model, data)
    whole = run_config or config

    def save(directory, metrics, state):
        return save_checkpoint(directory, model, tokenizer, whole, metrics, state)

    t = config.train
    return Trainer(objective, max_steps=t.max_steps, eval_every=t.eval_every, patience=t.patience, seed=t.seed,
                   phase=phase, offset=offset, save=save)  # fmt: skip
