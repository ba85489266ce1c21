"""``mtbert-search``: hyperparameter search over multi-task runs (Ray Tune, Optuna, ASHA).

    mtbert-search SPACE.yaml [--set KEY=VALUE ...] [--smoke] [--json] [--profile cpu|gpu] [--address ADDR]
                             (--set takes one or more KEY=VALUE after one flag, and repeats)
    mtbert-search resume DIR [--json] [--address ADDR]
    mtbert-search export DIR [--top-k K] --out OUT
    mtbert-search status DIR [--format text|csv|markdown]
    mtbert-search ensemble DIR [--top-k K] [--retrain-seeds S] --out OUT [--json]
    mtbert-search report DIR --out OUT
    mtbert-search dashboard DIR [--port N]
    mtbert-search sync DIR [--checkpoints]
    mtbert-search cluster check [CLUSTER.yaml]

Exit codes: 0 done, 2 bad input (found before Ray starts or any folder is made; also a search
folder that another command is writing into), 1 failure, 130 interrupted (Ctrl-C: ``resume`` goes on).
The commands that write into a search folder (a search, ``resume``, ``ensemble --retrain-seeds``)
hold its lock (``search.lock``) while they run; ``status``, ``export`` and ``report`` only read.
Every ``--json`` output is strict JSON (NaN and infinities as null).
The Ray-facing work is in ``search.engine``; this module parses and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from search.errors import SearchError, SearchInterrupted, SpaceError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command that Ctrl-C ended
COMMANDS = ("resume", "export", "status", "ensemble", "report", "cluster", "dashboard", "sync")
TASK_ROWS = (
    ("sst", "accuracy", "sst_acc"), ("para (Quora)", "accuracy", "para_acc"), ("para (Quora)", "F1", "para_f1"),
    ("sts", "Pearson r", "sts_pearson"), ("sts", "Spearman rho", "sts_spearman"),
    ("overall", "(sst + para + (1 + r) / 2) / 3", "overall"),
)  # fmt: skip


def search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtbert-search",
        description="Search the hyperparameters of multi-task BERT fine-tuning with Ray Tune, Optuna (TPE) and ASHA.",
        epilog="Other commands: 'mtbert-search resume DIR', 'mtbert-search export DIR --out OUT [--top-k K]', "
        "'mtbert-search status DIR [--format text|csv|markdown]', "
        "'mtbert-search ensemble DIR [--top-k K] [--retrain-seeds S] --out OUT [--json]', "
        "'mtbert-search report DIR --out OUT', 'mtbert-search cluster check [CLUSTER.yaml]', "
        "'mtbert-search dashboard DIR [--port N]', 'mtbert-search sync DIR [--checkpoints]'. DIR may be a URI (s3://...).",
    )
    p.add_argument("space", nargs="?", help="search space YAML: a run config plus search: and tune: sections")
    p.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override run settings (optim.lr=1e-5) or search settings (tune.num_samples=8), one or more after one "
        "flag: --set optim.lr=3e-5 train.max_steps=100 (the flag repeats too); a space file typed after them is "
        "still the space file, or put -- before it",
    )
    p.add_argument("--smoke", action="store_true", help="shrink everything: the whole pipeline in about a minute")
    p.add_argument("--profile", metavar="NAME", help="resource profile: cpu, gpu, or another the space file names "
                   "under tune.profiles (default: gpu when one is visible, else cpu)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object with the result on stdout; progress on stderr")
    p.add_argument("--address", help="Ray cluster to run on ('auto': the running one; default: $RAY_ADDRESS, "
                   "else a local Ray started here)")  # fmt: skip
    return p


def command_parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"mtbert-search {command}")
    if command == "cluster":
        p.description = ("Check a Ray cluster config before 'ray up': the dashboard on the loopback only, token "
                         "authentication on, no trial on the head, the pinned Ray image and installs; one line per "
                         "problem (exit 2), none when it is safe.")  # fmt: skip
        p.add_argument("action", choices=("check",))
        p.add_argument("file", nargs="?", default="cluster.yaml", help="the cluster config (default cluster.yaml)")
        return p
    p.add_argument("dir", help="a search folder, <tune.storage_path>/<tune.name>: a local folder or a URI "
                   "(s3://bucket/prefix/name)")  # fmt: skip
    if command == "resume":
        p.description = "Continue an interrupted search: unfinished and errored trials, the Optuna study, new trials."
        p.add_argument("--json", action="store_true", help="one JSON object with the result on stdout")
        p.add_argument("--address", help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray)")
    elif command == "export":
        p.description = "Copy the best trials' best checkpoints to OUT/rank-1 ... OUT/rank-K."
        p.add_argument("--top-k", type=int, default=1, help="how many trials (default 1)")
        p.add_argument("--out", required=True, help="folder to write rank-1 ... into")
    elif command == "ensemble":
        add_ensemble_arguments(p)
    elif command == "dashboard":
        p.description = ("Serve the search's Optuna study (tune.study_storage) with optuna-dashboard on 127.0.0.1 "
                         "only, while the search runs or after; Ctrl-C stops it.")  # fmt: skip
        p.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080; 0: a free one)")
    elif command == "sync":
        p.description = ("Bring a search kept at a URI (s3://...) down to its working copy on this machine, "
                         "TensorBoard's event files included, and print the folder: 'tensorboard --logdir' "
                         "reads it there. Every other command does this itself; run it again to see newer results.")  # fmt: skip
        p.add_argument("--checkpoints", action="store_true", help="the trials' kept checkpoints too")
    elif command == "report":
        p.description = ("Write a self-contained HTML report of a search to OUT/index.html: the trials' table, "
                         "learning curves, per-task scores, parameter importance, gradient conflict; "
                         "the figures also as OUT/*.png.")  # fmt: skip
        p.add_argument("--out", required=True,
                       help="folder for index.html and the PNG figures (made if missing; an earlier report there "
                       "is replaced)")  # fmt: skip
    else:
        p.description = "The trials of a search as a table."
        p.add_argument("--format", choices=("text", "csv", "markdown"), default="text")
    return p


def add_ensemble_arguments(p: argparse.ArgumentParser) -> None:
    from mtbert.ensemble import DEFAULT_ROUNDS, DEFAULT_RULES, RULES

    p.description = (
        "Combine the best trials of a search into one predictor per task: members and weights chosen "
        "on the full dev sets by greedy forward selection with replacement (Caruana et al. 2004)."
    )
    p.add_argument("--top-k", type=int, default=3, help="how many trials, best first (default 3)")
    p.add_argument("--retrain-seeds", type=int, default=0, metavar="S",
                   help="also train each trial's config to its full budget with S new seeds, "
                   "through Ray (default 0)")  # fmt: skip
    p.add_argument("--out", required=True, help="folder for report.json, the prediction files and members/")
    for task in ("sst", "para"):
        default = DEFAULT_RULES[task]
        p.add_argument(f"--{task}", choices=list(RULES[task]), default=default,
                       help=f"how {task} predictions combine (default {default})")  # fmt: skip
    p.add_argument("--max-rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"most picks per task in the selection (default {DEFAULT_ROUNDS})")  # fmt: skip
    p.add_argument("--json", action="store_true", help="the report as one JSON object on stdout; progress on stderr")
    p.add_argument("--address", help="Ray cluster for --retrain-seeds (default: $RAY_ADDRESS, else a local Ray)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Before torch loads: OpenMP threads that spin while waiting starve the others when the cores
    # are shared (with Ray's processes here): a full-dev evaluation of the tiny encoder on a busy
    # 2-core machine took 77 s spinning, 3.4 s passive. Trials get the same through Ray.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        if argv[:1] and argv[0] in COMMANDS:
            command = argv[0]
            args = command_parser(command).parse_args(argv[1:])
            mains = {"resume": resume_main, "export": export_main, "status": status_main, "ensemble": ensemble_main,
                     "report": report_main, "cluster": cluster_main, "dashboard": dashboard_main,
                     "sync": sync_main}  # fmt: skip
            if command != "cluster":
                from search import storage

                try:  # a URI: its working copy here, brought up to date (search.storage)
                    args.dir = str(storage.search_folder(args.dir, checkpoints=getattr(args, "checkpoints", False)))
                except SearchError as e:
                    return bad_input(e)
            return mains[command](args)
        args = parse_search_args(argv)
        args.argv = argv
        return search_main(args)
    except KeyboardInterrupt:  # before or after the work that says more (run_and_report, ensemble_main)
        print("mtbert-search: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def parse_search_args(argv: list[str]) -> argparse.Namespace:
    """The arguments of a search; the space file may follow ``--set``'s KEY=VALUE items."""
    from mtbert.config.run import split_set

    parser = search_parser()
    args = parser.parse_args(argv)
    args.overrides, args.space = split_set(args.overrides, args.space)
    if args.space is None:
        parser.error("the following arguments are required: space")
    return args


