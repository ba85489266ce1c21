"""A whole run: its phases in order (``phases``, or one multitask phase), over one model, with the
step, the best evaluation and the history running on across them; and ``train``, the entry point.

A resume is refused before anything loads when its config changes a setting of ``RESUME_FIXED``
(``check_resume``), then when its saved state does not fit this config and data (another schedule,
other training files), before any training step. The settings that may change (``RESUME_CHANGEABLE``
among them) apply from the resumed step on: the new learning rates (``Trainer.load_state_dict``), the
heads' dropout (``set_dropout``), a re-planned task schedule (``Schedule.load_state_dict``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtbert.config.fields import ConfigError
from mtbert.config.phases import run_phases, total_steps
from mtbert.config.resume import resume_conflicts
from mtbert.config.run import RunConfig
from mtbert.data.prepare import TaskData, prepare_data
from mtbert.model.multitask import MultiTaskModel, build_model, set_dropout
from mtbert.model.pretrained import load_encoder
from mtbert.train.checkpoint import CONFIG_FILE, CheckpointError, load_checkpoint, read_state, saved_evaluation
from mtbert.train.device import resolve_device
from mtbert.train.loop import OnEval, Stop, Trainer, TrainResult
from mtbert.train.mlm import MlmResult
from mtbert.train.phases import PHASES, Hooks, Phase
from mtbert.validation import load_config, validate


def build_run(config: RunConfig, resume: str | Path | None = None) -> tuple[MultiTaskModel, Any]:
    """The model and tokenizer a run starts from: fresh from ``model.encoder``, or a checkpoint's,
    built from the checkpoint's config and given ``config``'s head dropout (it may change at resume)."""
    if resume:
        loaded = load_checkpoint(resume)
        set_dropout(loaded.model, config)
        return loaded.model, loaded.tokenizer
    encoder, tokenizer = load_encoder(config.model.encoder, seed=config.train.seed)
    return build_model(config, encoder), tokenizer


class Run:
    """The phases of ``config`` (``mtbert.train.phases``) run one after another on ``model``.
    ``state`` is a resumable checkpoint's (from ``resume``): the phase it was saved in goes on
    from there. ``step`` counts the optimizer steps of the phases that train the tasks;
    ``mlm`` holds the ``MlmResult`` of each mlm phase run here."""

    def __init__(self, config: RunConfig, model: MultiTaskModel, tokenizer: Any, data: TaskData,
                 state: dict[str, Any] | None = None, resume: str | Path | None = None):
        self.config, self.model, self.tokenizer, self.data = config, model, tokenizer, data
        self.phases = run_phases(config)
        self.plugins: list[Phase] = [PHASES.get(p.kind)(p) for p in self.phases]
        self.device = resolve_device(config.train.device)
        self.state = state
        self.resume = Path(resume) if resume else None  # the checkpoint ``state`` came from
        self.phase, self.step = 0, 0
        self.mlm: list[MlmResult] = []
        self.best: Trainer | None = None  # the trainer of the phase that holds the best evaluation so far
        # The resumed phase's trainer, its state loaded now: a state that does not fit this config
        # and data (another schedule, other training files) is refused before any training.
        self.resumed = self.resumed_trainer(state) if state is not None else None

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the multitask and specialist phases (what ``step`` counts)."""
        return total_steps(self.config)

    def resumed_trainer(self, state: dict[str, Any]) -> Trainer:
        where = self.resume or "the checkpoint"
        try:
            index, offset = state.get("phase", 0), state.get("offset", 0)
            if not isinstance(index, int) or not 0 <= index < len(self.phases) or not self.plugins[index].resumable:
                kinds = [p.kind for p in self.phases]
                raise ValueError(f"its state is of phase {index!r}, but this run's phases are {kinds}")
            trainer = self.plugins[index].trainer(self, index, offset)
            trainer.load_state_dict(state)
        except KeyError as e:
            raise CheckpointError(f"{where}: its saved state lacks {e}; it cannot be resumed") from None
        except (ValueError, TypeError, IndexError, RuntimeError) as e:
            detail = str(e).removeprefix("cannot resume: ")
            if "sizes" in detail:
                detail += " (the training files in the data folder are not the ones the run trained on)"
            raise CheckpointError(f"{where}: cannot resume from it with this config and data: {detail}") from None
        self.phase, self.step = index, offset + trainer.step
        return trainer

    def run(self, on_eval: OnEval | None = None, on_step: Callable[[int], None] | None = None,
            checkpoint_dir: Path | None = None, stop: Stop | None = None) -> TrainResult:
        hooks = Hooks(on_eval, on_step, checkpoint_dir, stop)
        stopped_early, last = False, None
        for index in range(self.phase, len(self.phases)):
            trained = self.plugins[index].run(self, index, hooks)
            if trained is None:  # a phase whose steps are not the run's (mlm)
                continue
            trainer, last = trained
            stopped_early |= last.stopped_early
            self.step, self.best = last.steps, trainer
        best = self.best
        assert best is not None and last is not None, "a run has a multitask or specialist phase (config validation)"
        return TrainResult(
            metrics=best.best, best_step=best.best_step, steps=self.step,
            train_samples_per_s=last.train_samples_per_s, stopped_early=stopped_early, history=best.history,
            sst_confusion=best.best_confusion, checkpoint=best.best_checkpoint,
        )  # fmt: skip

    def take_resumed(self, index: int, checkpoint_dir: Path | None) -> Trainer | None:
        """The resumed trainer if phase ``index`` is the one resumed (once), its best checkpoint found."""
        if self.resumed is None or index != self.phase:
            return None
        trainer, self.resumed = self.resumed, None
        trainer.best_checkpoint = self.find_best(trainer, checkpoint_dir)
        return trainer

    def carry_best(self, trainer: Trainer) -> None:
        """The best so far carries on into a new phase: it saves "best" only to beat it."""
        if self.best is not None:
            best = self.best
            trainer.best, trainer.best_step, trainer.best_confusion = best.best, best.best_step, best.best_confusion
            trainer.best_checkpoint, trainer.history = best.best_checkpoint, best.history

    def find_best(self, trainer: Trainer, checkpoint_dir: Path | None) -> Path | None:
        """The checkpoint of the resumed run's best evaluation as ``checkpoint_dir/best``: copied there
        from beside the resumed checkpoint (or from it) when the run goes on in another folder.
        None when it is nowhere to be found (a new best will be saved) or there is no checkpoint_dir."""
        if checkpoint_dir is None or trainer.best is None or self.resume is None:
            return None
        target = checkpoint_dir / "best"
        for candidate in (target, self.resume.parent / "best", self.resume):
            if saved_evaluation(candidate) == (trainer.best_step, trainer.best.get("overall")):
                break
        else:
            return None
        if candidate != target:
            tmp = target.with_name(target.name + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            shutil.copytree(candidate, tmp)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        return target


def train(
    config: RunConfig,
    *,
    data: TaskData | None = None,
    on_eval: OnEval | None = None,
    on_step: Callable[[int], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
    stop: Stop | None = None,
) -> TrainResult:
    """Train as ``config`` says, through all its phases. ``data`` may be prepared once and shared
    between runs; ``checkpoint_dir`` keeps ``best/`` and ``last/`` checkpoints; ``resume``
    continues from a checkpoint saved with its state; ``stop()`` True ends the run after a step
    (``TrainingInterrupted``)."""
    run = open_run(config, resume, data)
    return run.run(on_eval, on_step, Path(checkpoint_dir) if checkpoint_dir else None, stop)


def check_resume(config: RunConfig, resume: str | Path) -> None:
    """Refuse, before anything loads, a resume whose config changes a setting fixed at resume
    (``RESUME_FIXED``): the checkpoint's config.yaml against ``config``."""
    directory = Path(resume)
    if not directory.is_dir():
        what = "is a file" if directory.is_file() else "does not exist"
        raise CheckpointError(f"checkpoint {directory} {what}; --resume takes a checkpoint folder, e.g. <out_dir>/last")
    if not (directory / CONFIG_FILE).is_file():
        raise CheckpointError(f"{directory / CONFIG_FILE} is missing; --resume takes a checkpoint folder that "
                              "mtbert-train saved, e.g. <out_dir>/last")  # fmt: skip
    try:
        saved = load_config(directory / CONFIG_FILE)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    conflicts = resume_conflicts(saved, config)
    if conflicts:
        raise ConfigError(
            f"--resume {directory}",
            "; ".join(conflicts) + ". These settings are fixed at resume: keep the checkpoint's values, or start "
            "a new run without --resume",
        )


def check_out_dir(out_dir: str) -> None:
    """``train.out_dir`` must be a folder, or creatable: found now, not at the first save."""
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError("train.out_dir", f"is {str(path)!r}, which is a file; it must be a folder (for best/ and last/)")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError("train.out_dir", f"is {str(path)!r}, but {parent} is a file, so the folder cannot be made")
    try:  # a real write, where the folder would be made: permission bits alone miss read-only mounts
        tempfile.TemporaryDirectory(dir=parent).cleanup()
    except OSError as e:
        raise ConfigError("train.out_dir", f"is {str(path)!r}, but {parent} is not writable ({e.strerror or e})") from None


def open_run(config: RunConfig, resume: str | Path | None = None, data: TaskData | None = None) -> Run:
    """A run ready to go: model and tokenizer (fresh, or a checkpoint's with the state of the phase
    it was saved in), and the data (prepared here unless given). The config is checked as a whole
    first (a config built in code, ``RunConfig().with_overrides(...)``, is checked here), then a
    resume: its settings fixed at resume, then its saved state, before any weights or data load."""
    validate(config)
    state = None
    if resume:
        check_resume(config, resume)
        state = read_state(resume)
    model, tokenizer = build_run(config, resume)
    return Run(config, model, tokenizer, data or prepare_data(config, tokenizer), state, resume)


def start(config: RunConfig, resume: str | Path | None = None, data: TaskData | None = None) -> Trainer:
    """The trainer of a one-phase run, ready to step (benchmarks and tests drive it directly)."""
    if config.phases and len(config.phases) > 1:
        raise ValueError(f"start() drives one phase; this config has {len(config.phases)}: use open_run()")
    run = open_run(config, resume, data)
    return run.resumed or run.plugins[0].trainer(run, 0, 0)
