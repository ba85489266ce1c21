"""What a search costs on top of the training it runs: Ray Tune's overhead and trial start latency.

N trials of a fixed length (a fixed number of steps, one evaluation at the end, so ASHA stops none)
run one after another, each with every core (``--cpus-per-trial``, default all). Measured:

- ``overhead_frac`` = (wall time of ``Tuner.fit`` - training time / concurrency) / wall time of
  ``Tuner.fit``, where training time is the sum over trials of the time inside training steps
  (each trial's ``train_seconds``: evaluations, checkpoints, model building and everything Ray
  does count as overhead) and concurrency is 1 here. Ray is started, and the data tokenised and
  put into the object store, before the clock starts (a search does that once).
- ``start_latency_s``: the mean over trials of the time from the trial's start as Tune's
  controller records it (``on_trial_start``) to the start of its first training step; also the
  first trial's alone (a worker process is started for it; later trials reuse it) and the mean
  from entering the trainable function.

Reference, in the same process and the same run: the same trials trained one after another with
``mtbert.train.run.train`` and no Ray, which gives the overhead a plain loop already has (model
building, the evaluation). Steps inside Ray can run slower than in the plain loop (Ray's own
processes share the cores), which ``overhead_frac`` counts as training; ``overhead_vs_reference_frac``
= (wall of ``Tuner.fit`` - the reference's training time) / wall of ``Tuner.fit`` counts it as
overhead.

    MTBERT_DATA=../shared/data python benchmarks/search_overhead.py --json
    ... --trials 4 --trial-seconds 30 --encoder all-MiniLM-L6-v2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The trials get this through Ray (search.engine.session.connect); the reference loop here gets the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

SPACE = """\
model: {{encoder: {encoder}}}
data: {{dir: {data}, max_length: 64}}
heads: {{sst: {{pooling: mean}}, para: {{pooling: mean}}, sts: {{pooling: mean}}}}
sampling: {{schedule: round_robin, batch_size: {batch_size}}}
train: {{max_steps: {steps}, eval_every: {steps}}}
optim: {{lr: 1.0e-4}}
search:
  optim.lr: {{loguniform: [5.0e-5, 2.0e-4]}}
tune:
  num_samples: {trials}
  max_concurrent: 1
  cpus_per_trial: {cpus}
  grace_period: 1
  eval_subset: {eval_subset}
  final_eval: none
  keep_checkpoints: 1
  storage_path: {storage}
  name: overhead
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--trial-seconds", type=float, default=30.0, help="training time of each trial (steps calibrated)")
    p.add_argument("--encoder", default="tiny", help="tiny (default) or all-MiniLM-L6-v2")
    p.add_argument("--batch-size", type=int, default=16, help="examples per task batch")
    p.add_argument("--cpus-per-trial", type=int, default=os.cpu_count() or 1)
    p.add_argument("--eval-subset", type=int, default=200, help="dev rows per task in the evaluation")
    p.add_argument("--no-reference", action="store_true", help="skip the plain-loop reference")
    p.add_argument("--data", default=None, help="course data folder (default: $MTBERT_DATA, else ./data)")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


def machine(cpus: int) -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, {cpus} torch threads per trial, torch {torch.__version__}"


def write_space(args: argparse.Namespace, folder: Path, steps: int) -> Path:
    from mtbert.data.course import resolve_data_dir

    path = folder / "overhead.yaml"
    path.write_text(SPACE.format(
        encoder=args.encoder, data=resolve_data_dir(args.data).resolve(), batch_size=args.batch_size, steps=steps,
        trials=args.trials, cpus=args.cpus_per_trial, eval_subset=args.eval_subset, storage=folder / "results",
    ))  # fmt: skip
    return path


def calibrate(space, data: dict, seconds: float) -> tuple[int, float]:
    """Steps that take ``seconds`` on this machine: time a few steps of the trainer."""
    from mtbert.train.run import start
    from search.engine.trainable import data_signature

    config = space.base.with_overrides({"train.max_steps": 100_000, "train.eval_every": 100_000})
    trainer = start(config, data=data.get(data_signature(space.base)))
    for _ in range(3):  # warm-up
        trainer.train_step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 4.0:
        trainer.train_step()
        n += 1
    per_step = (time.perf_counter() - t0) / n
    return max(1, round(seconds / per_step)), per_step


