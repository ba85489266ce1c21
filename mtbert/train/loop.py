"""The training loop: one optimizer step at a time, as the sampling schedule plans it.

Each step: the schedule says how many examples of each task the step holds; each task's stream
hands over that many (length-bucketed, reshuffled every pass); the model computes one loss per
task; the gradient combiner named by ``grad.method`` turns them into one update. Every
``train.eval_every`` steps the dev sets are scored and ``on_eval(step, metrics, save)`` is called,
where ``save(directory)`` writes a resumable checkpoint. The loop never prints.

Dropout draws from torch's global generator: it is seeded from ``train.seed`` when a run starts and
saved in resumable checkpoints, so N steps, a save, a resume and N more steps give the same
weights as 2N steps in one go.

``stop()`` (optional) is asked after every step, once that step's evaluation (if any) is done: the
state is whole there, so on True the loop saves ``last`` and raises ``TrainingInterrupted``; a
resume from that ``last`` goes on exactly as if never stopped. A resume takes the new config's
learning rates and weight decay (torch's saved optimizer state would restore the old ones) and
refuses a config that changes a setting of ``RESUME_FIXED`` before anything loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from mtbert.train.checkpoint import CONFIG_FILE, METRICS_FILE, CheckpointError, read_state, save_checkpoint
from mtbert.config import TASKS, ConfigError, RunConfig, load_config, resume_conflicts
from mtbert.data.course import BucketBatchSampler, MalformedRow, TaskDataset, cfimdb_as_sst, load_task, resolve_data_dir, to_device
from mtbert.evaluate import Scores, accuracy, confusion_matrix
from mtbert.methods.base import COMBINERS
from mtbert.train.losses import LOSSES, LossSpec, build_loss
from mtbert.model.multitask import MultiTaskModel, build_model
from mtbert.train.optim import build_optimizer, build_scheduler
from mtbert.data.sampling import build_schedule

DATA_TASK = {"sst": "sst", "para": "quora", "sts": "sts"}  # run task -> course files
EVAL_BATCH = 64

OnEval = Callable[[int, dict[str, float], Callable[[Path], Path]], None]
Stop = Callable[[], bool]


class TrainingInterrupted(Exception):
    """``stop()`` asked the run to stop. It ended at a step boundary, global step ``step``;
    ``checkpoint`` is the resumable ``last`` saved there, or None when nothing could be saved (no
    ``checkpoint_dir``, or inside an mlm phase, which has no checkpoints)."""

    def __init__(self, step: int, checkpoint: Path | None):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"stopped at step {step}" + (f"; resumable from {checkpoint}" if checkpoint else ""))


@dataclass
class TaskData:
    """Tokenised train and dev sets of every task: built once, shareable between runs."""

    train: dict[str, TaskDataset]
    dev: dict[str, TaskDataset]
    cfimdb_dev: TaskDataset | None = None  # scored by the sst head when CFIMDB joins SST training

    @property
    def malformed(self) -> list[MalformedRow]:
        return [row for sets in (self.train, self.dev) for ds in sets.values() for row in ds.malformed]


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


def pair_encodings(config: RunConfig) -> dict[str, str]:
    """How each task's files are tokenised: what its head reads ('single', 'concat', 'siamese')."""
    from mtbert.model.heads import head_class

    return {t: head_class(t, getattr(config.heads, t).kind).encoding for t in TASKS}


def load_split(config: RunConfig, tokenizer: Any, task: str, split: str, max_examples: int | None = None,
               data_dir: Path | None = None) -> TaskDataset:
    """One task's file, tokenised the way its head reads it (through the on-disk cache)."""
    d = config.data
    encoding = pair_encodings(config)[task]
    return load_task(
        data_dir or resolve_data_dir(d.dir), DATA_TASK[task], split, tokenizer, max_length=d.max_length,
        pair="siamese" if encoding == "siamese" else "concat", separator=d.pair_separator if task != "sst" else None,
        cache_dir=d.cache_dir, max_examples=max_examples, seed=config.train.seed,
    )  # fmt: skip


