"""``mtbert-train``: one multi-task training run, no Ray.

    mtbert-train CONFIG.yaml [--set KEY=VALUE ...] [--resume CKPT] [--json]
    mtbert-train predict MODEL --task sst|para|sts (--input FILE | --text TEXT [--text2 TEXT]) [--out FILE]
    mtbert-train data fetch [--dest DIR]     download the course files (needs the internet)
    mtbert-train data check [--dir DIR]      read every course file and report malformed rows

``--set`` takes one or more KEY=VALUE after one flag, and repeats. Exit codes: 0 done, 2 bad input
(config, data, encoder source, checkpoint to resume; for ``predict``, the input and the model folder), 1 failure,
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
PROGRESS_ROWS = 2000  # predict: a progress bar from this many rows on (or whenever stderr is a terminal)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtbert-train",
        description="Fine-tune one minBERT encoder on SST sentiment, Quora paraphrase and STS similarity at once.",
        epilog="Other commands: 'mtbert-train predict MODEL --task TASK --input FILE' (see 'mtbert-train predict "
        "--help'), 'mtbert-train data fetch [--dest DIR]', 'mtbert-train data check [--dir DIR]'.",
    )
    p.add_argument("config", nargs="?",
                   help="run config YAML (a search space file works too: its base point is trained)")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override settings by their dotted names, one or more after one flag: --set optim.lr=1e-5 "
                   "train.max_steps=100 (the flag repeats too); a config typed after them is still the config, "
                   "or put -- before it")  # fmt: skip
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
        if argv[:1] == ["predict"]:
            return predict_main(argv[1:])
        return train_main(parse_train_args(argv))
    except KeyboardInterrupt:  # before training started (loading), or a second Ctrl-C
        print("mtbert-train: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    """The arguments of a training run; the config may follow ``--set``'s KEY=VALUE items."""
    from mtbert.config.run import split_set

    parser = build_parser()
    args = parser.parse_args(argv)
    args.overrides, args.config = split_set(args.overrides, args.config)
    if args.config is None:
        parser.error("the following arguments are required: config")
    return args


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
    report = None
    if config.data.dev_holdout and result.checkpoint is not None:
        from mtbert.predict import report_evaluation

        try:
            report = report_evaluation(result.checkpoint, config, run.tokenizer, run.device)
        except KeyboardInterrupt:
            when = "scoring the report half (training is done)"
            return interrupted(args, kept_checkpoint(args, out_dir, started), when)
    summary = run_summary(run, result, final, report)
    if args.json:
        from mtbert.evaluate import strict_json

        print(strict_json(summary))
    else:
        print_table(summary, final.sst_confusion if final else result.sst_confusion)
    if config.model.encoder == DEFAULT_ENCODER:
        print(QUORA_NOTE, file=sys.stderr)
    return 0