def reference(setup, data: dict, trials: int) -> dict:
    """The same trials with mtbert.train.run.train in this process, one after another, no Ray."""
    import optuna

    from mtbert.train.run import train
    from search.engine.trainable import StepClock, data_signature

    sampler = optuna.samplers.TPESampler(seed=setup.space.tune.seed)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    train_seconds, t0 = 0.0, time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        setup.space.define_by_run(trial)
        config = setup.config(trial.params)
        clock = StepClock()
        clock.begin()
        result = train(config, data=data.get(data_signature(config)), on_step=clock.step,
                       on_eval=lambda step, metrics, save, clock=clock: clock.evaluated())  # fmt: skip
        study.tell(trial, result.metrics["overall"])
        train_seconds += clock.seconds
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "train_s": round(train_seconds, 2),
            "overhead_frac": round((wall - train_seconds) / wall, 4)}  # fmt: skip


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.cpus_per_trial)
    from search.space.file import load_space
    from search.engine.trainable import TrialSetup, fixed_settings, prepare_shared, share, space_signatures
    from search.engine.session import connect
    from search.engine.trial_starts import TrialStarts
    from search.engine.tuner import build_tuner, max_t
    from search.launch import Launch, experiment_dir
    from search.results import load_results

    folder = Path(tempfile.mkdtemp(prefix="search-overhead-"))
    probe = load_space(write_space(args, folder, 10), profile="cpu")
    setup = TrialSetup(probe, fixed_settings(probe))
    t_setup = time.perf_counter()
    data = prepare_shared(space_signatures(setup)[0].values())
    steps, per_step = calibrate(setup.space, data, args.trial_seconds)
    path = write_space(args, folder, steps)
    space = load_space(path, profile="cpu")
    setup = TrialSetup(space, fixed_settings(space))
    Launch(str(path), profile="cpu", max_t=max_t(space), fixed=setup.fixed).save(
        experiment_dir(space), path.read_text()
    )
    connect(None)
    refs = share(data)
    setup_s = time.perf_counter() - t_setup

    starts = TrialStarts()
    tuner = build_tuner(space, setup, refs, callbacks=(starts,))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():  # Ray's table
        tuner.fit()
    wall = time.perf_counter() - t0

    results = load_results(experiment_dir(space))
    train_s, latency, entered = 0.0, [], []
    for trial in sorted(results.trials, key=lambda t: starts.started.get(t.trial_id, 0)):
        last = trial.last
        train_s += last["train_seconds"]
        latency.append(last["first_step_at"] - starts.started[trial.trial_id])
        entered.append(last["first_step_at"] - last["trial_started_at"])
    summary = {
        "machine": machine(args.cpus_per_trial), "encoder": args.encoder, "trials": len(results.trials),
        "steps_per_trial": steps, "step_s": round(per_step, 4), "fit_wall_s": round(wall, 2),
        "train_s": round(train_s, 2), "overhead_frac": round((wall - train_s) / wall, 4),
        "start_latency_s": round(statistics.mean(latency), 3), "first_trial_start_latency_s": round(latency[0], 3),
        "later_trials_start_latency_s": round(statistics.mean(latency[1:]), 3) if len(latency) > 1 else None,
        "function_entered_to_first_step_s": round(statistics.mean(entered), 3),
        "setup_before_fit_s": round(setup_s, 2),
    }  # fmt: skip
    import ray

    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)  # a MiniLM trial's checkpoints are about 0.5 GB
    if not args.no_reference:
        ref = summary["reference_plain_loop"] = reference(setup, data, args.trials)
        summary["overhead_vs_reference_frac"] = round((wall - ref["train_s"]) / wall, 4)
    if args.json:
        print(json.dumps(summary))
        return
    print(f"machine: {summary['machine']}")
    print(
        f"{summary['trials']} trials of {steps} steps ({args.encoder}, {per_step * 1000:.1f} ms a step), one at a time"
    )
    print(f"Tuner.fit wall {wall:.1f} s, training {train_s:.1f} s: overhead {summary['overhead_frac']:.1%}")
    print(f"start latency (trial start -> first step): mean {summary['start_latency_s']:.2f} s, "
          f"first trial {summary['first_trial_start_latency_s']:.2f} s")  # fmt: skip
    if "reference_plain_loop" in summary:
        ref = summary["reference_plain_loop"]
        print(f"reference, the same trials in a plain loop: wall {ref['wall_s']} s, training {ref['train_s']} s, "
              f"overhead {ref['overhead_frac']:.1%}; Tuner.fit against the reference's training: "
              f"{summary['overhead_vs_reference_frac']:.1%} overhead")  # fmt: skip


if __name__ == "__main__":
    main()
