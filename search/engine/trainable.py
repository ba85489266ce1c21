"""The trainer as a Ray Tune function trainable: the one caller of ``tune.report`` and
``tune.get_checkpoint``.

Each evaluation of ``mtbert.train.run.train`` becomes one Tune result (one ``training_iteration``):
the trainer's metrics as they are (per-task dev scores on the selection subset, ``overall``,
``train_loss_<task>``, ``lr``, ``train_samples_per_s``, gradient-conflict figures), a few timings
of this trial (below), and a resumable mtbert checkpoint written by the trainer's ``save``. A
trial that starts again (a retry after a failure, a resumed search) continues from
``tune.get_checkpoint()`` through ``train(..., resume=...)``, so it never starts over.

The tokenised data is prepared once per search, in the driver, and shared with trials through
the object store. It depends on the settings in ``data_signature``; the signatures a space can
produce are listed before the search (``space_signatures``), and a trial whose signature was not
prepared tokenises its own data through the on-disk token cache, and says so.

Timings reported with each result (for ``benchmarks/search_overhead.py``):
``train_seconds`` (time inside training steps in this trial so far, its evaluations left out),
``trial_started_at`` (wall clock when the trainable was entered) and ``first_step_at`` (wall clock
when the first training step of this trial began). Where it ran: ``node_id`` (the Ray node) and
``gpu_ids`` (the GPUs Ray gave it, comma-separated; empty on CPUs), next to Tune's ``hostname``.

A trial whose training loss stops being finite (the trainer's ``FloatingPointError``) ends itself:
it reports one last result with the search metric as NaN and ``stop_reason``, and returns, so Tune
ends it TERMINATED without a retry, ASHA leaves it out of its cutoffs, and Optuna records it as
PRUNED at that evaluation (TPE ranks a NaN as the worst value at its step). Retrying would diverge
again from the same checkpoint.
"""

from __future__ import annotations

import copy
import json
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtbert import RunConfig
from mtbert.config import total_steps

# Tune's count of a trial's results (its evaluations), ASHA's unit of time.
TRAINING_ITERATION = "training_iteration"
# Set on the result of the trial's last evaluation when the trainer is known to stop there.
COMPLETE_KEY = "trial_complete"
# Set on the last result of a trial that ended itself before its budget (a non-finite loss): why.
STOP_KEY = "stop_reason"
# Branches of a space's categorical choices tried when listing data signatures.
MAX_SIGNATURE_PROBES = 256


# ---- what the tokenised data depends on ----------------------------------------------------------


def tokenizer_source(encoder: str) -> str:
    """The tokenizer an encoder source brings; ``tiny`` borrows the default encoder's."""
    from mtbert import DEFAULT_ENCODER
    from mtbert.model.pretrained import TINY_ENCODER

    return DEFAULT_ENCODER if encoder == TINY_ENCODER else encoder


def data_signature(config: RunConfig) -> str:
    """A key of everything ``prepare_data(config, ...)`` reads: trials with equal keys can share data."""
    from mtbert.data.prepare import pair_encodings

    d = config.data
    capped = any(v is not None for v in (d.max_train_per_task, d.max_eval_per_task))
    parts = {
        "tokenizer": tokenizer_source(config.model.encoder),
        "dir": d.dir,
        "max_length": d.max_length,
        "pair_separator": d.pair_separator,
        "max_train_per_task": d.max_train_per_task,
        "max_eval_per_task": d.max_eval_per_task,
        "extra_sst": d.extra_sst,
        "encodings": pair_encodings(config),
        # the capped subsets are drawn with the run's seed
        "seed": config.train.seed if capped else None,
    }
    return json.dumps(parts, sort_keys=True)


# ---- a trial's run config --------------------------------------------------------------------------


@dataclass
class TrialSetup:
    """What every trial of a search shares: the space and the settings fixed for all trials
    (``fixed_settings``)."""

    space: Any  # search.space.file.Space
    fixed: dict[str, Any] = field(default_factory=dict)

    def config(self, params: dict[str, Any]) -> RunConfig:
        # the fixed values are set as they are (with_overrides would read string paths as YAML), in
        # the same pass as the sampled ones: the trial's config is built and checked once
        return self.space.config_for(params, self.fixed)


