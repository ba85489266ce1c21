"""Does a search hand back a better model than hand-tuning, with the same compute? Measured on dev
rows that nothing selected on.

Arms, run one after another on this machine, each with the same wall-clock budget S (``--budget-s``):

- ``hand``: the strongest single configuration we know (``--hand``, configs/example.yaml) trained
  alone by ``mtbert-train``, its ``train.max_steps`` chosen to fill S from a probe of its step and
  evaluation times made first (not counted in any arm); once per ``--seeds`` seed.
- ``stock``: what a user wires by hand: Ray Tune's ``OptunaSearch`` with Optuna's defaults and
  Ray's ``ASHAScheduler`` with its defaults, over the same space, trainable, trial settings and
  resources as the search's profile (``search.engine.stock``); its best trial as Tune ranks it.
- ``random``: ``mtbert-search`` with ``tune.sampler: random`` and no warm start (otherwise the profile).
- ``search``: ``mtbert-search`` with the space's profile and its defaults.

Every arm runs with ``data.dev_holdout`` (``--holdout``, 0.5): each dev set is split once, by a
seeded hash of the row id, into a selection half (every evaluation, ASHA, the sampler, early
stopping, ``final_top_k``, checkpoint choice) and a report half, which is scored once per arm, on
the model the arm hands back, after the arm has ended. The searches get ``tune.time_budget_s`` = S
less their start-up and the scoring of their finalists (estimated from the probe), so that each
arm's whole wall time comes to S; the measured wall time of each arm is printed next to S (the
report half's scoring is the benchmark's, not the arm's, and is not counted).

    MTBERT_DATA=../shared/data python benchmarks/search_quality.py --budget-s 900 --json
    ... --arms hand,search --seeds 0 --space spaces/pcgrad.yaml --profile cpu

Quora scores: all-MiniLM-L6-v2 was trained on sentence pairs that include Quora duplicates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
ARMS = ("hand", "stock", "random", "search")
KEYS = ("overall", "sst_acc", "para_acc", "sts_pearson")
RAY_START_S = 15.0  # a local Ray's start and its first worker before the first trial (about 15 s on 2 cores)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=900.0, help="wall-clock seconds each arm gets")
    p.add_argument("--space", default=str(REPO / "spaces" / "pcgrad.yaml"))
    p.add_argument("--profile", default="cpu", help="the space's profile the searches run with")
    p.add_argument("--hand", default=str(REPO / "configs" / "example.yaml"), help="the hand-tuned run config")
    p.add_argument("--arms", default="hand,stock,search", help=f"comma-separated, of {','.join(ARMS)}")
    p.add_argument("--seeds", default="0,1", help="train.seed of each hand-tuned run")
    p.add_argument("--holdout", type=float, default=0.5, help="data.dev_holdout: the report half's share")
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the arms' runs (default: a new temporary folder)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--stock-arm", nargs=2, metavar=("SPACE_JSON", "OUT"), help=argparse.SUPPRESS)  # the subprocess
    args = p.parse_args(argv)
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"--arms: unknown arm(s) {', '.join(unknown)}; the arms are {', '.join(ARMS)}")
    if not 0 < args.holdout < 1:
        p.error(f"--holdout is {args.holdout}, but must be a fraction in (0, 1)")
    args.arm_list, args.seed_list = arms, [int(s) for s in args.seeds.split(",")]
    return args


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import optuna
    import ray

    return {"cpu": cpu, "cores": str(os.cpu_count()), "torch": torch.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__, "python": platform.python_version(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip


def holdout_sets(args: argparse.Namespace) -> list[str]:
    return [f"data.dev_holdout={args.holdout}", f"data.holdout_seed={args.holdout_seed}"]


# ---- the probe: step, evaluation and start-up times of the hand-tuned run on this machine ----------


def probe(args: argparse.Namespace) -> dict[str, float]:
    """Seconds per training step of ``--hand``, per dev row evaluated, to start a run, and the rows
    of a final evaluation (the selection halves and the test sets)."""
    from mtbert.config.run import parse_set
    from mtbert.data.course import DataError
    from mtbert.data.prepare import load_split
    from mtbert.predict import evaluate
    from mtbert.tasks import TASKS
    from mtbert.train.run import open_run
    from mtbert.validation import load_config

    began = time.perf_counter()
    config = load_config(args.hand, parse_set(holdout_sets(args) + ["train.out_dir=" + tempfile.mkdtemp()]))
    run = open_run(config)
    trainer = run.plugins[0].trainer(run, 0, 0)
    started = time.perf_counter() - began
    for _ in range(3):  # the first steps warm the allocator and the kernels
        trainer.train_step()
    t, steps = time.perf_counter(), 12
    for _ in range(steps):
        trainer.train_step()
    step_s = (time.perf_counter() - t) / steps
    dev = {task: ds.subset(200) for task, ds in run.data.dev.items()}
    t = time.perf_counter()
    evaluate(run.model, dev, run.device)
    eval_row_s = (time.perf_counter() - t) / sum(len(ds) for ds in dev.values())
    final_rows = 0
    for task in TASKS:
        for split in ("dev", "test"):
            try:
                final_rows += len(load_split(config, run.tokenizer, task, split))
            except DataError:  # a data folder without a test file (Quora's): no such rows
                pass
    return {"start_s": round(started, 1), "step_s": round(step_s, 3), "eval_row_s": round(eval_row_s, 5),
            "final_rows": final_rows, "final_eval_s": round(final_rows * eval_row_s, 1)}  # fmt: skip


def hand_steps(args: argparse.Namespace, p: dict[str, float]) -> int:
    """``train.max_steps`` of the hand-tuned run that fills the budget: its start, its steps, its
    evaluations (every ``train.eval_every`` steps on ``data.max_eval_per_task`` rows per task) and
    its final evaluation."""
    from mtbert.validation import load_config

    config = load_config(args.hand)
    per_eval = 3 * (config.data.max_eval_per_task or 1000) * p["eval_row_s"]
    per_step = p["step_s"] + per_eval / config.train.eval_every
    return max(1, int((args.budget_s - p["start_s"] - p["final_eval_s"]) / per_step))


def search_budget(args: argparse.Namespace, p: dict[str, float], finalists: int) -> float:
    """``tune.time_budget_s`` of a search arm: the budget less its start-up and its finalists' scoring."""
    return round(args.budget_s - p["start_s"] - RAY_START_S - finalists * p["final_eval_s"], 1)


