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
import dataclasses
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C
QUORA_NOTE = (
    "note: all-MiniLM-L6-v2 was trained on sentence pairs that include Quora duplicate questions, "
    "so its paraphrase (Quora) score is optimistic next to an encoder that never saw them"
)


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
    from mtbert.data.course import REQUIRED_FILES, TASK_FILES, DataError, fetch_course_data, read_task, resolve_data_dir

    args = data_parser().parse_args(argv)
    try:
        if args.command == "fetch":
            for path in fetch_course_data(args.dest):
                print(path)
            return 0
        folder = resolve_data_dir(args.dir)
        bad, unusable = 0, []
        for task, splits in TASK_FILES.items():
            for split in splits:
                path = folder / splits[split]
                if not path.exists() and (task, split) not in REQUIRED_FILES:
                    print(f"{path}: absent (optional: {task} {split})")
                    continue
                try:
                    report = read_task(folder, task, split)
                except DataError as e:
                    print(f"mtbert-train data: error: {task} {split}: {e}", file=sys.stderr)
                    unusable.append(str(path))
                    continue
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
    from mtbert.train.checkpoint import CheckpointError
    from mtbert.config import ConfigError, load_config, parse_set
    from mtbert.data.course import DataError, resolve_data_dir
    from mtbert.model.pretrained import DEFAULT_ENCODER, EncoderLoadError

    try:  # everything that can be wrong with the input is found before training starts
        config = load_config(args.config, parse_set(args.overrides))
        check_out_dir(config.train.out_dir)
        resolve_data_dir(config.data.dir)
        from mtbert.train.loop import open_run, resolve_device

        resolve_device(config.train.device)

        run = open_run(config, args.resume)
    except (ConfigError, DataError, EncoderLoadError, CheckpointError) as e:
        print(f"mtbert-train: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from mtbert.train.loop import TrainingInterrupted

    tokenizer, data = run.tokenizer, run.data
    for row in data.malformed:
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
    selection = {k: result.metrics[k] for k in ("sst_acc", "para_acc", "para_f1", "sts_pearson", "sts_spearman", "overall")}
    final = config.train.final_eval
    if result.checkpoint is None:  # resumed from a checkpoint whose run's best was not found beside it
        print(f"mtbert-train: the best evaluation (step {result.best_step}) has no checkpoint: it was not found "
              f"beside {args.resume}, and no later evaluation beat it; no final evaluation", file=sys.stderr)
        final = False
    try:
        if final:
            full, confusion, predictions = final_evaluation(result.checkpoint, config, tokenizer, run.device)
        else:
            full, confusion, predictions = selection, result.sst_confusion, None
    except KeyboardInterrupt:
        return interrupted(args, kept_checkpoint(args, out_dir, started), "in the final evaluation (training is done)")
    summary = {
        **full,  # the best checkpoint on the full dev sets (train.final_eval), else as selected
        "best_step": result.best_step, "steps": result.steps, "stopped_early": result.stopped_early,
        "train_samples_per_s": round(result.train_samples_per_s, 2),
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "predictions": str(predictions) if predictions else None,
        "dev": "full" if final else "selection",
        # what chose the best step: evaluations on data.max_eval_per_task dev examples per task
        "selection_metrics": selection,
        "selection_dev_examples": {t: len(ds) for t, ds in data.dev.items()},
        "malformed_rows": len(data.malformed),
        # gradient-conflict figures (grad.diagnose_every), averaged over the evaluations' intervals
        "grad_conflict": grad_figures(result.history),
        "mlm": [dataclasses.asdict(m) for m in run.mlm],
        "merged": merged_serving(run),
    }  # fmt: skip
    if args.json:
        from mtbert.evaluate import strict_json

        print(strict_json(summary))
    else:
        print_table(summary, confusion)
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


def check_out_dir(out_dir: str) -> None:
    """``train.out_dir`` must be a folder, or creatable: found now, not at the first save."""
    from mtbert.config import ConfigError

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


def merged_serving(run) -> dict | None:
    """After a specialist phase: the merged model's compute against running one model per task,
    for the SST dev sentences at their own lengths (paper 004)."""
    from mtbert.model.merge import TaskEncoders, compute_report

    if not isinstance(run.model.encoder, TaskEncoders):
        return None
    report = compute_report(run.model.encoder, run.data.dev["sst"].lengths())
    return {"shared_depth": report.shared_depth, "layers": report.num_layers, "saved": round(report.saved, 4),
            "text": str(report)}


def grad_figures(history: list[dict]) -> dict[str, float]:
    """Each gradient-conflict figure's mean over the run's evaluations that have it."""
    keys = sorted({k for m in history for k in m if k.startswith("grad_")})
    return {k: round(sum(vals) / len(vals), 4) for k in keys if (vals := [m[k] for m in history if k in m])}


def final_evaluation(checkpoint: Path, config, tokenizer, device) -> tuple[dict, list[list[int]], Path]:
    """The best checkpoint on the full dev sets (metrics, SST confusion) and its dev and test
    predictions in the course's submission format, under ``<checkpoint>/predictions``."""
    from mtbert.train.checkpoint import load_checkpoint
    from mtbert.data.course import DataError, resolve_data_dir
    from mtbert.evaluate import Scores, confusion_matrix, prediction_filename
    from mtbert.evaluate import write_predictions as write_file
    from mtbert.train.loop import TASKS, load_split, predict

    model, _, _, _ = load_checkpoint(checkpoint, device)
    out = checkpoint / "predictions"
    out.mkdir(exist_ok=True)
    folder = resolve_data_dir(config.data.dir)
    pairs = {}
    for task in TASKS:
        for split in ("dev", "test"):
            try:
                ds = load_split(config, tokenizer, task, split, data_dir=folder)
            except DataError as e:  # e.g. no Quora test file in this data folder
                print(f"no {task} {split} predictions: {e}", file=sys.stderr)
                continue
            ids, preds, gold = predict(model, task, ds, device)
            write_file(out / prediction_filename(task, split), task, ids, preds.tolist())
            if split == "dev":
                pairs[task] = (preds.double().numpy(), gold.double().numpy())
    scores = Scores.compute(**pairs)
    return scores.as_dict(), confusion_matrix(*pairs["sst"]).tolist(), out


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