def fixed_settings(space: Any) -> dict[str, Any]:
    """Paths every trial shares, made absolute in the driver: trials run in their own working
    directories, and the data folder may come from $MTBERT_DATA, which a cluster's workers lack.
    Keys a dimension searches are left alone."""
    from mtbert.data.course import resolve_data_dir

    base = space.base
    fixed: dict[str, Any] = {"data.dir": str(resolve_data_dir(base.data.dir).resolve())}
    if base.data.cache_dir:
        fixed["data.cache_dir"] = str(Path(base.data.cache_dir).expanduser().resolve())
    encoder = Path(base.model.encoder).expanduser()
    if not space.smoke and encoder.is_dir() and not encoder.is_absolute():  # a local encoder folder
        fixed["model.encoder"] = str(encoder.resolve())
    searched = {d.key for d in space.dimensions}
    return {k: v for k, v in fixed.items() if k not in searched}


# ---- the signatures a space can produce ------------------------------------------------------------


def _may_change_data(name: str) -> bool:
    """Whether a dimension's choice can change the tokenised data (unknown names: assume so)."""
    from mtbert.config import all_keys

    if name not in all_keys():
        return True
    if name == "data.cache_dir":
        return False
    return name.startswith(("data.", "model.encoder", "train.seed")) or name.endswith((".kind", ".pair_encoding"))


class _ProbeTrial:
    """Stands in for an Optuna trial to walk a define-by-run space: each categorical suggestion
    that may change the data takes the choice named by ``path`` (then the first), any other
    suggestion its first choice or low end."""

    def __init__(self, path: list[int]):
        self.path, self.params = path, {}
        self.branches: list[int] = []  # number of choices of each data-changing categorical, in order
        self.numeric: list[str] = []

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        choices = list(choices)
        pick = 0
        if _may_change_data(name):
            i = len(self.branches)
            pick = self.path[i] if i < len(self.path) else 0
            self.branches.append(len(choices))
        self.params[name] = choices[pick]
        return choices[pick]

    def _number(self, name: str, low: Any) -> Any:
        self.numeric.append(name)
        self.params[name] = low
        return low

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        return self._number(name, low)

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        return self._number(name, low)

    def suggest_uniform(self, name: str, low: float, high: float) -> float:
        return self._number(name, low)

    def suggest_loguniform(self, name: str, low: float, high: float) -> float:
        return self._number(name, low)

    def suggest_discrete_uniform(self, name: str, low: float, high: float, q: float) -> float:
        return self._number(name, low)


def space_configs(setup: TrialSetup, limit: int = MAX_SIGNATURE_PROBES) -> tuple[list[RunConfig], bool]:
    """Run configs covering every combination of the space's choices that may change the data
    (other dimensions at their first choice or low end), and whether that covers every data
    signature the space can produce: false when a numeric dimension decides the data
    (``data.max_length`` as a range, say) or there are more than ``limit`` combinations."""
    configs, complete = [], True
    pending: list[list[int]] = [[]]
    probes = 0
    while pending:
        path = pending.pop()
        probes += 1
        if probes > limit:
            return configs, False
        probe = _ProbeTrial(path)
        returned = setup.space.define_by_run(probe)
        params = {**probe.params, **(returned or {})}
        config = setup.config(params)
        configs.append(config)
        for name in probe.numeric:
            if _may_change_data(name) and _numeric_changes_data(setup, params, name, config):
                complete = False
        # branch on every choice after the forced prefix: each combination is visited once
        for i in range(len(path), len(probe.branches)):
            for k in range(1, probe.branches[i]):
                pending.append([*path, *([0] * (i - len(path))), k])
    return configs, complete


def _numeric_changes_data(setup: TrialSetup, params: dict[str, Any], name: str, config: RunConfig) -> bool:
    # A numeric dimension over a key the data depends on (data.max_length, train.seed with caps)
    # gives more signatures than can be listed.
    value = params[name]
    bumped = value + 1 if isinstance(value, int) else value * 1.5 + 1e-3
    try:
        other = setup.config({**params, name: bumped})
    except ValueError:
        return False
    return data_signature(other) != data_signature(config)


def space_signatures(setup: TrialSetup, limit: int = MAX_SIGNATURE_PROBES) -> tuple[dict[str, RunConfig], bool]:
    """``{signature: a config with it}`` for the space, and whether the list is complete."""
    configs, complete = space_configs(setup, limit)
    out: dict[str, RunConfig] = {}
    for config in configs:
        out.setdefault(data_signature(config), config)
    return out, complete