def prepare_data(config: RunConfig, tokenizer: Any) -> TaskData:
    """Read, tokenise and cap the train and dev files of every task."""
    data_dir = resolve_data_dir(config.data.dir)
    d = config.data
    train = {t: load_split(config, tokenizer, t, "train", d.max_train_per_task, data_dir) for t in TASKS}
    dev = {t: load_split(config, tokenizer, t, "dev", d.max_eval_per_task, data_dir) for t in TASKS}
    if not d.extra_sst:
        return TaskData(train=train, dev=dev)
    # paper 003: CFIMDB reviews as extra SST training data, and its dev set scored by the sst head
    cfimdb = {split: load_task(data_dir, "cfimdb", split, tokenizer, max_length=d.max_length, cache_dir=d.cache_dir,
                               max_examples=cap, seed=config.train.seed)
              for split, cap in (("train", d.max_train_per_task), ("dev", d.max_eval_per_task))}  # fmt: skip
    extra = cfimdb["train"].select()
    train["sst"] = train["sst"] + TaskDataset(cfimdb_as_sst(extra.examples, d.extra_sst), extra.encoded, None,
                                              extra.malformed)
    return TaskData(train=train, dev=dev, cfimdb_dev=cfimdb["dev"])


class TaskStream:
    """Examples of one task in length-bucketed order, a fresh shuffle every pass; resumable from
    ``(epoch, position)`` because each pass's order is drawn from its own seeded generator."""

    def __init__(self, dataset: TaskDataset, batch_size: int, seed: int):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.epoch, self.position = 0, 0
        self._order = self._order_of(0)

    def _order_of(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        sampler = BucketBatchSampler(self.dataset.lengths(), self.batch_size, generator=g)
        return [i for batch in sampler for i in batch]

    def take(self, n: int) -> dict[str, Any]:
        picked: list[int] = []
        while len(picked) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._order_of(self.epoch)
            k = min(n - len(picked), len(self._order) - self.position)
            picked += self._order[self.position : self.position + k]
            self.position += k
        return self.dataset.collate([self.dataset[i] for i in picked])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._order_of(self.epoch)


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device; a CUDA device this torch cannot see is a ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError("train.device", f"is {name!r}, but must be auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError("train.device", f"is {name!r}, but this torch ({torch.__version__}) sees no CUDA GPU; "
                                              "use auto or cpu")  # fmt: skip
        if device.index is not None and device.index >= count:
            raise ConfigError("train.device", f"is {name!r}, but this torch sees {count} GPU(s): cuda:0 to "
                                              f"cuda:{count - 1}")  # fmt: skip
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:  # a device type this torch build or machine lacks
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("train.device", f"is {name!r}, but this torch cannot use it ({first}); use auto or cpu") from None
    return device


def build_schedule_for(config: RunConfig, data: TaskData) -> Any:
    s = config.sampling
    sizes = {t: len(ds) for t, ds in data.train.items()}
    settings: dict[str, Any] = {
        "proportional": {"alpha": s.alpha, "mixed": s.mixed},
        "annealed": {"anneal_start": s.anneal_start, "anneal_end": s.anneal_end, "mixed": s.mixed},
        "round_robin": {"per_step": s.per_step},
        "ratios": {"ratios": dataclasses.asdict(s.ratios)},
        "samples_per_epoch": {"samples_per_epoch": dataclasses.asdict(s.samples_per_epoch)},
    }.get(s.schedule, {})
    if s.schedule == "annealed":  # its alpha falls over the run's epochs
        probe = build_schedule("proportional", sizes, s.batch_size, seed=config.train.seed)
        settings["max_epochs"] = max(1, math.ceil(config.train.max_steps / probe.steps_per_epoch))
    return build_schedule(s.schedule, sizes, s.batch_size, seed=config.train.seed, **settings)


@dataclass
class TaskPredictions:
    """A dataset's predictions in file order (``predict_outputs``)."""

    ids: list[str]
    label: torch.Tensor  # (N,) as ``Prediction.label``: sst class, para 0/1, sts score
    probs: torch.Tensor | None  # sst (N, 5) class probabilities, para (N,) P(paraphrase); sts None
    gold: torch.Tensor | None  # (N,) labels; None for a test set


def predict(model: MultiTaskModel, task: str, ds: TaskDataset, device: torch.device, bf16: bool = False) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
    """(ids, predictions, gold labels or None) of a dataset in file order; batches sorted by length."""
    out = predict_outputs(model, task, ds, device, bf16)
    return out.ids, out.label, out.gold


@torch.inference_mode()
def predict_outputs(model: MultiTaskModel, task: str, ds: TaskDataset, device: torch.device,
                    bf16: bool = False) -> TaskPredictions:  # fmt: skip
    """``predict`` with the head's probabilities too (what ensembles average)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(ds)), key=ds.lengths().__getitem__)
    ids, preds, probs, golds = [], [], [], []
    for start in range(0, len(order), EVAL_BATCH):
        batch = ds.collate([ds[i] for i in order[start : start + EVAL_BATCH]])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model.predict(task, to_device(batch, device))
        ids += batch["ids"]
        preds.append(pred.label.cpu())
        probs.append(None if pred.probs is None else pred.probs.float().cpu())
        golds.append(batch["labels"])
    model.train(was_training)
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))  # position of each example in sorted order
    gold = None if any(g is None for g in golds) else torch.cat(golds)[back]
    prob = None if any(p is None for p in probs) else torch.cat(probs)[back]
    return TaskPredictions([ids[i] for i in back.tolist()], torch.cat(preds)[back], prob, gold)


def evaluate(model: MultiTaskModel, dev: dict[str, TaskDataset], device: torch.device, bf16: bool = False,
             cfimdb: TaskDataset | None = None) -> tuple[dict[str, float], list[list[int]]]:
    """Dev metrics of every task, and the SST confusion matrix; with ``cfimdb``, also the sst
    head's accuracy on CFIMDB's binary labels (a class above the neutral 2 counts as positive)."""
    pairs = {}
    for task, ds in dev.items():
        _, pred, gold = predict(model, task, ds, device, bf16)
        pairs[task] = (pred.double().numpy(), gold.double().numpy())
    metrics = Scores.compute(**pairs).as_dict()
    if cfimdb is not None:
        _, pred, gold = predict(model, "sst", cfimdb, device, bf16)
        metrics["cfimdb_acc"] = accuracy((pred > 2).double().numpy(), gold.double().numpy())
    return metrics, confusion_matrix(*pairs["sst"]).tolist()


class Trainer:
    """One phase's model, optimizer, schedule and streams; ``run()`` trains it to the phase's end.

    ``config`` is the phase's config (``phase_config``); ``run_config`` the whole run's, written
    into checkpoints so a resume knows every phase; ``offset`` counts the steps of earlier phases,
    so the steps reported to ``on_eval`` and in metrics run on across phases.
    """

    def __init__(self, config: RunConfig, model: MultiTaskModel, tokenizer: Any, data: TaskData, *,
                 run_config: RunConfig | None = None, phase: int = 0, offset: int = 0):
        self.config, self.model, self.tokenizer, self.data = config, model, tokenizer, data
        self.run_config = run_config or config
        self.phase, self.offset = phase, offset
        self.device = resolve_device(config.train.device)
        self.bf16 = config.train.bf16 and self.device.type == "cuda"
        model.to(self.device)
        seed = config.train.seed
        torch.manual_seed(seed)  # dropout's generator; see the module docstring
        self.schedule = build_schedule_for(config, data)
        self.streams = {t: TaskStream(ds, config.sampling.batch_size, seed + i) for i, (t, ds) in enumerate(data.train.items())}
        self.losses = {t: build_loss(t, model.head(t), loss_spec(config, t)) for t in TASKS}
        self.combiner = COMBINERS.get(config.grad.method)(
            config.grad, model.encoder_parameters(), torch.Generator().manual_seed(seed)
        )
        self.optimizer = build_optimizer(model.encoder, model.head_parameters(), config.optim)
        for group in self.combiner.param_groups(config.optim):  # e.g. uncertainty's log-variances
            self.optimizer.add_param_group(group)
        self.scheduler = build_scheduler(self.optimizer, config.optim, config.train.max_steps)
        # Specialists (one encoder branch per task) share no trainable weights, so each is clipped
        # alone, as if trained by itself; a shared encoder's gradient is clipped as one.
        if hasattr(model.encoder, "task_parameters"):
            self.clip_groups = [model.encoder.task_parameters(t) + model.head_parameters(t) for t in model.tasks]
        else:
            self.clip_groups = [[p for p in model.parameters() if p.requires_grad]]
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
        return {
            "step": self.step, "phase": self.phase, "offset": self.offset,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "streams": {t: s.state_dict() for t, s in self.streams.items()},
            "combiner_rng": self.combiner.generator.get_state(),
            "combiner": self.combiner.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "best": self.best, "best_step": self.best_step, "since_best": self.since_best,
            "history": self.history, "samples": self.samples, "train_seconds": self.train_seconds,
            "running": self.running,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        configured = [{k: g[k] for k in ("initial_lr", "weight_decay")} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._use_configured_rates(configured)
        self.schedule.load_state_dict(state["schedule"])
        for t, s in self.streams.items():
            s.load_state_dict(state["streams"][t])
        self.combiner.generator.set_state(state["combiner_rng"])
        self.combiner.load_state_dict(state.get("combiner", {}))
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
        for group, want in zip(self.optimizer.param_groups, configured):
            group.update(want)
        sched = self.scheduler
        sched.base_lrs = [want["initial_lr"] for want in configured]
        lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = lrs

    def save(self, directory: Path, metrics: dict[str, float] | None = None) -> Path:
        if metrics is None:
            metrics = self.history[-1] if self.history else {}
        metrics = {**metrics, "step": self.offset + self.step}
        return save_checkpoint(directory, self.model, self.tokenizer, self.run_config, metrics, self.state_dict())

    # -- the loop --------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        plan = self.schedule.plan(self.step)
        self.model.train()
        losses = {}
        for task, n in plan.items():
            batch = to_device(self.streams[task].take(n), self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.model(task, batch)
            losses[task] = self.losses[task](out, batch["labels"])
        every = self.config.grad.diagnose_every
        diagnostics = self.combiner.backward(losses, dict(plan), diagnose=bool(every) and (self.step + 1) % every == 0)
        if self.config.optim.clip_norm:
            for group in self.clip_groups:
                torch.nn.utils.clip_grad_norm_([p for p in group if p.grad is not None], self.config.optim.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.samples += sum(plan.values())
        values = {f"train_loss_{t}": v.item() for t, v in losses.items()}
        if any(not math.isfinite(v) for v in values.values()):
            raise FloatingPointError(f"a training loss is not finite at step {self.offset + self.step}: {values}")
        return {**values, **diagnostics}

    def run(self, on_eval: OnEval | None = None, on_step: Callable[[int], None] | None = None,
            checkpoint_dir: Path | None = None, stop: Stop | None = None) -> TrainResult:
        cfg = self.config.train
        stopped_early = False
        while self.step < cfg.max_steps:
            start = time.perf_counter()
            for k, v in self.train_step().items():
                self.running.setdefault(k, []).append(v)
            self.train_seconds += time.perf_counter() - start
            if on_step:
                on_step(self.offset + self.step)
            if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                self.evaluate(on_eval, checkpoint_dir)
                if cfg.patience and self.since_best >= cfg.patience:
                    stopped_early = True
                    break
            if stop is not None and stop():
                self.interrupt(checkpoint_dir)
        if self.best is None:  # resumed at or past max_steps before any evaluation
            self.evaluate(on_eval, checkpoint_dir)
        assert self.best is not None
        return TrainResult(
            metrics=self.best, best_step=self.best_step, steps=self.offset + self.step,
            train_samples_per_s=self.samples / max(self.train_seconds, 1e-9), stopped_early=stopped_early,
            history=self.history, sst_confusion=self.best_confusion, checkpoint=self.best_checkpoint,
        )  # fmt: skip

    def evaluate(self, on_eval: OnEval | None, checkpoint_dir: Path | None) -> dict[str, float]:
        """Score the dev sets now; save ``best`` (if better) and ``last``; tell ``on_eval``."""
        dev, confusion_now = evaluate(self.model, self.data.dev, self.device, self.bf16, self.data.cfimdb_dev)
        metrics = {
            **dev, **{k: sum(v) / len(v) for k, v in self.running.items()},
            "step": self.offset + self.step, "phase": self.phase,
            "epoch": self.schedule.epoch_of(max(self.step - 1, 0)), "lr": self.scheduler.get_last_lr()[0],
            "train_samples_per_s": self.samples / max(self.train_seconds, 1e-9),
            "train_seconds": self.train_seconds,  # time inside training steps, this phase so far
        }  # fmt: skip
        self.running = {}
        self.history.append(metrics)
        if self.best is None or metrics["overall"] > self.best["overall"]:
            self.best, self.best_step, self.since_best = metrics, self.offset + self.step, 0
            self.best_confusion = confusion_now
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


def loss_spec(config: RunConfig, task: str) -> LossSpec:
    """``losses.<task>`` as a ``LossSpec``, passing each loss only the options it has."""
    cfg = getattr(config.losses, task)
    options = {f.name for f in dataclasses.fields(LOSSES.get(cfg.kind))}
    return LossSpec(cfg.kind, cfg.weight, {k: getattr(cfg, k) for k in options if hasattr(cfg, k)})


def build_run(config: RunConfig, resume: str | Path | None = None) -> tuple[MultiTaskModel, Any]:
    """The model and tokenizer a run starts from: fresh from ``model.encoder``, or a checkpoint's."""
    from mtbert.train.checkpoint import load_checkpoint
    from mtbert.model.pretrained import load_encoder

    if resume:
        model, tokenizer, _, _ = load_checkpoint(resume)
        return model, tokenizer
    encoder, tokenizer = load_encoder(config.model.encoder, seed=config.train.seed)
    return build_model(config, encoder), tokenizer


class Run:
    """A whole run: its phases in order (``phases``, or one multitask phase), each a ``Trainer``
    over the same model, with steps, the best evaluation and the history running on across them.

    - ``mlm``: further masked-LM pre-training of the encoder on the task training sentences
      (paper 000); no evaluations, so no checkpoints inside it;
    - ``multitask``: the multi-task trainer with the phase's own steps, rates and ``set:``;
    - ``specialist``: two-step fine-tuning's second step (paper 002): a copy of the encoder per task
      with its head re-initialised, each trained on its own task; the bottom ``model.freeze_depth``
      layers stay frozen and shared (paper 004), all of them with ``heads_only`` (paper 003).
      Evaluations score each task with its specialist.
    """

    def __init__(self, config: RunConfig, model: MultiTaskModel, tokenizer: Any, data: TaskData,
                 state: dict[str, Any] | None = None, resume: str | Path | None = None):
        from mtbert.config import run_phases

        self.config, self.model, self.tokenizer, self.data = config, model, tokenizer, data
        self.phases = run_phases(config)
        self.device = resolve_device(config.train.device)
        self.state = state
        self.resume = Path(resume) if resume else None  # the checkpoint ``state`` came from
        self.phase, self.step = 0, 0
        self.mlm: list[Any] = []  # MlmResult of each mlm phase run here
        # The resumed phase's trainer, its state loaded now: a state that does not fit this config
        # and data (another schedule, other training files) is refused before any training.
        self.resumed = self.resumed_trainer(state) if state is not None else None

    def phase_config(self, index: int) -> RunConfig:
        from mtbert.config import phase_config

        if not self.config.phases:
            return self.config
        cfg = phase_config(self.config, index)
        if self.phases[index].kind == "specialist" and cfg.grad.method != "sum":
            # the specialists share no trainable weight: every combiner would reduce to the sum
            cfg = cfg.with_overrides({"grad.method": "sum"})
        return cfg

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the multitask and specialist phases (what ``step`` counts)."""
        from mtbert.config import total_steps

        return total_steps(self.config)

    def resumed_trainer(self, state: dict[str, Any]) -> Trainer:
        where = self.resume or "the checkpoint"
        try:
            index, offset = state.get("phase", 0), state.get("offset", 0)
            if not isinstance(index, int) or not 0 <= index < len(self.phases) or self.phases[index].kind == "mlm":
                kinds = [p.kind for p in self.phases]
                raise ValueError(f"its state is of phase {index!r}, but this run's phases are {kinds}")
            trainer = Trainer(self.phase_config(index), self.model, self.tokenizer, self.data, run_config=self.config,
                              phase=index, offset=offset)  # fmt: skip
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
        offset = self.resumed.offset if self.resumed else 0
        best: Trainer | None = None
        stopped_early = False
        for index in range(self.phase, len(self.phases)):
            phase = self.phases[index]
            config = self.phase_config(index)
            if phase.kind == "mlm":
                self.mlm.append(self.pretrain(config, phase, stop))
                continue
            if self.resumed is not None and index == self.phase:
                trainer, self.resumed = self.resumed, None
                trainer.best_checkpoint = self.carry_best(trainer, checkpoint_dir)
            else:
                if phase.kind == "specialist":
                    self.model = self.specialize(phase)
                trainer = Trainer(config, self.model, self.tokenizer, self.data, run_config=self.config, phase=index,
                                  offset=offset)  # fmt: skip
                if best is not None:  # the best so far carries on: a phase saves "best" only to beat it
                    trainer.best, trainer.best_step, trainer.best_confusion = best.best, best.best_step, best.best_confusion
                    trainer.best_checkpoint, trainer.history = best.best_checkpoint, best.history
            result = trainer.run(on_eval, on_step, checkpoint_dir, stop)
            stopped_early |= result.stopped_early
            offset, self.step, best = result.steps, result.steps, trainer
        assert best is not None, "a run has a multitask or specialist phase (config validation)"
        return TrainResult(
            metrics=best.best, best_step=best.best_step, steps=offset,
            train_samples_per_s=result.train_samples_per_s, stopped_early=stopped_early, history=best.history,
            sst_confusion=best.best_confusion, checkpoint=best.best_checkpoint,
        )  # fmt: skip

    def carry_best(self, trainer: Trainer, checkpoint_dir: Path | None) -> Path | None:
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

    def pretrain(self, config: RunConfig, phase: Any, stop: Stop | None = None) -> Any:
        from mtbert.train.mlm import further_pretrain, task_sentences

        mlm = config.mlm
        if phase.lr:
            mlm = dataclasses.replace(mlm, lr=phase.lr)
        self.model.to(self.device)

        def on_step(step: int, loss: float) -> None:
            if stop is not None and stop():  # mlm phases keep no checkpoint: nothing to resume from
                raise TrainingInterrupted(self.step, None)

        return further_pretrain(
            self.model.encoder, self.tokenizer, task_sentences(self.data), mlm, max_length=config.data.max_length,
            steps=phase.steps, seed=config.train.seed, device=self.device, bf16=config.train.bf16, on_step=on_step,
        )  # fmt: skip

    def specialize(self, phase: Any) -> MultiTaskModel:
        from mtbert.model.merge import to_specialists

        depth = self.model.encoder.num_layers if phase.heads_only else self.config.model.freeze_depth
        return to_specialists(self.model, depth, seed=self.config.train.seed)


def saved_evaluation(directory: Path) -> tuple[Any, Any] | None:
    """``(step, overall)`` of a checkpoint's metrics.json, or None if it has none readable."""
    try:
        metrics = json.loads((directory / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return (metrics.get("step"), metrics.get("overall")) if isinstance(metrics, dict) else None


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


def open_run(config: RunConfig, resume: str | Path | None = None, data: TaskData | None = None) -> Run:
    """A run ready to go: model and tokenizer (fresh, or a checkpoint's with the state of the phase
    it was saved in), and the data (prepared here unless given). A resume is checked first: its
    settings fixed at resume, then its saved state, before any weights or data load."""
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
    return run.resumed or Trainer(run.phase_config(0), run.model, run.tokenizer, run.data, run_config=config)
