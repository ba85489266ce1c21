"""``mtbert-train``: one multi-task training run, no Ray.

    mtbert-train CONFIG.yaml [--set KEY=VALUE ...] [--resume CKPT] [--json]
    mtbert-train data fetch [--dest DIR]     download the course files (needs the internet)
    mtbert-train data check [--dir DIR]      read every course file and report malformed rows

Exit codes: 0 done, 2 bad input (config, data, encoder source, checkpoint to resume), 1 failure,
130 interrupted (Ctrl-C: the run stops after the step in progress, saves ``<out_dir>/last`` and
prints the command that resumes it; a second Ctrl-C stops at once).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mtbert.tasks import QUORA_NOTE

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtbert-train",
        description="Fine-tune one minBERT encoder on SST sentiment, Quora paraphrase and STS similarity at once.",
        epilog="Data commands: 'mtbert-train data fetch [--dest DIR]', 'mtbert-train data check [--dir DIR]'.",
    )
    p.add_argument("config", help="run config YAML (a search space file works too: its base point is trained)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting by its dotted name, e.g. --set optim.lr=1e-5 (repeatable)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint saved with its state (<out_dir>/last)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the results on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def data_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtbert-train data", description="The course data files.")
    sub = p.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download the course CSV files")
    fetch.add_argument("--dest", default="data", help="folder to write them to (default ./data)")
    check = sub.add_parser("check", help="read every course file and report malformed rows")
    check.add_argument("--dir", default=None, help="data folder (default: $MTBERT_DATA, else ./data)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["data"]:
            return data_main(argv[1:])
        return train_main(build_parser().parse_args(argv))
    except KeyboardInterrupt:  # before training started (loading), or a second Ctrl-C
        print("mtbert-train: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def data_main(argv: list[str]) -> int:
    from mtbert.data.check import check_files
    from mtbert.data.course import DataError, fetch_course_data, resolve_data_dir

    args = data_parser().parse_args(argv)
    try:
        if args.command == "fetch":
            for path in fetch_course_data(args.dest):
                print(path)
            return 0
        bad, unusable = 0, []
        for file in check_files(resolve_data_dir(args.dir)):
            if file.absent:
                print(f"{file.path}: absent (optional: {file.task} {file.split})")
            elif file.error is not None:
                print(f"mtbert-train data: error: {file.task} {file.split}: {file.error}", file=sys.stderr)
                unusable.append(str(file.path))
            else:
                report = file.report
                bad += len(report.malformed)
                print(f"{report.path}: {len(report.examples)} rows, {len(report.malformed)} malformed")
                for row in report.malformed:
                    print(f"  {row}")
        print(f"{bad} malformed row(s) in all (reported and left out by training)")
        if unusable:
            print(f"mtbert-train data: {len(unusable)} file(s) cannot be used: {', '.join(unusable)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return 0
    except DataError as e:
        print(f"mtbert-train data: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def train_main(args: argparse.Namespace) -> int:
    from mtbert.config.fields import ConfigError
    from mtbert.config.run import parse_set
    from mtbert.data.course import DataError, resolve_data_dir
    from mtbert.model.pretrained import DEFAULT_ENCODER, EncoderLoadError
    from mtbert.train.checkpoint import CheckpointError
    from mtbert.train.device import resolve_device
    from mtbert.train.run import check_out_dir, open_run
    from mtbert.validation import load_config

    try:  # everything that can be wrong with the input is found before training starts
        config = load_config(args.config, parse_set(args.overrides))
        check_out_dir(config.train.out_dir)
        resolve_data_dir(config.data.dir)
        resolve_device(config.train.device)
        run = open_run(config, args.resume)
    except (ConfigError, DataError, EncoderLoadError, CheckpointError) as e:
        print(f"mtbert-train: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from mtbert.predict import final_evaluation
    from mtbert.train.loop import TrainingInterrupted
    from mtbert.train.summary import run_summary

    for row in run.data.malformed:
        print(f"malformed row skipped: {row}", file=sys.stderr)
    out_dir = Path(config.train.out_dir)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=run.total_steps, initial=run.step, desc="training", unit="step", file=sys.stderr)
    stop, started = StopOnInterrupt(), time.time()
    try:
        with stop:
            result = run.run(on_step=(lambda step: bar.update(1)) if bar else None, checkpoint_dir=out_dir, stop=stop)
    except FloatingPointError as e:
        print(f"mtbert-train: training stopped: {e}", file=sys.stderr)
        return 1
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        if bar:
            bar.close()
        when = f"at step {e.step}" if isinstance(e, TrainingInterrupted) else "during a step"
        return interrupted(args, kept_checkpoint(args, out_dir, started), when)
    finally:
        if bar:
            bar.close()
    final = None
    if result.checkpoint is None:  # resumed, and the run's best was not found beside the checkpoint
        print(f"mtbert-train: the best evaluation (step {result.best_step}) has no checkpoint: it was not found "
              f"beside {args.resume}, and no later evaluation beat it; no final evaluation", file=sys.stderr)
    elif config.train.final_eval:
        try:
            final = final_evaluation(result.checkpoint, config, run.tokenizer, run.device)
        except KeyboardInterrupt:
            return interrupted(args, kept_checkpoint(args, out_dir, started), "in the final evaluation (training is done)")
    summary = run_summary(run, result, final)
    if args.json:
        from mtbert.evaluate import strict_json

        print(strict_json(summary))
    else:
        print_table(summary, final.sst_confusion if final else result.sst_confusion)
    if config.model.encoder == DEFAULT_ENCODER:
        print(QUORA_NOTE, file=sys.stderr)
    return 0


class StopOnInterrupt:
    """While active (``with``), the first Ctrl-C asks the run to stop after the step in progress,
    where its state is whole and ``last`` can be saved; a second one stops at once. Called, it says
    whether a stop was asked (the trainer's ``stop``)."""

    def __init__(self) -> None:
        self.asked = False
        self._previous: Any = None

    def __call__(self) -> bool:
        return self.asked

    def _handle(self, signum: int, frame: Any) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        print("\nmtbert-train: stopping after this step to save a resumable checkpoint (Ctrl-C again: stop now, "
              "keeping only what is saved)", file=sys.stderr, flush=True)  # fmt: skip

    def __enter__(self) -> StopOnInterrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)