def named(experiment: Path) -> str:
    """A search folder as a command takes it: a working copy by its URI (``search.storage``)."""
    from search.launch import shown_folder

    return shlex.quote(shown_folder(experiment))


def watch_line(experiment: Path) -> str:
    """The line a user needs to follow a search while it runs."""
    folder = named(experiment)
    if folder != shlex.quote(str(experiment)):  # at a URI: TensorBoard reads the working copy
        return (f"watch it: mtbert-search sync {folder}, then tensorboard --logdir {shlex.quote(str(experiment))} "
                f"(or: mtbert-search status {folder})")  # fmt: skip
    return f"watch it: tensorboard --logdir {folder} (or: mtbert-search status {folder})"


def next_steps(experiment: Path) -> list[str]:
    """The commands that use a finished search, its folder filled in."""
    folder, out = named(experiment), experiment / "export"
    steps = [
        (f"mtbert-search export {folder} --top-k 3 --out {shlex.quote(str(out))}",
         "the best checkpoints, each with a model card"),
        (f"mtbert-train predict {shlex.quote(str(out / 'rank-1'))} --task sst --text 'A gorgeous, witty film.'",
         "then: the best one on your own text"),
        (f"mtbert-search ensemble {folder} --top-k 3 --out {shlex.quote(str(experiment / 'ensemble'))}",
         "the best trials combined per task"),
        (f"mtbert-search report {folder} --out {shlex.quote(str(experiment / 'report'))}",
         "tables and figures in index.html"),
    ]  # fmt: skip
    width = max(len(command) for command, _ in steps)
    return ["next steps:", *(f"  {command:{width}}  # {what}" for command, what in steps)]