def predict_parser() -> argparse.ArgumentParser:
    from mtbert.serve import FORMATS, KINDS
    from mtbert.tasks import TASKS

    p = argparse.ArgumentParser(
        prog="mtbert-train predict",
        description=f"Predict with a trained model on your own sentences. MODEL is {KINDS}.",
        epilog="Output: one row per input: its id (if the input has ids), then sst: label (0-4) and prob_0 ... "
        "prob_4; para: label (1: paraphrase) and prob_paraphrase; sts: score (0-5).",
    )
    p.add_argument("model", help="a checkpoint, an export rank (OUT/rank-N) or an ensemble folder")
    p.add_argument("--task", required=True, choices=TASKS, help="sst: sentiment; para: paraphrase; sts: similarity")
    p.add_argument("--input", metavar="FILE", help="a CSV/TSV with a header naming sentence (sst) or sentence1, "
                   "sentence2 (para, sts), and optionally id; a course data file; JSON lines; - for stdin")  # fmt: skip
    p.add_argument("--text", help="one sentence (the first of a pair)")
    p.add_argument("--text2", help="the pair's second sentence (para, sts)")
    p.add_argument("--out", metavar="FILE", help="write the rows here (default: stdout)")
    p.add_argument("--format", choices=FORMATS, help="csv (default) or jsonl (the default for an --out *.jsonl)")
    p.add_argument("--device", default="auto", help="auto (a GPU if torch sees one), cpu, cuda, cuda:N")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA (mtbert-train's final evaluation "
                   "predicts in fp32: its prediction files are reproduced exactly on a GPU too)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def predict_main(argv: list[str]) -> int:
    """``mtbert-train predict``: the input and the model folder checked before any weights load."""
    from mtbert.config.fields import ConfigError
    from mtbert.data.course import DataError
    from mtbert.data.inputs import from_text, read_inputs
    from mtbert.ensemble import EnsembleError
    from mtbert.model.pretrained import EncoderLoadError
    from mtbert.serve import open_model, predict_inputs, write_rows
    from mtbert.train.checkpoint import CheckpointError
    from mtbert.train.device import resolve_device

    args = predict_parser().parse_args(argv)
    fmt = args.format or ("jsonl" if args.out and args.out.endswith(".jsonl") else "csv")
    try:
        if (args.input is None) == (args.text is None):
            raise DataError("give --input FILE (- for standard input) or --text, one of the two")
        if args.text2 is not None and args.text is None:
            raise DataError("--text2 is the second sentence of a pair: give the first with --text")
        inputs = from_text(args.task, args.text, args.text2) if args.input is None else read_inputs(args.task, args.input)
        if args.out and (Path(args.out).is_dir() or not Path(args.out).absolute().parent.is_dir()):
            raise DataError(f"--out {args.out} must be a file in an existing folder")
        model = open_model(args.model, args.task)
        device = resolve_device(args.device)
    except (DataError, CheckpointError, EnsembleError, ConfigError) as e:
        print(f"mtbert-train predict: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for row in inputs.skipped:
        print(f"malformed row skipped: {row}", file=sys.stderr)
    total = len(inputs) * len(model.members)
    bar = None
    if not args.no_progress and (sys.stderr.isatty() or total >= PROGRESS_ROWS):
        from tqdm import tqdm

        # into a log (no terminal), an update every 10 s rather than ten a second
        bar = tqdm(total=total, desc=f"predicting {args.task}", unit="row", file=sys.stderr,
                   mininterval=0.1 if sys.stderr.isatty() else 10)  # fmt: skip
    try:
        pred = predict_inputs(model, args.task, inputs, device, bf16=device.type == "cuda" and not args.fp32,
                              on_batch=bar.update if bar else None)  # fmt: skip
    except (CheckpointError, EncoderLoadError) as e:
        print(f"mtbert-train predict: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if bar:
            bar.close()
    if args.out is None:
        write_rows(sys.stdout, args.task, pred, fmt)
        return 0
    with open(args.out, "w", encoding="utf-8", newline="") as stream:
        n = write_rows(stream, args.task, pred, fmt)
    print(f"{n} {args.task} prediction(s) of {model.kind} {model.path} written to {args.out}", file=sys.stderr)
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
    report = summary.get("report")
    print(f"{'task':14}{'metric':32}{first:>10}{'selection':>11}" + (f"{'report half':>13}" if report else ""))
    for task, metric, key in rows:
        print(f"{task:14}{metric:32}{summary[key]:10.4f}{sel[key]:11.4f}" + (f"{report[key]:13.4f}" if report else ""))
    n = summary["selection_dev_examples"]
    print(f"(selection: the evaluations that chose the best step, on {n['sst']}/{n['para']}/{n['sts']} "
          "sst/para/sts dev examples)")
    if report:
        r = summary["report_examples"]
        print(f"(report half: {r['sst']}/{r['para']}/{r['sts']} sst/para/sts dev rows held out by data.dev_holdout "
              f"{summary['dev_holdout']:g}, read once, after the best step was chosen"
              + ("; full dev: the whole selection half of each dev set" if first == "full dev" else "") + ")")
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
