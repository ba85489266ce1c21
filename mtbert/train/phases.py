"""The kinds of phase a run goes through (``phases: [mlm, multitask, specialist]``), as plug-ins.

Each kind is a ``Phase`` registered in ``PHASES`` under its ``phases.N.kind`` name and does its own
setup; ``mtbert.train.run.Run`` calls ``run()`` on each phase in order and knows no kind by name.

- ``mlm``: further masked-LM pre-training of the encoder on the task training sentences
  (paper 000); no evaluations, so no checkpoints inside it, and its steps are not the run's;
- ``multitask``: the multi-task objective with the phase's own steps, rates and ``set:``;
- ``specialist``: two-step fine-tuning's second step (paper 002): a copy of the encoder per task
  with its head re-initialised, each trained on its own task; the bottom ``model.freeze_depth``
  layers stay frozen and shared (paper 004), all of them with ``heads_only`` (paper 003).
  Evaluations score each task with its specialist.

To add a kind: a ``Phase`` subclass here registered with ``@PHASES.register("name")``, and the name in
``mtbert.config.sections.PHASE_KINDS``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mtbert.config.phases import phase_config
from mtbert.config.run import RunConfig
from mtbert.config.sections import PhaseConfig
from mtbert.data.sentences import task_sentences
from mtbert.model.multitask import to_specialists
from mtbert.registry import Registry
from mtbert.train.loop import OnEval, Stop, Trainer, TrainingInterrupted, TrainResult
from mtbert.train.mlm import further_pretrain
from mtbert.train.multitask import multitask_trainer


@dataclass
class Hooks:
    """What the caller of a run hands every phase: callbacks, the checkpoint folder, ``stop``."""

    on_eval: OnEval | None = None
    on_step: Callable[[int], None] | None = None
    checkpoint_dir: Path | None = None
    stop: Stop | None = None


class Phase:
    """One phase of a run, ``settings`` being its ``phases`` entry. ``run`` gets the ``Run`` (its
    config, model, tokenizer, data, device and step) and returns the phase's trainer and result,
    or None for a phase whose steps are not the run's."""

    resumable: ClassVar[bool] = True  # a checkpoint can be saved inside it and resumed from

    def __init__(self, settings: PhaseConfig):
        self.settings = settings

    def config(self, run_config: RunConfig, index: int) -> RunConfig:
        """The config this phase trains with (``phase_config``); the run's own without ``phases``."""
        return phase_config(run_config, index)

    def trainer(self, run: Any, index: int, offset: int) -> Trainer:
        """The training loop over this phase, on the run's model as it is now."""
        return multitask_trainer(self.config(run.config, index), run.model, run.tokenizer, run.data,
                                 run_config=run.config, phase=index, offset=offset)  # fmt: skip

    def start(self, run: Any) -> None:
        """Before a fresh start of this phase (not on resume): change the run's model if needed."""

    def run(self, run: Any, index: int, hooks: Hooks) -> tuple[Trainer, TrainResult] | None:
        trainer = run.take_resumed(index, hooks.checkpoint_dir)
        if trainer is None:
            self.start(run)
            trainer = self.trainer(run, index, run.step)
            run.carry_best(trainer)
        return trainer, trainer.run(hooks.on_eval, hooks.on_step, hooks.checkpoint_dir, hooks.stop)


PHASES: Registry[type[Phase]] = Registry("phases.kind")


@PHASES.register("multitask")
class Multitask(Phase):
    """The multi-task objective, as ``phase_config`` sets it up."""


@PHASES.register("specialist")
class Specialist(Phase):
    """One encoder branch and a fresh head per task, over a shared frozen bottom."""

    def config(self, run_config: RunConfig, index: int) -> RunConfig:
        cfg = super().config(run_config, index)
        if cfg.grad.method != "sum":  # the specialists share no trainable weight: every combiner would reduce to the sum
            cfg = dataclasses.replace(cfg, grad=dataclasses.replace(cfg.grad, method="sum"))
        return cfg

    def start(self, run: Any) -> None:
        depth = run.model.encoder.num_layers if self.settings.heads_only else run.config.model.freeze_depth
        run.model = to_specialists(run.model, depth, seed=run.config.train.seed)


@PHASES.register("mlm")
class Mlm(Phase):
    """Masked-LM steps on the encoder; the run's step does not move and nothing is saved."""

    resumable = False

    def run(self, run: Any, index: int, hooks: Hooks) -> None:
        config = self.config(run.config, index)
        mlm = config.mlm
        if self.settings.lr:
            mlm = dataclasses.replace(mlm, lr=self.settings.lr)
        run.model.to(run.device)

        def on_step(step: int, loss: float) -> None:
            if hooks.stop is not None and hooks.stop():  # mlm phases keep no checkpoint: nothing to resume from
                raise TrainingInterrupted(run.step, None)

        run.mlm.append(further_pretrain(
            run.model.encoder, run.tokenizer, task_sentences(run.data), mlm, max_length=config.data.max_length,
            steps=self.settings.steps, seed=config.train.seed, device=run.device, bf16=config.train.bf16, on_step=on_step,
        ))  # fmt: skip
