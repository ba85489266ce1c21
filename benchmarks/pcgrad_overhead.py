"""The cost of PCGrad over the plain summed gradient: step time and peak memory, in one run.

Both are full optimizer steps of the real trainer (``Trainer.train_step``: forward, combiner,
clipping, AdamW) on all-MiniLM-L6-v2 and the course data, every step holding a batch of every task
(``sampling.schedule: ratios``, 1:1:1). The two trainers are built from the same seed, so step k of
each sees the same examples. After warm-up their steps alternate, one of each per round (the order
swapped every round, so a change in machine load hits both alike). Step lengths vary a lot with the
batches' sequence lengths (and with other load on a shared machine), so ``step_ratio`` is the median
over rounds of the two steps' time ratio (the same examples, back to back); the median step time of
each method and the ratio of those medians are reported too.

Peak memory is the peak resident set size (``ru_maxrss``) of a fresh subprocess per method that
builds its trainer and runs a few steps, so the two do not share a high-water mark; the growth over
the RSS just before the first step (the part the combiner can change) is reported too.

    MTBERT_DATA=../shared/data python benchmarks/pcgrad_overhead.py          # a table
    MTBERT_DATA=../shared/data python benchmarks/pcgrad_overhead.py --json   # one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from mtbert.config import RunConfig
from mtbert.train.loop import Trainer
from mtbert.train.run import start

METHODS = ("sum", "pcgrad")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="pcgrad", help="grad.method compared with sum")
    p.add_argument("--steps", type=int, default=20, help="timed rounds, one step of each method per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="stop timing after this long (at least 5 rounds), to bound the run on a busy machine",
    )
    p.add_argument("--memory-steps", type=int, default=2, help="steps run by each peak-memory subprocess")
    p.add_argument("--batch-size", type=int, default=16, help="examples per task per step")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train", type=int, default=3000, help="training examples per task")
    p.add_argument("--data", default=None, help="course data folder (default: $MTBERT_DATA, else ./data)")
    p.add_argument("--peak-rss", default=None, metavar="METHOD", help=argparse.SUPPRESS)  # subprocess mode
    p.add_argument("--json", action="store_true", help="print one JSON line")
    return p.parse_args()


def config_for(args: argparse.Namespace, method: str) -> RunConfig:
    return RunConfig().with_overrides({
        "data.dir": args.data, "data.max_length": args.max_length, "data.max_train_per_task": args.max_train,
        "data.max_eval_per_task": 8, "model.encoder": "all-MiniLM-L6-v2", "sampling.schedule": "ratios",
        "sampling.batch_size": args.batch_size, "train.max_steps": 100_000, "train.eval_every": 100_000,
        "train.device": "cpu", "train.final_eval": False, "grad.method": method,
    })  # fmt: skip


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss(args: argparse.Namespace) -> None:
    """Subprocess mode: build one method's trainer, run steps, print its peak and pre-step RSS."""
    trainer = start(config_for(args, args.peak_rss))
    before = rss_mb()
    for _ in range(args.memory_steps):
        trainer.train_step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_mb": peak, "before_mb": before}))


def measure_memory(args: argparse.Namespace, method: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--peak-rss", method, "--memory-steps", str(args.memory_steps),
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
           "--max-train", str(args.max_train)] + (["--data", args.data] if args.data else [])  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def timed(trainer: Trainer) -> float:
    t = time.perf_counter()
    trainer.train_step()
    return time.perf_counter() - t


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def main() -> None:
    args = parse_args()
    if args.peak_rss:
        peak_rss(args)
        return
    methods = ("sum", args.method)
    memory = {m: measure_memory(args, m) for m in methods}
    trainers = {m: start(config_for(args, m)) for m in methods}
    for _ in range(args.warmup):
        for trainer in trainers.values():
            trainer.train_step()
    times: dict[str, list[float]] = {m: [] for m in methods}
    began = time.perf_counter()
    for i in range(args.steps):
        if i >= 5 and time.perf_counter() - began > args.max_seconds:
            break
        for m in methods if i % 2 == 0 else reversed(methods):
            times[m].append(timed(trainers[m]))
    median = {m: statistics.median(v) for m, v in times.items()}
    paired = statistics.median(a / b for a, b in zip(times[args.method], times["sum"]))
    result = {
        "step_ratio": round(paired, 4),
        "median_step_ratio": round(median[args.method] / median["sum"], 4),
        "peak_mem_ratio": round(memory[args.method]["peak_mb"] / memory["sum"]["peak_mb"], 4),
        "step_s": {m: round(v, 4) for m, v in median.items()},
        "peak_mb": {m: round(v["peak_mb"], 1) for m, v in memory.items()},
        "step_growth_mb": {m: round(v["peak_mb"] - v["before_mb"], 1) for m, v in memory.items()},
        "method": args.method, "timed_rounds": len(times["sum"]), "batch_size_per_task": args.batch_size,
        "max_length": args.max_length, "device": f"cpu: {machine()}", "torch": torch.__version__,
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['device']}, torch {result['torch']}; 3 tasks x {args.batch_size} examples per step")
    print(f"{'':10}{'step s':>10}{'peak MB':>10}{'growth MB':>11}")
    for m in methods:
        print(f"{m:10}{result['step_s'][m]:>10}{result['peak_mb'][m]:>10}{result['step_growth_mb'][m]:>11}")
    print(
        f"step_ratio {result['step_ratio']} (paired; ratio of medians {result['median_step_ratio']}), "
        f"peak_mem_ratio {result['peak_mem_ratio']}, {result['timed_rounds']} rounds"
    )


if __name__ == "__main__":
    main()