def prepare_shared(configs: Iterable[RunConfig]) -> dict[str, Any]:
    """``{signature: TaskData}``: each signature's data read and tokenised once (through the token cache)."""
    from mtbert import prepare_data
    from mtbert.model.pretrained import load_tokenizer, resolve_source

    tokenizers: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for config in configs:
        signature = data_signature(config)
        if signature in out:
            continue
        source = tokenizer_source(config.model.encoder)
        if source not in tokenizers:
            tokenizers[source] = load_tokenizer(resolve_source(source))
        out[signature] = prepare_data(config, tokenizers[source])
    return out


def share(data: dict[str, Any]) -> dict[str, Any]:
    """Put each prepared data set into the Ray object store once: ``{signature: ObjectRef}``."""
    import ray

    return {signature: ray.put(task_data) for signature, task_data in data.items()}


# ---- the trainable ---------------------------------------------------------------------------------


class StepClock:
    """Time spent inside training steps, from ``on_step`` calls and the ends of evaluations.

    The trainer calls ``on_step`` after each step and evaluates after some of them, so a step's
    duration is the time since the later of the previous step's end and the previous evaluation's
    end. The first step has no earlier mark inside the loop: it is counted from ``begin()``
    (model and optimizer set-up included, so ``train_seconds`` errs high, never low) unless a later
    step gives a typical duration, which then stands in for it.
    """

    def __init__(self, now: Callable[[], float] = time.perf_counter, wall: Callable[[], float] = time.time):
        self.now, self.wall = now, wall
        self.seconds = 0.0
        self.mark: float | None = None
        self.first: float | None = None  # duration counted for the first step
        self.first_step_at: float | None = None
        self.steps = 0

    def begin(self) -> None:
        self.mark = self.now()

    def step(self, _step: int) -> None:
        t = self.now()
        duration = t - (self.mark if self.mark is not None else t)
        self.steps += 1
        if self.steps == 1:
            self.first = duration
            self.first_step_at = self.wall() - duration
        elif self.steps == 2 and self.first is not None and duration < self.first:
            # the first step's count held the set-up: a typical step replaces it
            self.seconds -= self.first - duration
            self.first_step_at += self.first - duration
        self.seconds += duration
        self.mark = t

    def evaluated(self) -> None:
        self.mark = self.now()


# The shared data this worker process last trained on, copied out of the object store. Arrays
# read in place from the store's shared memory made the tiny encoder's steps 9% slower (33.9 vs
# 31.0 ms on a 2-core CPU; a copy: 31.8 ms); the copy costs about 0.6 s for the full training
# sets and is kept for the next trial Tune runs in this process (reuse_actors).
_LOCAL: dict[str, Any] = {}


def _local_copy(signature: str, ref: Any, get: Callable[[Any], Any]) -> Any:
    if signature not in _LOCAL:
        _LOCAL.clear()
        _LOCAL[signature] = copy.deepcopy(get(ref))
    return _LOCAL[signature]


def available_cpus(default: float = 1.0) -> int:
    """The CPUs Ray reserved for this trial."""
    from ray import tune

    with warnings.catch_warnings():  # outside a Tune session (a direct call) it warns and gives None
        warnings.simplefilter("ignore")
        resources = tune.get_context().get_trial_resources()
    if resources is None:
        return max(1, int(default))
    resources = resources.required_resources
    return max(1, int(resources.get("CPU", default)))


def placement() -> dict[str, str]:
    """Where this trial runs: the Ray node's id and the GPUs Ray gave it (empty outside Ray)."""
    import ray

    if not ray.is_initialized():
        return {"node_id": "", "gpu_ids": ""}
    return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ",".join(map(str, ray.get_gpu_ids()))}


