"""``mtbert-train``: one multi-task training run, no Ray.

    mtbert-train CONFIG.yaml [--set KEY=VALUE ...] [--resume CKPT] [--json]
    mtbert-train data fetch [--dest DIR]     download the course files (needs the internet)
    mtbert-train data check [--dir DIR]      read every course file and report malformed rows

Exit codes: 0 done, 2 bad input (config, data folder, encoder source), 1 failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
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
    if argv[:1] == ["data"]:
        return data_main(argv[1:])
    return train_main(build_parser().parse_args(argv))


def data_main(argv: list[str]) -> int:
    from mtbert.data import TASK_FILES, DataError, fetch_course_data, read_task, resolve_data_dir

    args = data_parser().parse_args(argv)
    try:
        if args.command == "fetch":
            for path in fetch_course_data(args.dest):
                print(path)
            return 0
        folder = resolve_data_dir(args.dir)
        bad = 0
        for task, splits in TASK_FILES.items():
            for split in splits:
                try:
                    report = read_task(folder, task, split)
                except DataError as e:
                    print(f"{task} {split}: {e}", file=sys.stderr)
                    continue
                bad += len(report.malformed)
                print(f"{report.path}: {len(report.examples)} rows, {len(report.malformed)} malformed")
                for row in report.malformed:
                    print(f"  {row}")
        print(f"{bad} malformed row(s) in all")
        return 0
    except DataError as e:
        print(f"mtbert-train data: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def train_main(args: argparse.Namespace) -> int:
    from mtbert.checkpoint import CheckpointError
    from mtbert.config import ConfigError, load_config, parse_set
    from mtbert.data import DataError, resolve_data_dir
    from mtbert.pretrained import DEFAULT_ENCODER, EncoderLoadError

    try:  # everything that can be wrong with the input is found before training starts
        config = load_config(args.config, parse_set(args.overrides))
        resolve_data_dir(config.data.dir)
        from mtbert.trainer import open_run

        run = open_run(config, args.resume)
    except (ConfigError, DataError, EncoderLoadError, CheckpointError) as e:
        print(f"mtbert-train: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    tokenizer, data = run.tokenizer, run.data
    for row in data.malformed:
        print(f"malformed row skipped: {row}", file=sys.stderr)
    out_dir = Path(config.train.out_dir)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=run.total_steps, initial=run.step, desc="training", unit="step", file=sys.stderr)
    try:
        result = run.run(on_step=(lambda step: bar.update(1)) if bar else None, checkpoint_dir=out_dir)
    except FloatingPointError as e:
        print(f"mtbert-train: training stopped: {e}", file=sys.stderr)
        return 1
    finally:
        if bar:
            bar.close()
    selection = {k: result.metrics[k] for k in ("sst_acc", "para_acc", "para_f1", "sts_pearson", "sts_spearman", "overall")}
    if config.train.final_eval:
        full, confusion, predictions = final_evaluation(result.checkpoint, config, tokenizer, run.device)
    else:
        full, confusion, predictions = selection, result.sst_confusion, None
    summary = {
        **full,  # the best checkpoint on the full dev sets (train.final_eval), else as selected
        "best_step": result.best_step, "steps": result.steps, "stopped_early": result.stopped_early,
        "train_samples_per_s": round(result.train_samples_per_s, 2),
        "checkpoint": str(result.checkpoint), "predictions": str(predictions) if predictions else None,
        "dev": "full" if config.train.final_eval else "selection",
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
        print(json.dumps(summary))
    else:
        print_table(summary, confusion)
    if config.model.encoder == DEFAULT_ENCODER:
        print(QUORA_NOTE, file=sys.stderr)
    return 0


def merged_serving(run) -> dict | None:
    """After a specialist phase: the merged model's compute against running one model per task,
    for the SST dev sentences at their own lengths (paper 004)."""
    from mtbert.merge import TaskEncoders, compute_report

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
    from mtbert.checkpoint import load_checkpoint
    from mtbert.data import DataError, resolve_data_dir
    from mtbert.evaluate import Scores, confusion_matrix, prediction_filename
    from mtbert.evaluate import write_predictions as write_file
    from mtbert.trainer import TASKS, load_split, predict

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
