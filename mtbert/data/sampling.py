"""Task sampling schedules: how many examples of each task go into each optimizer step.

    schedule = build_schedule("annealed", {"sst": 8544, "quora": 14139, "sts": 6040}, batch_size=32,
                              seed=0, max_epochs=10)
    schedule = schedule_for(config, {"sst": 8544, "para": 14139, "sts": 6040})  # a run's, from its config
    schedule.plan(0)              # step 0: one task batch, e.g. {"quora": 32}
    schedule.epoch_of(step), schedule.steps_per_epoch

A schedule only counts examples; which examples fill those counts is the data loader's business.
``batch_size`` is the size of one task batch: a step holds one task batch (``sequential``, and
``proportional``/``annealed`` unless ``mixed``), one mixed batch of that size (``mixed=True``), or a
batch per task (``round_robin``; ``ratios`` multiplies it per task).

``plan(step)`` is a pure function of the settings, the seed, the anchor and the step: every epoch
draws from its own ``torch.Generator`` seeded from ``(seed, epoch)``, so any step can be planned
without replaying the ones before it, and resuming needs no generator state. The anchor says where
epochs are counted from: step 0 is epoch 0 until a resume changes a setting that alters an epoch's
length.

``state_dict()`` records the seed, the settings and the anchor; ``load_state_dict(state, step=...)``
restores them. A schedule built with other settings is refused, except for the settings its class
lists in ``REPLANNABLE`` (proportional's ``alpha``, annealed's ``anneal_start``/``anneal_end``/
``max_epochs``, ``ratios``, ``samples_per_epoch``: rates and counts, which Population Based Training
mutates): with those the schedule plans the steps from the resumed one on with its new settings.
Epochs keep their numbers when their length is unchanged (the plan from the resumed step is then
exactly that of a schedule built with the new settings); when it changes, the epoch in progress
takes the new length counted from its first step, or ends at the resumed step if it is already that
long, and later epochs have the new length. The anchor records that, so a resume of a resumed run
plans the same steps. What a step is (``schedule``, ``batch_size``, ``mixed``, ``order``,
``per_step``) is never re-planned.

Each schedule reads its own settings from the run config (``from_config``) and checks the ones that
span several fields (``check``), so a new schedule is one class here, registered with ``_register``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from mtbert.config.fields import ConfigError
from mtbert.config.run import RunConfig
from mtbert.errors import one_of
from mtbert.registry import Registry

KEY = "sampling"  # dotted config prefix of every setting named in error messages
SCHEDULES: Registry[type[Schedule]] = Registry(f"{KEY}.schedule")

_MASK64 = (1 << 64) - 1


def build_schedule(name: str, sizes: Mapping[str, int], batch_size: int, *, seed: int = 0, **settings: Any) -> Schedule:
    """The schedule registered as ``name``, with its own ``settings`` (e.g. ``alpha=0.5``)."""
    cls = SCHEDULES.get(name)
    own = {
        p.name: p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name != "seed"
    }
    for key in settings:
        if key not in own:
            choices = ", ".join(sorted(own)) or "none"
            raise ValueError(f"{KEY}.{key} is not a setting of {KEY}.schedule {name!r}; its settings: {choices}")
    for key, p in own.items():
        if p.default is p.empty and key not in settings:
            raise ValueError(f"{KEY}.{key} is missing; {KEY}.schedule {name!r} needs it")
    return cls(sizes, batch_size, seed=seed, **settings)


def schedule_for(config: RunConfig, sizes: Mapping[str, int]) -> Schedule:
    """The schedule ``sampling.schedule`` names, built with the settings it reads from ``config``."""
    return SCHEDULES.get(config.sampling.schedule).from_config(config, sizes)


class Schedule(ABC):
    """Per-step task counts, planned one epoch at a time as a (steps_per_epoch, tasks) count table."""

    name: ClassVar[str]
    # ``settings()`` keys a resume may change: the schedule re-plans from the resumed step (module docstring)
    REPLANNABLE: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, sizes: Mapping[str, int], batch_size: int, *, seed: int = 0):
        self.sizes = _check_sizes(sizes)
        self.tasks = tuple(self.sizes)
        self.batch_size = _check_int(f"{KEY}.batch_size", batch_size, minimum=1)
        self.seed = _check_int(f"{KEY}.seed", seed, minimum=0)
        self._epoch: int | None = None
        self._table = torch.empty(0, len(self.tasks), dtype=torch.long)
        self.anchor = (0, 0)  # (step, epoch): epoch ``epoch`` begins at step ``step``; epochs are counted from there

    @classmethod
    def from_config(cls, config: RunConfig, sizes: Mapping[str, int]) -> Schedule:
        """This schedule for a run: ``sampling.batch_size``, ``train.seed`` and its own settings."""
        return cls(sizes, config.sampling.batch_size, seed=config.train.seed, **cls.config_settings(config))

    @classmethod
    def config_settings(cls, config: RunConfig) -> dict[str, Any]:
        """The keyword settings this schedule takes, read from ``config.sampling``."""
        return {}

    @classmethod
    def check(cls, config: RunConfig) -> None:
        """Raise ``ConfigError`` for settings that are valid one by one but not together."""

    @property
    @abstractmethod
    def steps_per_epoch(self) -> int: ...

    @abstractmethod
    def plan_epoch(self, epoch: int) -> torch.Tensor:
        """(steps_per_epoch, len(tasks)) int64 counts; row s is step ``epoch * steps_per_epoch + s``."""

    def settings(self) -> dict[str, Any]:
        """The schedule's own settings, as plain data (recorded in ``state_dict``)."""
        return {}

    def epoch_of(self, step: int) -> int:
        """The epoch of optimizer step ``step``, counted from the anchor (a step before a re-planned
        resume is counted back in the new epoch length, so the step just before it keeps its epoch)."""
        start, epoch = self.anchor
        return epoch + (_check_int("step", step, minimum=0) - start) // self.steps_per_epoch

    def epoch_start(self, epoch: int) -> int:
        """The optimizer step at which ``epoch`` begins."""
        start, first = self.anchor
        return start + (epoch - first) * self.steps_per_epoch

    def plan(self, step: int) -> dict[str, int]:
        """Task -> number of examples in optimizer step ``step`` (0-based); tasks with none are left out."""
        epoch = self.epoch_of(step)
        if epoch != self._epoch:
            self._table, self._epoch = self.plan_epoch(epoch), epoch
        row = self._table[step - self.epoch_start(epoch)].tolist()
        return {task: n for task, n in zip(self.tasks, row) if n}

    def generator(self, epoch: int) -> torch.Generator:
        # One stream per (seed, epoch): an epoch is rebuilt from scratch wherever a run resumes.
        return torch.Generator().manual_seed(_splitmix64(_splitmix64(self.seed) ^ epoch))

    def state_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.name,
            "seed": self.seed,
            "sizes": dict(self.sizes),
            "batch_size": self.batch_size,
            "settings": self.settings(),
            "anchor": {"step": self.anchor[0], "epoch": self.anchor[1]},
        }

    def load_state_dict(self, state: Mapping[str, Any], *, step: int | None = None) -> None:
        """Go on from a saved schedule's ``state``. ``step`` is the optimizer step the run resumes at;
        it is needed only when a setting of ``REPLANNABLE`` differs from the saved one, and then the
        steps from ``step`` on are planned with this schedule's settings (module docstring)."""
        mine = self.state_dict()
        if state.get("schedule") != self.name:
            raise ValueError(f"cannot resume: the checkpoint's {KEY}.schedule is {state.get('schedule')!r}, "
                             f"but this one is {self.name!r}")
        for key in ("sizes", "batch_size"):
            if state.get(key) != mine[key]:
                raise ValueError(f"cannot resume: the checkpoint's {KEY}.{key} is {state.get(key)!r}, "
                                 f"but this schedule's is {mine[key]!r}")
        theirs = state.get("settings", {})
        changed = [key for key in sorted(set(theirs) | set(mine["settings"]))
                   if theirs.get(key) != mine["settings"].get(key)]  # fmt: skip
        for key in changed:
            if key not in self.REPLANNABLE:
                may = f" (only {', '.join(sorted(self.REPLANNABLE))} may change)" if self.REPLANNABLE else ""
                raise ValueError(f"cannot resume: the checkpoint's {KEY}.{key} is {theirs.get(key)!r}, "
                                 f"but this schedule's is {mine['settings'].get(key)!r}{may}")
        seed = _check_int(f"{KEY}.seed", state.get("seed"), minimum=0)
        anchor = state.get("anchor", {"step": 0, "epoch": 0})  # a checkpoint saved before anchors: step 0, epoch 0
        if not isinstance(anchor, Mapping):
            raise ValueError(f"cannot resume: the checkpoint's schedule anchor is {anchor!r}, not a step and an epoch")
        saved_anchor = (_check_int("anchor.step", anchor.get("step"), minimum=0),
                        _check_int("anchor.epoch", anchor.get("epoch"), minimum=0))  # fmt: skip
        if changed:
            if step is None:
                raise ValueError(f"cannot resume: {', '.join(f'{KEY}.{k}' for k in changed)} changed, and "
                                 "re-planning needs the step the run resumes at")
            step = _check_int("step", step, minimum=0)
            saved = build_schedule(self.name, self.sizes, self.batch_size, seed=seed, **theirs)
            saved.anchor = saved_anchor
            epoch = saved.epoch_of(step)
            start = saved.epoch_start(epoch)
            # the epoch in progress takes the new length from its first step, unless it is already that long
            self.anchor = (start, epoch) if step - start < self.steps_per_epoch else (step, epoch + 1)
        else:
            self.anchor = saved_anchor
        self.seed = seed
        self._epoch = None

    def __repr__(self) -> str:
        settings = "".join(f", {k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({self.sizes}, batch_size={self.batch_size}, seed={self.seed}{settings})"


def _register(name: str):
    def add(cls: type[Schedule]) -> type[Schedule]:
        cls.name = name
        return SCHEDULES.register(name)(cls)

    return add


@_register("sequential")
class Sequential(Schedule):
    """Each epoch: all of the first task's batches, then all of the next task's, and so on.

    "Sequential learning" in Xiong, *Enhancing multi-task fine-tuning on BERT-based model* (CS224N):
    the full dataset of each task in turn, in the order SST, QQP, STS; Wang's task-by-task baseline
    in *Finetuning minBERT Model for Multiple Downstream Tasks*. Every example is seen once per
    epoch, so a task's last batch holds the remainder.
    """

    def __init__(self, sizes: Mapping[str, int], batch_size: int, *, seed: int = 0, order: Sequence[str] | None = None):
        super().__init__(sizes, batch_size, seed=seed)
        if order is None:
            order = self.tasks
        if isinstance(order, str) or sorted(order) != sorted(self.tasks):
            raise ValueError(f"{KEY}.order is {order!r}, but must list each task once: {', '.join(self.tasks)}")
        self.order = tuple(order)

    @property
    def steps_per_epoch(self) -> int:
        return sum(math.ceil(n / self.batch_size) for n in self.sizes.values())

    def settings(self) -> dict[str, Any]:
        return {"order": list(self.order)}

    def plan_epoch(self, epoch: int) -> torch.Tensor:
        table = torch.zeros(self.steps_per_epoch, len(self.tasks), dtype=torch.long)
        row = 0
        for task in self.order:
            column, n = self.tasks.index(task), self.sizes[task]
            steps = math.ceil(n / self.batch_size)
            table[row : row + steps, column] = self.batch_size
            table[row + steps - 1, column] = n - (steps - 1) * self.batch_size
            row += steps
        return table


@_register("round_robin")
class RoundRobin(Schedule):
    """Every step holds examples of every task; an epoch is ceil(N_max / batch_size) steps.

    ``per_step="equal"``: a full batch of every task each step; smaller tasks are cycled.
    ``per_step="proportional"``: round robin proportional to dataset size (Wang, *Finetuning minBERT
    Model for Multiple Downstream Tasks*): each task's N_i examples are spread evenly over the epoch,
    so every example is seen exactly once per epoch and the largest task fills its batch. That
    report's "normalised" variant divides each task's gradient by its count: a loss weighting, not
    a schedule; the counts ``plan`` returns are what it needs.
    """

    PER_STEP = ("equal", "proportional")

    def __init__(self, sizes: Mapping[str, int], batch_size: int, *, seed: int = 0, per_step: str = "equal"):
        super().__init__(sizes, batch_size, seed=seed)
        if per_step not in self.PER_STEP:
            raise ValueError(f"{KEY}.per_step is {per_step!r}, but {one_of(self.PER_STEP)}")
        self.per_step = per_step

    @classmethod
    def config_settings(cls, config: RunConfig) -> dict[str, Any]:
        return {"per_step": config.sampling.per_step}

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(max(self.sizes.values()) / self.batch_size)

    def settings(self) -> dict[str, Any]:
        return {"per_step": self.per_step}

    def plan_epoch(self, epoch: int) -> torch.Tensor:
        if self.per_step == "equal":
            return torch.full((self.steps_per_epoch, len(self.tasks)), self.batch_size, dtype=torch.long)
        return _spread(list(self.sizes.values()), self.steps_per_epoch)


@_register("proportional")
class Proportional(Schedule):
    """Tasks drawn with p_i ∝ N_i^alpha: 1 proportional to size, 0.5 square root, 0 uniform.

    Square-root sampling as used by Xiong, *Enhancing multi-task fine-tuning on BERT-based model*
    (after Stickland & Murray, *BERT and PALs*, 2019). ``mixed=False`` draws one task per step (a
    single-task batch); ``mixed=True`` draws the task of each example, so a step is one mixed batch
    holding about batch_size * p_i examples of task i. An epoch is ceil(sum N_i / batch_size) steps:
    as many examples as all the datasets hold together.
    """

    REPLANNABLE = frozenset({"alpha"})

    def __init__(
        self, sizes: Mapping[str, int], batch_size: int, *, seed: int = 0, alpha: float = 0.5, mixed: bool = False
    ):
        super().__init__(sizes, batch_size, seed=seed)
        self.alpha = _check_unit(f"{KEY}.alpha", alpha)
        self.mixed = _check_bool(f"{KEY}.mixed", mixed)

    @classmethod
    def config_settings(cls, config: RunConfig) -> dict[str, Any]:
        return {"alpha": config.sampling.alpha, "mixed": config.sampling.mixed}

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(sum(self.sizes.values()) / self.batch_size)

    def settings(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "mixed": self.mixed}

    def alpha_at(self, epoch: int) -> float:
        return self.alpha

    def probabilities(self, epoch: int) -> dict[str, float]:
        alpha = self.alpha_at(epoch)
        weights = {task: float(n) ** alpha for task, n in self.sizes.items()}
        total = sum(weights.values())
        return {task: w / total for task, w in weights.items()}

    def plan_epoch(self, epoch: int) -> torch.Tensor:
        p = torch.tensor(list(self.probabilities(epoch).values()), dtype=torch.float64)
        steps, tasks, g = self.steps_per_epoch, len(self.tasks), self.generator(epoch)
        if not self.mixed:
            drawn = torch.multinomial(p, steps, replacement=True, generator=g)  # (steps,)
            table = torch.zeros(steps, tasks, dtype=torch.long)
            table[torch.arange(steps), drawn] = self.batch_size
            return table
        drawn = torch.multinomial(p, steps * self.batch_size, replacement=True, generator=g)  # (steps * B,)
        row = torch.arange(steps).repeat_interleave(self.batch_size)
        return torch.bincount(row * tasks + drawn, minlength=steps * tasks).view(steps, tasks)


@_register("annealed")
class Annealed(Proportional):
    """"Min anneal" sampling: p_i ∝ N_i^alpha, alpha = min(start, 1 - (1 - end) * epoch / max_epochs).

    Xiong, *Enhancing multi-task fine-tuning on BERT-based model* (CS224N), eq. 2: square-root
    sampling (anneal_start 0.5) capping annealed sampling (Stickland & Murray, 2019), which falls
    towards uniform as 1 - 0.9 * epoch / MAXEpoch (anneal_end 0.1). Epochs count from 0, as in the
    formula; epochs past max_epochs keep anneal_end instead of going negative.
    """

    REPLANNABLE = frozenset({"anneal_start", "anneal_end", "max_epochs"})  # max_epochs follows train.max_steps

    def __init__(
        self,
        sizes: Mapping[str, int],
        batch_size: int,
        *,
        seed: int = 0,
        max_epochs: int,
        anneal_start: float = 0.5,
        anneal_end: float = 0.1,
        mixed: bool = False,
    ):
        start = _check_unit(f"{KEY}.anneal_start", anneal_start)
        super().__init__(sizes, batch_size, seed=seed, alpha=start, mixed=mixed)
        self.max_epochs = _check_int(f"{KEY}.max_epochs", max_epochs, minimum=1)
        self.anneal_end = _check_unit(f"{KEY}.anneal_end", anneal_end)

    @classmethod
    def from_config(cls, config: RunConfig, sizes: Mapping[str, int]) -> Schedule:
        # alpha falls over the run's epochs: train.max_steps in epochs of this schedule's length
        # (a proportional one's: one task batch per step)
        s = config.sampling
        probe = Proportional(sizes, s.batch_size, seed=config.train.seed)
        max_epochs = max(1, math.ceil(config.train.max_steps / probe.steps_per_epoch))
        return cls(sizes, s.batch_size, seed=config.train.seed, max_epochs=max_epochs, anneal_start=s.anneal_start,
                   anneal_end=s.anneal_end, mixed=s.mixed)  # fmt: skip

    def settings(self) -> dict[str, Any]:
        return {
            "max_epochs": self.max_epochs,
            "anneal_start": self.alpha,
            "anneal_end": self.anneal_end,
            "mixed": self.mixed,
        }

    def alpha_at(self, epoch: int) -> float:
        progress = min(epoch, self.max_epochs) / self.max_epochs
        return min(self.alpha, 1.0 - (1.0 - self.anneal_end) * progress)


@_register("ratios")
class Ratios(Schedule):
    """Fixed per-step counts: ratio_i * batch_size examples of task i in every step.

    Ang, *Multi-task BERT Fine-Tuning with Gradient Tricks* (CS224N): configurable task ratios per
    batch, best sst:quora:sts = 0:3:1, where 0 leaves SST untrained in that phase. A ratio may be
    fractional when ratio * batch_size is still a whole number. An epoch is long enough for every
    trained task to see each of its examples at least once.
    """

    REPLANNABLE = frozenset({"ratios"})

    def __init__(self, sizes: Mapping[str, int], batch_size: int, *, seed: int = 0, ratios: Mapping[str, float]):
        super().__init__(sizes, batch_size, seed=seed)
        key = f"{KEY}.ratios"
        _check_task_keys(key, ratios, self.tasks)
        self.ratios = {task: ratios[task] for task in self.tasks}
        self.counts = {task: self._count(f"{key}[{task!r}]", r) for task, r in self.ratios.items()}
        if not any(self.counts.values()):
            raise ValueError(f"{key} is {self.ratios!r}, but must give at least one task a ratio > 0")

    @classmethod
    def config_settings(cls, config: RunConfig) -> dict[str, Any]:
        return {"ratios": dataclasses.asdict(config.sampling.ratios)}

    @classmethod
    def check(cls, config: RunConfig) -> None:
        if not any(dataclasses.astuple(config.sampling.ratios)):
            raise ConfigError(f"{KEY}.ratios", "are all zero, but at least one task needs a ratio > 0")

    def _count(self, key: str, ratio: Any) -> int:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 0:
            raise ValueError(f"{key} is {ratio!r}, but must be a number >= 0")
        count = ratio * self.batch_size
        if not float(count).is_integer():
            raise ValueError(f"{key} is {ratio!r}, but ratio * {KEY}.batch_size ({count:g}) must be a whole number")
        return int(count)

    @property
    def steps_per_epoch(self) -> int:
        return max(math.ceil(self.sizes[task] / n) for task, n in self.counts.items() if n)

    def settings(self) -> dict[str, Any]:
        return {"ratios": dict(self.ratios)}

    def plan_epoch(self, epoch: int) -> torch.Tensor:
        row = torch.tensor([self.counts[task] for task in self.tasks], dtype=torch.long)
        return row.expand(self.steps_per_epoch, -1).clone()


@_register("samples_per_epoch")
class SamplesPerEpoch(Schedule):
    """Each epoch draws ``samples_per_epoch[task]`` examples of every task, spread evenly over its steps.

    Ang, *Multi-task BERT Fine-Tuning with Gradient Tricks* (CS224N): every task trains on the same
    number of samples per epoch (20,000 there) instead of its whole dataset, so the summed loss is
    not skewed to the largest one. An epoch is ceil(max samples / batch_size) steps; the task with
    most samples fills its batch, the others are interleaved at their own rate. A count may exceed
    the task's size (the loader cycles its data); None stands for the task's whole dataset, 0
    leaves it untrained; one int means the same count for every task.
    """

    REPLANNABLE = frozenset({"samples_per_epoch"})

    def __init__(
        self,
        sizes: Mapping[str, int],
        batch_size: int,
        *,
        seed: int = 0,
        samples_per_epoch: int | Mapping[str, int | None],
    ):
        super().__init__(sizes, batch_size, seed=seed)
        key = f"{KEY}.samples_per_epoch"
        if not isinstance(samples_per_epoch, Mapping):
            samples_per_epoch = {task: _check_int(key, samples_per_epoch, minimum=1) for task in self.tasks}
        _check_task_keys(key, samples_per_epoch, self.tasks)
        self.samples: dict[str, int] = {}
        for task in self.tasks:
            n = samples_per_epoch[task]
            self.samples[task] = self.sizes[task] if n is None else _check_int(f"{key}[{task!r}]", n, minimum=0)
        if not any(self.samples.values()):
            raise ValueError(f"{key} is {dict(samples_per_epoch)!r}, but must give at least one task a count > 0")

    @classmethod
    def config_settings(cls, config: RunConfig) -> dict[str, Any]:
        return {"samples_per_epoch": dataclasses.asdict(config.sampling.samples_per_epoch)}

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(max(self.samples.values()) / self.batch_size)

    def settings(self) -> dict[str, Any]:
        return {"samples_per_epoch": dict(self.samples)}

    def plan_epoch(self, epoch: int) -> torch.Tensor:
        return _spread([self.samples[task] for task in self.tasks], self.steps_per_epoch)


def _spread(totals: list[int], steps: int) -> torch.Tensor:
    """(steps, len(totals)) counts, column i summing to totals[i] and differing by at most 1 between steps."""
    s = torch.arange(steps + 1, dtype=torch.long).unsqueeze(1)  # (steps + 1, 1)
    cumulative = s * torch.tensor(totals, dtype=torch.long) // steps  # floor(s * N_i / steps)
    return cumulative[1:] - cumulative[:-1]


def _splitmix64(x: int) -> int:
    # SplitMix64's finaliser: neighbouring (seed, epoch) pairs get unrelated generator seeds.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _check_int(key: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} is {value!r}, but must be an integer >= {minimum}")
    return value


def _check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} is {value!r}, but must be true or false")
    return value


def _check_unit(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{key} is {value!r}, but must be in [0, 1]")
    return float(value)


def _check_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(sizes, Mapping) or not sizes:
        raise ValueError(f"{KEY}.sizes is {sizes!r}, but must map at least one task to its number of examples")
    return {str(task): _check_int(f"{KEY}.sizes[{task!r}]", n, minimum=1) for task, n in sizes.items()}


def _check_task_keys(key: str, values: Any, tasks: tuple[str, ...]) -> None:
    if not isinstance(values, Mapping):
        raise ValueError(f"{key} is {values!r}, but must map each task ({', '.join(tasks)}) to a number")
    for task in values:
        if task not in tasks:
            raise ValueError(f"{key} names unknown task {task!r}; tasks: {', '.join(tasks)}")
    for task in tasks:
        if task not in values:
            raise ValueError(f"{key} has no entry for task {task!r}; give each task one (0 leaves it untrained)")