# ---- the arms -----------------------------------------------------------------------------------


def run(cmd: list[str], log: Path) -> tuple[dict, float]:
    """Run ``cmd`` (its stderr to ``log``); its JSON on stdout and its wall time."""
    t = time.perf_counter()
    with open(log, "w") as err:
        done = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {done.returncode}; see {log}")
    return json.loads(done.stdout[done.stdout.index("{"):]), wall


def hand_arm(args: argparse.Namespace, out: Path, steps: int, seed: int) -> dict:
    from mtbert.validation import load_config

    every = min(load_config(args.hand).train.eval_every or steps, steps)
    sets = [*holdout_sets(args), f"train.max_steps={steps}", f"train.eval_every={every}", f"train.seed={seed}",
            f"train.out_dir={out / f'hand-{seed}'}"]  # fmt: skip
    cmd = [sys.executable, "-m", "mtbert.cli", args.hand, *(a for s in sets for a in ("--set", s)), "--json",
           "--no-progress"]  # fmt: skip
    summary, wall = run(cmd, out / f"hand-{seed}.log")
    return {"seed": seed, "steps": summary["steps"], "best_step": summary["best_step"],
            "report": pick(summary["report"]), "report_rows": summary["report_examples"],
            "selection": pick(summary["selection_metrics"]), "selection_half": pick(summary),
            "wall_s": round(wall - summary["report_seconds"], 1)}  # fmt: skip


def search_arm(args: argparse.Namespace, out: Path, name: str, budget: float, extra: list[str]) -> dict:
    sets = [*holdout_sets(args), f"tune.time_budget_s={budget}", f"tune.storage_path={out}", f"tune.name={name}",
            *extra]  # fmt: skip
    cmd = [sys.executable, "-m", "search.cli", args.space, "--profile", args.profile,
           *(a for s in sets for a in ("--set", s)), "--json"]  # fmt: skip
    summary, wall = run(cmd, out / f"{name}.log")
    best, half = summary["best"], summary["report_half"]
    states = summary["trial_states"]
    return {"trials": summary["trials"], "states": states, "best_trial": best["trial_id"],
            "report": pick(half["report"]), "report_rows": half["report_examples"],
            "selection": pick(best["selection"]), "selection_half": pick(best["full_dev"] or {}),
            "time_budget_s": budget, "wall_s": round(wall - half["report_seconds"], 1)}  # fmt: skip