def bad_input(error: Exception) -> int:
    print(f"mtbert-search: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


def search_main(args: argparse.Namespace) -> int:
    from mtbert import ConfigError, DataError
    from mtbert.config import parse_set
    from mtbert.data.course import resolve_data_dir
    from search.space.file import load_space

    # Everything that can be wrong with the input is found here, before Ray starts or a folder is made.
    try:
        overrides = parse_set(args.overrides)
        space = load_space(args.space, overrides, profile=args.profile, smoke=args.smoke)
        resolve_data_dir(space.base.data.dir)
        text = Path(args.space).read_text()
    except (SpaceError, ConfigError, DataError) as e:
        return bad_input(e)
    from search import storage
    from search.engine.study import check_storage as check_study_storage
    from search.launch import (
        Launch,
        check_address,
        check_local_gpus,
        claim_folder,
        experiment_dir,
        read_data,
        run_search,
        search_setup,
    )

    out = sys.stderr if args.json else sys.stdout
    try:  # the data and the cluster too: found before Ray starts or a folder is made
        check_address(args.address)
        check_local_gpus(space, args.address)
        if storage.is_uri(space.tune.storage_path):  # credentials, bucket, network: before any trial
            storage.check_writable(space.tune.storage_path)
        check_study_storage(space, log=lambda line: print(line, file=out))
        setup = search_setup(space)
        data = read_data(setup, log=lambda line: print(line, file=out, flush=True))
    except (SpaceError, ConfigError, DataError, SearchError) as e:
        return bad_input(e)
    taken = experiment_dir(space)
    try:  # the folder is this search's alone from here on: a second search with this name gets its own
        lock = claim_folder(space, " ".join(["mtbert-search", *map(shlex.quote, argv_of(args))]))
    except SearchError as e:
        return bad_input(e)
    with lock:
        if experiment_dir(space) != taken:
            space.notes.append(f"{taken} holds another search (continue it with '{resume_command(taken)}'); "
                               f"this one goes to {experiment_dir(space)}")  # fmt: skip
        if lock.taken_over:
            space.notes.append(lock.taken_over)
        if (args.address or os.environ.get("RAY_ADDRESS")) and not space.tune.max_failures:
            space.notes.append("tune.max_failures is 0: on a cluster, a trial on a node that is lost ends as "
                               "ERROR; set it to 1 or more to continue such trials from their last checkpoints "
                               "elsewhere")  # fmt: skip
        for note in space.notes:
            print(note, file=out)
        print(watch_line(experiment_dir(space)), file=out, flush=True)
        launch = Launch(args.space, dict(overrides), space.profile, args.smoke)  # resume loads the space the same way
        run = functools.partial(run_search, space, launch, text, setup, data, address=args.address)
        return run_and_report(run, space, args.json, experiment_dir(space))


def argv_of(args: argparse.Namespace) -> list[str]:
    """The command line the search was started with (for the lock's holder)."""
    argv = getattr(args, "argv", None)
    return sys.argv[1:] if argv is None else argv


def resume_command(experiment: Path) -> str:
    return f"mtbert-search resume {named(experiment)}"


def report_main(args: argparse.Namespace) -> int:
    from search.report import write_report

    try:
        page = write_report(args.dir, args.out, log=lambda line: print(line, file=sys.stderr))
    except SearchError as e:
        return bad_input(e)
    print(page)
    return 0


def dashboard_main(args: argparse.Namespace) -> int:
    from search.engine.study import serve_dashboard

    try:
        serve_dashboard(Path(args.dir).expanduser().resolve(), args.port, log=lambda line: print(line, flush=True))
    except SearchError as e:
        return bad_input(e)
    return 0


def sync_main(args: argparse.Namespace) -> int:
    """The working copy is up to date (``main`` pulled it): where it is, and what reads it."""
    folder = shlex.quote(args.dir)
    print(args.dir)
    print(f"tensorboard --logdir {folder}  # the trials' curves; run 'mtbert-search sync' again for newer ones",
          file=sys.stderr)  # fmt: skip
    return 0


def cluster_main(args: argparse.Namespace) -> int:
    from search.cluster import check

    found = check(args.file)
    for line in found:
        print(line, file=sys.stderr)
    if found:
        return EXIT_BAD_INPUT
    print(f"{args.file}: safe")
    return 0


def resume_main(args: argparse.Namespace) -> int:
    from mtbert import DataError
    from mtbert.data.course import resolve_data_dir
    from search.launch import check_address, check_local_gpus, lock_search, resume_search, saved_space

    experiment = Path(args.dir).expanduser().resolve()
    try:
        space, launch = saved_space(experiment)
        resolve_data_dir(space.base.data.dir)  # the data the trials read is still there
        check_address(args.address)
        check_local_gpus(space, args.address)
        lock = lock_search(experiment, resume_command(experiment))
    except (SearchError, SpaceError, DataError) as e:
        return bad_input(e)
    if lock.taken_over:
        print(lock.taken_over, file=sys.stderr if args.json else sys.stdout)
    print(watch_line(experiment), file=sys.stderr if args.json else sys.stdout, flush=True)
    run = functools.partial(resume_search, experiment, space, launch, address=args.address)
    with lock:
        return run_and_report(run, space, args.json, experiment)


def run_and_report(run: Any, space: Any, as_json: bool, experiment: Path) -> int:
    """Run the search (``run(log=...)``; its progress on stdout, or stderr with --json), then print
    the best trial; after Ctrl-C, how far it got and how to go on (exit 130)."""
    from mtbert import DataError
    from mtbert.evaluate import strict_json
    from search import storage
    from search.engine.trackers import log_final
    from search.results import load_results
    from search.summary import summarize

    out = sys.stderr if as_json else sys.stdout

    def log(line: str) -> None:
        print(line, file=out, flush=True)

    try:
        # Ray's progress table prints to stdout; with --json stdout holds the result alone.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            results = load_results(run(log=log))
            summary = summarize(results, space, log=log)
            log_final(Path(summary["experiment"]), summary, space, results, log=log)  # tune.trackers: MLflow, W&B
            storage.push(experiment)  # at a URI: the summary and final scores too
    except (SearchError, DataError) as e:
        return bad_input(e)
    except KeyboardInterrupt as e:  # SearchInterrupted: stopped and saved; else stopped at once
        with contextlib.suppress(SearchError):
            storage.push(experiment)
        return report_interrupted(space, as_json, experiment, saved=isinstance(e, SearchInterrupted))
    if as_json:
        print(strict_json({**summary, "notes": list(space.notes)}))
    else:
        print_summary(summary)
    best = summary.get("best")
    if best is None:
        print(f"mtbert-search: no trial reported a result; see the trials' error.txt under {summary['experiment']}",
              file=sys.stderr)  # fmt: skip
        return 1
    note_quora(space, best)
    for line in next_steps(Path(summary["experiment"])):
        log(line)
    return 0


def report_interrupted(space: Any, as_json: bool, experiment: Path, saved: bool) -> int:
    """What an interrupted search did: its trials by state, the best so far labelled provisional
    (no summary.json: that is written when a search ends), and the command that continues it."""
    from mtbert.evaluate import strict_json
    from search.results import load_results

    try:
        results = load_results(experiment)
    except SearchError:  # stopped before Tune saved anything
        results = None
    trials = results.trials if results else []
    states: dict[str, int] = {}
    for t in trials:
        states[t.status] = states.get(t.status, 0) + 1
    finished = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
    total = max(space.tune.num_samples, len(trials))
    midway, waiting = len(trials) - finished, total - len(trials)
    best = None
    ranked = results.ranked() if results else []
    if ranked:
        b = ranked[0]
        best = {"trial_id": b.trial_id, "status": b.status, results.metric: b.best.get(results.metric),
                "iteration": b.best.get("training_iteration"), "provisional": True}  # fmt: skip
    how = ("the trials were stopped and the search's state saved" if saved else
           "stopped at once; the search goes on from the state it last saved")  # fmt: skip
    lines = [f"mtbert-search: interrupted: {how}",
             f"{finished} of {total} trial(s) finished, {midway} stopped before their end, {waiting} not started"
             + (f" (Tune: {', '.join(f'{n} {s}' for s, n in sorted(states.items()))})" if states else "")]  # fmt: skip
    if best is not None:
        lines.append(f"best so far (provisional: {total - finished} trial(s) not finished): trial {best['trial_id']} "
                     f"{results.metric} {best[results.metric]:.4f} at evaluation {best['iteration']}")  # fmt: skip
    lines.append(f"continue with: {resume_command(experiment)}")
    for line in lines:
        print(line, file=sys.stderr)
    if as_json:
        print(strict_json({"interrupted": True, "experiment": str(experiment), "trials": len(trials),
                           "num_samples": total, "finished": finished, "trial_states": states, "best": None,
                           "best_so_far": best, "resume": resume_command(experiment),
                           "notes": list(space.notes)}))  # fmt: skip
    return EXIT_INTERRUPTED


def note_quora(space: Any, best: dict[str, Any]) -> None:
    from mtbert import DEFAULT_ENCODER
    from mtbert.tasks import QUORA_NOTE

    encoder = best["params"].get("model.encoder", space.base.model.encoder)
    if encoder == DEFAULT_ENCODER:
        print(QUORA_NOTE, file=sys.stderr)


def print_summary(summary: dict[str, Any]) -> None:
    best = summary["best"]
    states = ", ".join(f"{n} {s}" for s, n in sorted(summary["trial_states"].items()))
    print(f"\n{summary['trials']} trial(s): {states}")
    for trial_id, error in summary.get("errors", {}).items():
        print(f"trial {trial_id} failed: {error}")
    for trial_id, reason in summary.get("stopped", {}).items():
        print(f"trial {trial_id} stopped itself: {reason}")
    if best is None:
        return
    score = best["selection"].get(summary["metric"], float("nan"))
    print(f"best trial {best['trial_id']}: {summary['metric']} {score:.4f} at step {best['step']} "
          f"(evaluation {best['iteration']})")  # fmt: skip
    for key, value in best["params"].items():
        print(f"  {key} = {value}")
    full = best["full_dev"]
    half = summary.get("report_half") or {}
    report = half.get("report")
    print(f"{'task':14}{'metric':32}{'selection':>11}" + (f"{'full dev':>10}" if full else "")
          + (f"{'report half':>13}" if report else ""))  # fmt: skip
    for task, metric, key in TASK_ROWS:
        line = f"{task:14}{metric:32}{best['selection'].get(key, float('nan')):11.4f}"
        print(line + (f"{full[key]:10.4f}" if full else "") + (f"{report[key]:13.4f}" if report else ""))
    subset = best["selection_dev_examples"]
    whole = "the whole selection half of each dev set" if summary.get("dev_holdout") else "the whole dev sets"
    print(
        f"(selection: the evaluations ASHA and Optuna compared, on {subset or 'all'} dev examples per task"
        + (f"; full dev: the best checkpoint on {whole}" if full else "")
        + (
            f"; report half: {'/'.join(map(str, half['report_examples'].values()))} sst/para/sts dev rows held out "
            f"by data.dev_holdout {summary['dev_holdout']:g}, scored once, after the final pick"
            if report
            else ""
        )
        + ")"
    )
    print_final_pick(summary)
    print(f"config: {best['config']}")
    print(f"checkpoint: {best['checkpoint']}")
    print(f"results: {summary['experiment']} (tensorboard --logdir {summary['experiment']})")


def print_final_pick(summary: dict[str, Any]) -> None:
    """The finalists scored on the full dev sets, in the final order, with both scores (``search.summary``)."""
    finalists, metric = summary.get("finalists") or [], summary["metric"]
    if len(finalists) < 2:
        return
    rows = summary.get("selection_dev_examples")

    def score(scores: dict[str, Any] | None) -> str:
        value = (scores or {}).get(metric)
        return "-" if value is None else f"{value:.4f}"

    print(f"final pick: {summary.get('rank_rule')}")
    print(f"  {'trial':12}{'selection (' + (f'{rows} dev rows/task' if rows else 'all dev rows') + ')':>32}"
          f"{'full dev':>10}")  # fmt: skip
    for f in finalists:
        selection = f"{score(f['selection'])} (#{f['selection_rank']})"
        print(f"  {f['trial_id']:12}{selection:>32}{score(f['full_dev']):>10}")


def export_main(args: argparse.Namespace) -> int:
    from search.export import export

    try:
        space = _space_or_none(args.dir)
        written = export(args.dir, args.out, args.top_k, space)
    except SearchError as e:
        return bad_input(e)
    for path in written:
        print(path)
    if len(written) < args.top_k:
        print(f"only {len(written)} trial(s) had a checkpoint to export", file=sys.stderr)
    return 0


def status_main(args: argparse.Namespace) -> int:
    from search.results import load_results
    from search.status import render, table

    try:
        space = _space_or_none(args.dir)
        results = load_results(args.dir)
    except SearchError as e:
        return bad_input(e)
    except OSError as e:  # a folder it may not read, say
        return bad_input(f"{args.dir}: {e.strerror or e}")
    sys.stdout.write(render(table(results, space), args.format))
    return 0


def ensemble_main(args: argparse.Namespace) -> int:
    from mtbert import CheckpointError
    from mtbert.evaluate import strict_json
    from search.ensemble import build, plan, print_report
    from search.launch import check_address, lock_search

    try:  # everything that can be wrong with the input is found before Ray starts or a file is written
        request = plan(args.dir, args.out, args.top_k, args.retrain_seeds, {"sst": args.sst, "para": args.para},
                       args.max_rounds)  # fmt: skip
        # retraining is a Tune run like the search's: not while another command writes into the search
        command = (f"mtbert-search ensemble {shlex.quote(str(request.experiment))} --retrain-seeds "
                   f"{args.retrain_seeds} --out {shlex.quote(str(request.out))}")  # fmt: skip
        if args.retrain_seeds:
            check_address(args.address)
        lock = lock_search(request.experiment, command, read_only_ok=True) if args.retrain_seeds \
            else contextlib.nullcontext()  # fmt: skip
    except SearchError as e:
        return bad_input(e)
    out = sys.stderr if args.json else sys.stdout

    def log(line: str) -> None:
        print(line, file=out, flush=True)

    try:
        with lock, contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            report = build(request, address=args.address, log=log)
    except SearchError as e:  # --address with no Ray cluster there
        return bad_input(e)
    except (RuntimeError, CheckpointError) as e:
        print(f"mtbert-search ensemble: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mtbert-search ensemble: interrupted; the same command continues: the members' outputs in "
              f"{request.out / 'members'} and the retraining in {request.out / 'retrain'} are reused",
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    if args.json:
        print(strict_json(report))
    else:
        print_report(report)
    return 0


def _space_or_none(directory: str) -> Any:
    """The search's space, to show sampled settings with their real values; None if it no longer loads."""
    from search.launch import saved_space

    try:
        return saved_space(directory)[0]
    except SpaceError as e:
        print(f"mtbert-search: note: the saved space does not load ({e}); settings shown as sampled", file=sys.stderr)
        return None


if __name__ == "__main__":
    sys.exit(main())