def device_problem(device: str, gpu_ids: str, cuda: bool, gpus_per_trial: float) -> str | None:
    """Why a trial cannot train on ``train.device`` with the GPUs Ray gave it (``gpu_ids``, which Ray
    also puts in CUDA_VISIBLE_DEVICES) and whether torch sees CUDA; None when it can. A GPU Ray
    reserved that torch cannot use would make ``auto`` train on the CPU, tens of times slower than
    the search was planned for, so that is an error rather than a quiet fallback."""
    ids = [g for g in gpu_ids.split(",") if g]
    if device == "cpu":
        return None  # a GPU reserved and left idle wastes it, but trains as asked
    if ids and not cuda:
        return (f"Ray gave this trial GPU {','.join(ids)} (tune.gpus_per_trial is {gpus_per_trial:g}), but torch sees "
                f"no CUDA device on {socket.gethostname()} (a CPU-only torch build, or no GPU driver); to train on "
                "CPUs, set tune.gpus_per_trial: 0 (or train.device: cpu)")  # fmt: skip
    if device.startswith("cuda") and not ids:
        return (f"train.device is {device!r}, but Ray gave this trial no GPU (tune.gpus_per_trial is "
                f"{gpus_per_trial:g}); set tune.gpus_per_trial (0.5: two trials share a GPU) or train.device: auto")  # fmt: skip
    index = device.partition(":")[2]
    if ids and index.isdigit() and int(index) >= len(ids):
        return (f"train.device is {device!r}, but a trial sees only the {len(ids)} GPU(s) Ray gave it, as "
                f"cuda:0 to cuda:{len(ids) - 1}; use train.device: auto or cuda")  # fmt: skip
    return None


def run_trial(params: dict[str, Any], *, setup: TrialSetup, data: dict[str, Any] | None = None) -> None:
    """One trial: train the run config of ``params`` and report every evaluation to Tune."""
    import ray
    import torch
    from ray import tune

    from mtbert import train

    started_at = time.time()
    torch.set_num_threads(available_cpus(getattr(setup.space.tune, "cpus_per_trial", 1) or 1))
    config = setup.config(params)
    where = placement()
    if where["node_id"]:  # inside Ray: the GPUs it gave this trial must be the ones it trains on
        problem = device_problem(config.train.device, where["gpu_ids"], torch.cuda.is_available(),
                                 getattr(setup.space.tune, "gpus_per_trial", 0) or 0)  # fmt: skip
        if problem:
            raise RuntimeError(problem)
    signature = data_signature(config)
    shared = (data or {}).get(signature)
    task_data = _local_copy(signature, shared, ray.get) if shared is not None else None
    if task_data is None:
        print(f"search: this trial's data ({signature}) was not prepared before the search; tokenising it "
              "here through the token cache", file=sys.stderr, flush=True)  # fmt: skip
    last_step = total_steps(config)
    metric = getattr(setup.space.tune, "metric", "overall")
    clock = StepClock()
    reached = {"step": 0}  # the last global step done, for a trial that ends itself

    def on_step(step: int) -> None:
        clock.step(step)
        reached["step"] = step

    def timings() -> dict[str, Any]:
        return {"train_seconds": clock.seconds, "trial_started_at": started_at, "first_step_at": clock.first_step_at,
                **where}  # fmt: skip

    def on_eval(step: int, metrics: dict[str, float], save: Callable[[Path], Path]) -> None:
        # the search metric and three task scores first: Tune's progress table shows the first four
        first = {k: metrics[k] for k in (metric, "sst_acc", "para_acc", "sts_pearson") if k in metrics}
        report = {**first, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        report.update(timings())
        if step >= last_step:
            report[COMPLETE_KEY] = True
        # Tune copies the checkpoint into the trial's folder within report(); the temporary copy goes after.
        with tempfile.TemporaryDirectory(prefix="mtbert-trial-") as tmp:
            path = save(Path(tmp) / "checkpoint")
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(path)))
        clock.evaluated()

    checkpoint = tune.get_checkpoint()
    clock.begin()
    try:
        if checkpoint is None:
            train(config, data=task_data, on_eval=on_eval, on_step=on_step)
            return
        with checkpoint.as_directory() as resume:
            reached["step"] = _checkpoint_step(resume)
            train(config, data=task_data, on_eval=on_eval, on_step=on_step, resume=resume)
    except FloatingPointError as e:  # a loss went NaN or inf: end here (see the module doc)
        print(f"search: trial stopped: {e}", file=sys.stderr, flush=True)
        tune.report({metric: float("nan"), "step": reached["step"] + 1, STOP_KEY: str(e), **timings()})


def _checkpoint_step(directory: str | Path) -> int:
    from mtbert.train.checkpoint import METRICS_FILE

    try:
        return int(json.loads((Path(directory) / METRICS_FILE).read_text()).get("step", 0))
    except (OSError, ValueError, TypeError):
        return 0
