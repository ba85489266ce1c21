"""The training loop: one optimizer step at a time, for whatever a phase trains.

What a step computes is the phase's ``Objective``: the multi-task objective (``mtbert.train.multitask``)
asks the sampling schedule how many examples of each task the step holds, takes them from each
task's stream, computes one loss per task and lets the gradient combiner named by ``grad.method``
turn them into gradients; the masked-LM objective (``mtbert.train.mlm``) masks a batch of sentences.
The loop does the rest, the same for every objective: gradient clipping, the optimizer and
learning-rate steps, the step and sample counts, the non-finite-loss check, and, every
``eval_every`` steps, an evaluation that keeps the best one, saves checkpoints, calls
``on_eval(step, metrics, save)`` (``save(directory)`` writes a resumable checkpoint) and stops early
after ``patience`` evaluations without a better ``overall``. The loop never prints.

Dropout draws from torch's global generator: it is seeded when the loop is made and saved in
resumable checkpoints, so N steps, a save, a resume and N more steps give the same weights as 2N
steps in one go.

``stop()`` (optional) is asked after every step, once that step's evaluation (if any) is done: the
state is whole there, so on True the loop saves ``last`` and raises ``TrainingInterrupted``; a
resume from that ``last`` goes on exactly as if never stopped. A resume takes the new config's
learning rates and weight decay (torch's saved optimizer state would restore the old ones).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

OnEval = Callable[[int, dict[str, float], Callable[[Path], Path]], None]
Stop = Callable[[], bool]
Save = Callable[[Path, dict[str, Any], dict[str, Any]], Path]  # (directory, metrics, state) -> directory


class TrainingInterrupted(Exception):
    """``stop()`` asked the run to stop. It ended at a step boundary, global step ``step``;
    ``checkpoint`` is the resumable ``last`` saved there, or None when nothing could be saved (no
    ``checkpoint_dir``, or inside an mlm phase, which has no checkpoints)."""

    def __init__(self, step: int, checkpoint: Path | None):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"stopped at step {step}" + (f"; resumable from {checkpoint}" if checkpoint else ""))


@dataclass
class TrainResult:
    metrics: dict[str, float]  # the best evaluation's dev metrics
    best_step: int
    steps: int
    train_samples_per_s: float
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    sst_confusion: list[list[int]] | None = None
    checkpoint: Path | None = None


@dataclass
class StepLosses:
    """One step's forward and backward, as an objective hands it to the loop."""

    losses: dict[str, torch.Tensor]  # by the name they are reported under, e.g. train_loss_sst
    samples: int  # examples in the step
    diagnostics: dict[str, float] = field(default_factory=dict)  # e.g. gradient-conflict figures