def stock_arm(args: argparse.Namespace, out: Path, budget: float) -> dict:
    spec = out / "stock-space.json"
    spec.write_text(json.dumps({"space": args.space, "profile": args.profile,
                                "sets": holdout_sets(args) + [f"tune.time_budget_s={budget}", "tune.num_samples=200"]}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stock-arm", str(spec), str(out / "stock")]
    result, wall = run(cmd, out / "stock.log")
    return {**result, "time_budget_s": budget, "wall_s": round(wall - result.pop("report_seconds"), 1)}


def stock_main(spec_file: str, out: str) -> None:
    """The stock arm, in its own process: ``search.engine.stock`` over the space, then its best
    checkpoint on the report half; the result as JSON on stdout."""
    from mtbert import load_config, resolve_device
    from mtbert.model.pretrained import load_tokenizer
    from mtbert.predict import report_evaluation
    from mtbert.train.checkpoint import CONFIG_FILE, ENCODER_DIR
    from search.engine.stock import run_stock
    from search.launch import read_data, search_setup
    from search.space.file import load_space

    spec = json.loads(Path(spec_file).read_text())
    overrides = dict(s.split("=", 1) for s in spec["sets"])
    space = load_space(Path(spec["space"]), overrides, profile=spec["profile"])
    setup = search_setup(space)
    began = time.perf_counter()
    found = run_stock(space, setup, read_data(setup, log=lambda line: print(line, file=sys.stderr)), Path(out))
    wall = time.perf_counter() - began
    checkpoint = found["checkpoint"]
    config = load_config(checkpoint / CONFIG_FILE)
    report = report_evaluation(checkpoint, config, load_tokenizer(checkpoint / ENCODER_DIR), resolve_device("auto"))
    print(json.dumps({
        "trials": found["trials"], "complete": found["complete"], "best_trial": found["trial_id"],
        "report": pick(report["report"]), "report_rows": report["report_examples"],
        "selection": pick(found["selection"]), "selection_half": None, "search_wall_s": round(wall, 1),
        "report_seconds": report["report_seconds"],
    }))  # fmt: skip


def pick(scores: dict) -> dict:
    return {k: round(scores[k], 4) for k in KEYS if k in scores and scores[k] is not None}


# ---- the table ----------------------------------------------------------------------------------


def table(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, Ray {m['ray']}, Optuna {m['optuna']}",
        f"budget S = {result['budget_s']:.0f} s per arm; report half: data.dev_holdout {result['holdout']} "
        f"(rows: {result['report_rows']})",
        "",
        f"{'arm':22}{'wall s':>8}{'trials':>8}{'report overall':>16}{'SST':>8}{'Quora*':>8}{'STS r':>8}"
        f"{'selection':>11}",
    ]
    for name, arm in result["arms"].items():
        for row in arm.get("runs", [arm]):
            label = f"{name} (seed {row['seed']})" if "seed" in row else name
            r = row["report"]
            trials = row.get("trials", 1)
            lines.append(f"{label:22}{row['wall_s']:8.0f}{trials:>8}{r['overall']:16.4f}{r['sst_acc']:8.4f}"
                         f"{r['para_acc']:8.4f}{r['sts_pearson']:8.4f}{row['selection']['overall']:11.4f}")  # fmt: skip
        if "mean" in arm:
            m = arm["mean"]
            lines.append(f"{name + ' (mean)':22}{'':8}{'':8}{m['overall']:16.4f}{m['sst_acc']:8.4f}"
                         f"{m['para_acc']:8.4f}{m['sts_pearson']:8.4f}")  # fmt: skip
    lines += ["", *(f"{k}: {v:+.4f}" for k, v in result["differences"].items()),
              "(*all-MiniLM-L6-v2 was trained on sentence pairs that include Quora duplicates)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stock_arm:
        stock_main(*args.stock_arm)
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="search-quality-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    p = probe(args)
    say(f"probe: {p}")
    from search.space.file import load_space

    space = load_space(Path(args.space), profile=args.profile)
    finalists = space.tune.final_top_k if space.tune.final_eval == "best" else 0
    result: dict = {"machine": machine(), "budget_s": args.budget_s, "holdout": args.holdout,
                    "holdout_seed": args.holdout_seed, "space": args.space, "profile": args.profile,
                    "hand_config": args.hand, "probe": p, "out": str(out), "arms": {}}  # fmt: skip
    for arm in args.arm_list:
        say(f"arm {arm}: started {time.strftime('%H:%M:%S')}")
        if arm == "hand":
            steps = hand_steps(args, p)
            runs = [hand_arm(args, out, steps, seed) for seed in args.seed_list]
            mean = {k: round(statistics.mean(r["report"][k] for r in runs), 4) for k in KEYS}
            result["arms"]["hand"] = {"max_steps": steps, "runs": runs, "mean": mean, "report": mean}
        elif arm == "stock":
            result["arms"]["stock"] = stock_arm(args, out, search_budget(args, p, 0))
        elif arm == "random":
            result["arms"]["random"] = search_arm(args, out, "random", search_budget(args, p, finalists),
                                                  ["tune.sampler=random", "tune.warm_start=[]"])  # fmt: skip
        else:
            result["arms"]["search"] = search_arm(args, out, "search", search_budget(args, p, finalists), [])
        say(f"arm {arm}: {json.dumps(result['arms'][arm])}")
    arms = result["arms"]
    first = next(iter(arms.values()))
    result["report_rows"] = (first.get("runs") or [first])[0]["report_rows"]
    pairs = [("search", "hand"), ("search", "stock"), ("search", "random"), ("stock", "hand"), ("random", "hand")]
    result["differences"] = {
        f"{a} - {b} (report overall)": round(arms[a]["report"]["overall"] - arms[b]["report"]["overall"], 4)
        for a, b in pairs if a in arms and b in arms
    }  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main()
