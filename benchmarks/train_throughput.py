"""Training samples/s of the mtbert trainer vs a loop written the way the course starter trains.

Both train all-MiniLM-L6-v2 with the same heads, losses, batch size per task, round-robin steps
(a batch of every task per step), AdamW settings and gradient clipping, on the real course data.
The reference differs where the starter code does: transformers' ``BertModel`` (SDPA attention),
sentences tokenised in the DataLoader's collate function for every batch, padded to the longest
in the batch, batches drawn in random order with no length bucketing. The trainer uses its
pre-tokenised cache, length-bucketed batches and minBERT.

The two alternate in phases of ``--phase`` seconds until each has trained ``--seconds`` seconds
(so a change in machine load hits both); samples/s = examples trained / time in training steps.

    MTBERT_DATA=../shared/data python benchmarks/train_throughput.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from itertools import cycle
from typing import Callable

import torch

from mtbert.config import RunConfig
from mtbert.data.course import read_task, resolve_data_dir
from mtbert.tasks import DATA_TASK
from mtbert.data.prepare import prepare_data
from mtbert.train.multitask import multitask_trainer
from mtbert.train.run import build_run


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="training time of each loop")
    p.add_argument("--phase", type=float, default=15.0, help="seconds per turn before switching loops")
    p.add_argument("--batch-size", type=int, default=16, help="examples per task per step")
    p.add_argument("--max-length", type=int, default=80)
    p.add_argument("--data", default=None, help="course data folder (default: $MTBERT_DATA, else ./data)")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


def config_for(args: argparse.Namespace) -> RunConfig:
    return RunConfig().with_overrides({
        "data.dir": args.data, "data.max_length": args.max_length, "data.max_eval_per_task": 1,
        "model.encoder": "all-MiniLM-L6-v2", "sampling.schedule": "round_robin",
        "sampling.batch_size": args.batch_size, "train.max_steps": 100_000, "train.eval_every": 100_000,
        "heads.sst.pooling": "mean", "heads.para.pooling": "mean", "heads.sts.pooling": "mean",
    })  # fmt: skip


def trainer_step(config: RunConfig) -> Callable[[], int]:
    model, tokenizer = build_run(config)
    trainer = multitask_trainer(config, model, tokenizer, prepare_data(config, tokenizer))

    def step() -> int:
        before = trainer.samples
        trainer.train_step()
        return trainer.samples - before

    return step


def reference_step(config: RunConfig) -> Callable[[], int]:
    """The starter's way: HF BertModel, tokenise per batch, pad per batch, random batches."""
    import transformers

    from mtbert.train.losses import task_loss
    from mtbert.model.pretrained import resolve_source

    model, tokenizer = build_run(config)  # the same heads, freshly initialised from the same seed
    model.encoder = transformers.BertModel.from_pretrained(
        str(resolve_source(config.model.encoder)), attn_implementation="sdpa"
    )
    model.train()
    losses = {t: task_loss(config, t, model.head(t)) for t in ("sst", "para", "sts")}
    folder = resolve_data_dir(config.data.dir)
    g = torch.Generator().manual_seed(config.train.seed)
    max_length = config.data.max_length

    def collate(examples):
        texts = list(zip(*[ex.sentences for ex in examples]))
        enc = tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {**enc, "labels": torch.tensor([ex.label for ex in examples])}

    loaders = {}
    for task in losses:
        examples = read_task(folder, DATA_TASK[task], "train").examples
        loaders[task] = cycle(torch.utils.data.DataLoader(
            examples, batch_size=config.sampling.batch_size, shuffle=True, collate_fn=collate, generator=g
        ))  # fmt: skip
    optimizer = torch.optim.AdamW(
        [{"params": model.encoder.parameters(), "lr": config.optim.lr},
         {"params": model.head_parameters(), "lr": config.optim.head_lr}],
        weight_decay=config.optim.weight_decay, fused=True,
    )  # fmt: skip

    def step() -> int:
        total, n = 0, 0
        for task, loader in loaders.items():
            batch = next(loader)
            labels = batch.pop("labels")
            total = total + losses[task](model(task, batch), labels.float() if task == "sts" else labels)
            n += len(labels)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return n

    return step


def main() -> None:
    args = parse_args()
    config = config_for(args)
    steps = {"trainer": trainer_step(config), "reference": reference_step(config)}
    for f in steps.values():  # warm-up
        f()
    samples = dict.fromkeys(steps, 0)
    seconds = dict.fromkeys(steps, 0.0)
    while min(seconds.values()) < args.seconds:
        for name, f in steps.items():
            phase_end = seconds[name] + min(args.phase, args.seconds - seconds[name])
            while seconds[name] < phase_end:
                t = time.perf_counter()
                samples[name] += f()
                seconds[name] += time.perf_counter() - t
    sps = {k: samples[k] / seconds[k] for k in steps}
    result = {
        "trainer_samples_per_s": round(sps["trainer"], 2),
        "reference_samples_per_s": round(sps["reference"], 2),
        "ratio": round(sps["trainer"] / sps["reference"], 3),
        "seconds_each": {k: round(v, 1) for k, v in seconds.items()},
        "batch_size_per_task": args.batch_size,
        "device": f"cpu: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"trainer {result['trainer_samples_per_s']} samples/s, reference {result['reference_samples_per_s']} "
              f"samples/s, ratio {result['ratio']} ({result['device']})")


if __name__ == "__main__":
    main()