class Objective(Protocol):
    """What a phase trains. ``backward(step)`` computes step ``step``'s (0-based) losses and leaves
    their gradients on the parameters; the loop clips them (``clip_norm`` over each of
    ``clip_groups``; 0 or None: no clipping) and steps ``optimizer`` and ``scheduler``.

    Only an objective the loop evaluates (``eval_every`` set) is asked for ``evaluate`` (an object
    with ``metrics``, holding ``overall``, and ``sst_confusion``), ``epoch_of`` and its part of the
    resumable state."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    clip_groups: list[list[nn.Parameter]]
    clip_norm: float | None

    def backward(self, step: int) -> StepLosses: ...

    def not_finite(self, values: dict[str, float], step: int) -> str: ...

    def evaluate(self) -> Any: ...

    def epoch_of(self, step: int) -> int: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Trainer:
    """The loop over one phase's ``objective``: ``run()`` takes steps up to ``max_steps``.

    ``offset`` counts the steps of earlier phases, so the steps reported to ``on_step``/``on_eval``
    and in metrics run on across phases; ``phase`` is the phase's index, saved in the state;
    ``save(directory, metrics, state)`` writes a checkpoint (None: the objective has none).
    """

    def __init__(self, objective: Objective, *, max_steps: int, eval_every: int | None, patience: int | None = None,
                 seed: int = 0, phase: int = 0, offset: int = 0, save: Save | None = None):
        self.objective = objective
        self.max_steps, self.eval_every, self.patience = max_steps, eval_every, patience
        self.phase, self.offset, self._save = phase, offset, save
        torch.manual_seed(seed)  # dropout's generator; see the module docstring
        self.step = 0
        self.best: dict[str, float] | None = None
        self.best_step = 0
        self.since_best = 0
        self.best_confusion: list[list[int]] | None = None
        self.best_checkpoint: Path | None = None  # where the best evaluation's checkpoint is
        self.history: list[dict[str, float]] = []
        self.running: dict[str, list[float]] = {}  # training figures since the last evaluation
        self.samples = 0
        self.train_seconds = 0.0

    # -- resumable state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        o = self.objective
        return {
            "step": self.step, "phase": self.phase, "offset": self.offset,
            "optimizer": o.optimizer.state_dict(), "scheduler": o.scheduler.state_dict(),
            **o.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "best": self.best, "best_step": self.best_step, "since_best": self.since_best,
            "history": self.history, "samples": self.samples, "train_seconds": self.train_seconds,
            "running": self.running,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        o = self.objective
        self.step = state["step"]
        configured = [{k: g[k] for k in ("initial_lr", "weight_decay")} for g in o.optimizer.param_groups]
        o.optimizer.load_state_dict(state["optimizer"])
        o.scheduler.load_state_dict(state["scheduler"])
        self._use_configured_rates(configured)
        o.load_state_dict(state)
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.best, self.best_step, self.since_best = state["best"], state["best_step"], state["since_best"]
        self.history, self.samples, self.train_seconds = state["history"], state["samples"], state["train_seconds"]
        self.running = {k: list(v) for k, v in state.get("running", {}).items()}

    def _use_configured_rates(self, configured: list[dict[str, float]]) -> None:
        """This config's base learning rates and weight decay, at the saved step of its schedule.
        ``load_state_dict`` of torch's optimizer and LambdaLR brings back the saved ones, which would
        make a resume with a new ``optim.lr`` silently keep the old. With an unchanged config the
        rates come out bit-identical (the same product LambdaLR computes)."""
        optimizer, sched = self.objective.optimizer, self.objective.scheduler
        for group, want in zip(optimizer.param_groups, configured):
            group.update(want)
        sched.base_lrs = [want["initial_lr"] for want in configured]
        lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = lrs

    def save(self, directory: Path, metrics: dict[str, float] | None = None) -> Path:
        if self._save is None:
            raise RuntimeError("this phase keeps no checkpoints")
        if metrics is None:
            metrics = self.history[-1] if self.history else {}
        return self._save(directory, {**metrics, "step": self.offset + self.step}, self.state_dict())

    # -- the loop --------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        o = self.objective
        out = o.backward(self.step)
        if o.clip_norm:
            for group in o.clip_groups:
                torch.nn.utils.clip_grad_norm_([p for p in group if p.grad is not None], o.clip_norm)
        o.optimizer.step()
        o.scheduler.step()
        o.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.samples += out.samples
        values = {name: loss.item() for name, loss in out.losses.items()}
        if any(not math.isfinite(v) for v in values.values()):
            raise FloatingPointError(o.not_finite(values, self.offset + self.step))
        return {**values, **out.diagnostics}

    def run(self, on_eval: OnEval | None = None, on_step: Callable[[int], None] | None = None,
            checkpoint_dir: Path | None = None, stop: Stop | None = None) -> TrainResult:
        stopped_early = False
        while self.step < self.max_steps:
            start = time.perf_counter()
            for k, v in self.train_step().items():
                self.running.setdefault(k, []).append(v)
            self.train_seconds += time.perf_counter() - start
            if on_step:
                on_step(self.offset + self.step)
            if self.eval_every and (self.step % self.eval_every == 0 or self.step == self.max_steps):
                self.evaluate(on_eval, checkpoint_dir)
                if self.patience and self.since_best >= self.patience:
                    stopped_early = True
                    break
            if stop is not None and stop():
                self.interrupt(checkpoint_dir)
        if self.eval_every and self.best is None:  # resumed at or past max_steps before any evaluation
            self.evaluate(on_eval, checkpoint_dir)
        return TrainResult(
            metrics=self.best or {}, best_step=self.best_step, steps=self.offset + self.step,
            train_samples_per_s=self.samples / max(self.train_seconds, 1e-9), stopped_early=stopped_early,
            history=self.history, sst_confusion=self.best_confusion, checkpoint=self.best_checkpoint,
        )  # fmt: skip

    def evaluate(self, on_eval: OnEval | None, checkpoint_dir: Path | None) -> dict[str, float]:
        """Evaluate the objective now; save ``best`` (if better) and ``last``; tell ``on_eval``."""
        evaluation = self.objective.evaluate()
        metrics = {
            **evaluation.metrics, **{k: sum(v) / len(v) for k, v in self.running.items()},
            "step": self.offset + self.step, "phase": self.phase,
            "epoch": self.objective.epoch_of(max(self.step - 1, 0)),
            "lr": self.objective.scheduler.get_last_lr()[0],
            "train_samples_per_s": self.samples / max(self.train_seconds, 1e-9),
            "train_seconds": self.train_seconds,  # time inside training steps, this phase so far
        }  # fmt: skip
        self.running = {}
        self.history.append(metrics)
        if self.best is None or metrics["overall"] > self.best["overall"]:
            self.best, self.best_step, self.since_best = metrics, self.offset + self.step, 0
            self.best_confusion = evaluation.sst_confusion
            if checkpoint_dir:
                self.best_checkpoint = self.save(checkpoint_dir / "best", metrics)
        else:
            self.since_best += 1
        if checkpoint_dir:
            self.save(checkpoint_dir / "last", metrics)
        if on_eval:
            on_eval(self.offset + self.step, metrics, lambda d, m=metrics: self.save(Path(d), m))
        return metrics

    def interrupt(self, checkpoint_dir: Path | None) -> None:
        """Stop here, between two steps: save ``last`` unless this step's evaluation just did."""
        last = None
        if checkpoint_dir:
            last = checkpoint_dir / "last"
            seen = self.history[-1] if self.history else {}
            if seen.get("step") != self.offset + self.step:  # else this step's evaluation saved it
                self.save(last, {**seen, "evaluated_step": seen.get("step"), "interrupted": True})
        raise TrainingInterrupted(self.offset + self.step, last)