def kept_checkpoint(args: argparse.Namespace, out_dir: Path, started: float) -> Path | None:
    """The checkpoint an interrupted run goes on from: ``<out_dir>/last`` if this run saved it, else
    the one it was resumed from; None if neither (an older run's ``last`` is not this run's)."""
    from mtbert.train.checkpoint import METRICS_FILE

    last = out_dir / "last"
    try:
        if (last / METRICS_FILE).stat().st_mtime >= started:
            return last
    except OSError:
        pass
    return Path(args.resume) if args.resume else None


def interrupted(args: argparse.Namespace, last: Path | None, when: str) -> int:
    """Say what was kept and the command that goes on from it; the exit code of an interruption."""
    print(f"mtbert-train: interrupted {when}", file=sys.stderr)
    if last is None:
        print("mtbert-train: no checkpoint was saved yet; start again with: "
              + shlex.join(["mtbert-train", args.config, *[a for o in args.overrides for a in ("--set", o)]]),
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    print(f"mtbert-train: {last} is kept; continue with: {resume_command(args, last)}", file=sys.stderr)
    return EXIT_INTERRUPTED


def resume_command(args: argparse.Namespace, last: Path) -> str:
    """The command line that resumes this run from ``last``: the same config and --set settings."""
    words = ["mtbert-train", args.config, *[a for o in args.overrides for a in ("--set", o)], "--resume", str(last)]
    words += [flag for flag, on in (("--json", args.json), ("--no-progress", args.no_progress)) if on]
    return shlex.join(words)


def print_table(summary: dict, confusion: list[list[int]] | None) -> None:
    sel = summary["selection_metrics"]
    first = "full dev" if summary["dev"] == "full" else "dev"
    rows = [
        ("sst", "accuracy", "sst_acc"), ("para (Quora)", "accuracy", "para_acc"), ("para (Quora)", "F1", "para_f1"),
        ("sts", "Pearson r", "sts_pearson"), ("sts", "Spearman rho", "sts_spearman"),
        ("overall", "(sst + para + (1 + r) / 2) / 3", "overall"),
    ]  # fmt: skip
    print(f"{'task':14}{'metric':32}{first:>10}{'selection':>11}")
    for task, metric, key in rows:
        print(f"{task:14}{metric:32}{summary[key]:10.4f}{sel[key]:11.4f}")
    n = summary["selection_dev_examples"]
    print(f"(selection: the evaluations that chose the best step, on {n['sst']}/{n['para']}/{n['sts']} "
          "sst/para/sts dev examples)")
    if confusion:
        print("sst confusion (rows gold 0-4, columns predicted 0-4):")
        for row in confusion:
            print("  " + " ".join(f"{v:5d}" for v in row))
    if summary["grad_conflict"]:
        print("gradient conflict (mean over the run): "
              + ", ".join(f"{k.removeprefix('grad_')} {v:+.3f}" for k, v in summary["grad_conflict"].items()))
    if summary["merged"]:
        print(f"merged serving (specialists sharing the frozen bottom): {summary['merged']['text']}")
    for m in summary["mlm"]:
        print(f"mlm: {m['steps']} steps, loss {m['first_loss']:.3f} -> {m['last_loss']:.3f}")
    print(f"best step {summary['best_step']} of {summary['steps']}; "
          f"{summary['train_samples_per_s']} training samples/s")
    print(f"checkpoint: {summary['checkpoint']}")
    if summary["predictions"]:
        print(f"predictions: {summary['predictions']}")


if __name__ == "__main__":
    sys.exit(main())
