"""``mtbert-search ensemble``: the best trials of a search combined into one predictor per task.

    OUT/
        report.json                every member's and the ensemble's full-dev scores, the weights
                                   (``mtbert.ensemble.read_ensemble`` reads it: ``mtbert-train predict OUT``)
        README.md                  the model card (``search.card``)
        sst-dev-output.csv, sst-test-output.csv, para-..., sts-...
                                   the ensemble's predictions in the course's submission format
        members/<name>/            one member's raw outputs on the full dev and test sets:
                                   outputs.safetensors (``<task>.<split>`` and ``<task>.dev.gold``)
                                   and member.json (ids, source checkpoint); a re-run reuses them
        retrain/                   with --retrain-seeds: Ray Tune's folder of the retrained trials

Members are the top K trials in the search's final order (``SearchResults.ranked``: the finalists
by their full-dev score, then the rest by the selection score), each its best checkpoint (named by its
trial id). With ``--retrain-seeds S`` each of their configs is also trained again to its full budget
(trials ASHA stopped never reached it) with S new seeds (``<trial id>-seed<n>``): one Ray Tune
trial per (trial, seed), through ``search.engine.retrain`` (``run_trial``) with the search's resources and
concurrency, each member its best checkpoint by the search metric. The originals stay candidates.

Every member predicts the full dev sets and the test sets; ``mtbert.ensemble.greedy_select`` then
picks members and weights per task on dev. A missing test file (the shared data has no Quora test
set) is skipped with a message, as ``mtbert-train``'s final evaluation does.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtbert.ensemble import REPORT_FILE as ENSEMBLE_REPORT
from search import storage
from search.card import CARD_FILE, ensemble_card
from search.engine.trainable import TrialSetup, fixed_settings
from search.errors import SearchError, SpaceError
from search.export import check_out_folder
from search.launch import saved_space
from search.results import TrialRecord, load_results

REPORT_FILE = ENSEMBLE_REPORT  # what mtbert.ensemble.read_ensemble reads back (mtbert-train predict)
MEMBERS_DIR = "members"
RETRAIN_DIR = "retrain"
RETRAIN_FILE = "retrain.json"  # in RETRAIN_DIR: which trials and seeds it trains
OUTPUTS_FILE = "outputs.safetensors"
MEMBER_FILE = "member.json"
SPLITS = ("dev", "test")
DEV_NOTE = (
    "Members and weights are chosen on the full dev sets (sst accuracy, para accuracy, sts Pearson r), so by "
    "construction the ensemble's dev score is never below its best member's, on each of those and overall; "
    "for the same reason its dev scores are optimistic: the test sets, which took no part in the choice, "
    "are the fair measure."
)

Log = Callable[[str], None]


@dataclass
class Plan:
    """A checked request: what ``build`` will do."""

    experiment: Path
    out: Path
    trials: list[TrialRecord]  # the top K, best first
    seeds: int
    combiners: dict[str, str]
    max_rounds: int
    metric: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Member:
    name: str
    trial_id: str
    rank: int  # the trial's rank in the search
    search_score: float  # the best score on the search metric (selection subset): the trial's or the retrained run's
    seed: int | None = None  # a retrained member's train.seed; None for the search's own checkpoint
    checkpoint: Path | None = None


@dataclass
class Outputs:
    """One member's raw outputs (``mtbert.ensemble``'s shapes) and ids per ``<task>.<split>``."""

    values: dict[str, torch.Tensor]
    ids: dict[str, list[str]]
    gold: dict[str, torch.Tensor]  # task -> dev labels
    missing: dict[str, str]  # <task>.<split> -> why it has no predictions
    encoder: str | None = None  # the member's model.encoder


# ---- the request ---------------------------------------------------------------------------------


def plan(experiment: str | Path, out: str | Path, top_k: int = 3, seeds: int = 0,
         combiners: dict[str, str] | None = None, max_rounds: int | None = None) -> Plan:  # fmt: skip
    """Check everything about a request before any work starts; ``SearchError`` says what is wrong."""
    from mtbert.ensemble import DEFAULT_ROUNDS, DEFAULT_RULES, RULES

    if top_k < 1:
        raise SearchError(f"--top-k is {top_k}, but must be >= 1")
    if seeds < 0:
        raise SearchError(f"--retrain-seeds is {seeds}, but must be >= 0 (0: no retraining)")
    max_rounds = DEFAULT_ROUNDS if max_rounds is None else max_rounds
    if max_rounds < 1:
        raise SearchError(f"--max-rounds is {max_rounds}, but must be >= 1")
    combiners = {**DEFAULT_RULES, **(combiners or {})}
    for task, name in combiners.items():
        if name not in RULES[task]:
            raise SearchError(f"--{task} is {name!r}, but must be one of: {', '.join(RULES[task])}")
    out = Path(out).expanduser().resolve()
    check_out_folder(out, f"{REPORT_FILE}, the prediction files and {MEMBERS_DIR}/: new, or one an ensemble run "
                          "left unfinished")  # fmt: skip
    if (out / REPORT_FILE).exists():
        raise SearchError(f"{out} already holds an ensemble ({REPORT_FILE}); choose another --out, or delete "
                          f"{out / REPORT_FILE} to combine again (the member outputs in {out / MEMBERS_DIR} "
                          "are reused)")  # fmt: skip
    results = load_results(experiment)
    ranked = results.ranked()
    if not ranked:
        raise SearchError(f"{results.experiment} has no trial with a checkpoint yet; an ensemble needs at least one")
    notes = []
    if len(ranked) < top_k:
        notes.append(f"--top-k is {top_k}, but {results.experiment} has {len(ranked)} trial(s) with a checkpoint; "
                     f"using those {len(ranked)}")  # fmt: skip
    p = Plan(results.experiment, out, ranked[:top_k], seeds, combiners, max_rounds, results.metric, notes)
    _check_members(p)
    if seeds:
        _check_retrain_folder(p)
    return p


def _check_members(p: Plan) -> None:
    """Each member's checkpoint as loading checks it (no tensor read), and the data it predicts;
    with retraining, the search's saved space that the retrained runs start from."""
    from mtbert import CheckpointError, DataError, check_checkpoint
    from mtbert.data.course import resolve_data_dir

    configs = {}
    for t in p.trials:
        try:
            configs[t.trial_id] = check_checkpoint(storage.fetch(t.checkpoint)).config
        except CheckpointError as e:
            raise SearchError(f"trial {t.trial_id}: {e}") from None
    for trial_id, config in configs.items():
        try:
            resolve_data_dir(config.data.dir)
        except DataError as e:
            raise SearchError(f"trial {trial_id} predicts the dev and test sets, but its {e}") from None
    if p.seeds:
        try:
            saved_space(p.experiment)
        except SpaceError as e:
            raise SearchError(f"--retrain-seeds trains from the search's saved space, which does not load: "
                              f"{e}") from None  # fmt: skip


def _retrain_request(p: Plan) -> dict[str, Any]:
    return {"experiment": str(p.experiment), "trials": [t.trial_id for t in p.trials], "seeds": p.seeds}


def _check_retrain_folder(p: Plan) -> None:
    path = p.out / RETRAIN_DIR / RETRAIN_FILE
    if not path.is_file():
        return
    try:
        request = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SearchError(f"{path} does not read ({e}), so what {p.out / RETRAIN_DIR} trains is unknown; "
                          "choose another --out") from None  # fmt: skip
    if request != _retrain_request(p):
        raise SearchError(f"{p.out / RETRAIN_DIR} holds a retraining of other trials or seeds "
                          f"({path.read_text().strip()}); choose another --out")  # fmt: skip


def members_of(p: Plan) -> list[Member]:
    """The search's checkpoints, then each trial's retrained seeds (seeds after the trial's own)."""
    out = [Member(t.trial_id, t.trial_id, rank, t.best[p.metric], checkpoint=t.checkpoint)
           for rank, t in enumerate(p.trials, 1)]  # fmt: skip
    for rank, t in enumerate(p.trials, 1):
        base = _trial_seed(t)
        for seed in range(base + 1, base + 1 + p.seeds):
            out.append(Member(f"{t.trial_id}-seed{seed}", t.trial_id, rank, t.best[p.metric], seed=seed))
    return out


def _trial_seed(trial: TrialRecord) -> int:
    from mtbert import load_config
    from mtbert.train.checkpoint import CONFIG_FILE

    return load_config(storage.fetch(trial.checkpoint) / CONFIG_FILE).train.seed


# ---- the whole command ---------------------------------------------------------------------------


def build(p: Plan, *, address: str | None = None, log: Log = print) -> dict[str, Any]:
    """Retrain (if asked), predict every member (or read its cached outputs), select, write the
    prediction files and ``report.json``; returns the report."""
    for note in p.notes:
        log(note)
    timings: dict[str, float] = {}
    members = members_of(p)
    cached = {m.name: read_outputs(p.out / MEMBERS_DIR / m.name, p.experiment, m) for m in members}
    failed: dict[str, str] = {}
    todo = [m for m in members if m.seed is not None and cached[m.name] is None]
    if todo:
        start = time.perf_counter()
        checkpoints, failed = retrain(p, address=address, log=log)
        timings["retrain_s"] = time.perf_counter() - start
        for m in todo:
            m.checkpoint, m.search_score = checkpoints.get(m.name, (None, m.search_score))
    start = time.perf_counter()
    outputs: dict[str, Outputs] = {}
    for m in members:
        if cached[m.name] is not None:
            log(f"member {m.name}: outputs read from {p.out / MEMBERS_DIR / m.name}")
            outputs[m.name] = cached[m.name]
        elif m.checkpoint is not None:
            began = time.perf_counter()
            outputs[m.name] = predict_member(m, p.experiment, p.out / MEMBERS_DIR / m.name)
            log(f"member {m.name}: predicted the full dev and test sets in {time.perf_counter() - began:.1f} s")
    timings["predict_s"] = time.perf_counter() - start
    kept = [m for m in members if m.name in outputs]
    for why in dict.fromkeys(w for o in outputs.values() for w in o.missing.values()):
        log(f"skipped: {why}")
    start = time.perf_counter()
    report = combine_members(p, kept, [outputs[m.name] for m in kept])
    timings["select_s"] = time.perf_counter() - start
    report["failed"] = failed
    report["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    encoders = [o.encoder for o in outputs.values() if o.encoder]
    (p.out / CARD_FILE).write_text(ensemble_card(p.out, report, encoders), encoding="utf-8")
    (p.out / REPORT_FILE).write_text(json.dumps(report, indent=2))  # last: it marks the ensemble done
    return report


# ---- retraining through Ray Tune -----------------------------------------------------------------


def retrain(p: Plan, *, address: str | None = None,
            log: Log = print) -> tuple[dict[str, tuple[Path, float]], dict[str, str]]:  # fmt: skip
    """Train every (trial, seed) of the plan as a Ray Tune grid in ``OUT/retrain`` (continuing an
    interrupted one); returns ``{member name: (best checkpoint, its score)}`` and ``{member name: error}``."""
    from search.engine.retrain import retrain_grid

    space, launch = saved_space(p.experiment)
    setup = TrialSetup(space, launch.fixed or fixed_settings(space))
    t = space.tune
    params = {trial.trial_id: trial.params for trial in p.trials}
    seeds = {trial.trial_id: _trial_seed(trial) for trial in p.trials}
    offsets = list(range(1, p.seeds + 1))
    folder = p.out / RETRAIN_DIR
    grid = retrain_grid(setup, params, seeds, offsets, folder, _retrain_request(p), RETRAIN_FILE, address=address,
                        log=log)  # fmt: skip
    checkpoints, failed = {}, {}
    for run in grid:
        name = f"{run.trial_id}-seed{seeds[run.trial_id] + run.seed_offset}"
        scored = [(c, m[t.metric]) for c, m in run.checkpoints if m.get(t.metric) is not None]
        if run.error is not None or not scored:
            failed[name] = (run.error if run.error is not None else "no checkpoint").splitlines()[0]
            log(f"member {name}: retraining failed ({failed[name]}; see {run.path}); left out")
            continue
        best, score = (max if t.mode == "max" else min)(scored, key=lambda cs: cs[1])
        checkpoints[name] = (best, float(score))
    return checkpoints, failed


# ---- one member's outputs ------------------------------------------------------------------------


def predict_member(member: Member, experiment: Path, folder: Path) -> Outputs:
    """A member's outputs on the full dev and test sets, written to ``folder`` (atomically: a
    temporary sibling, then a rename) and returned."""
    from mtbert import DataError, load_checkpoint, predict_outputs, resolve_device
    from mtbert.data.course import resolve_data_dir
    from mtbert.data.prepare import load_split
    from mtbert.tasks import TASKS

    loaded = load_checkpoint(storage.fetch(member.checkpoint))
    model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
    device = resolve_device(config.train.device)
    model.to(device)
    bf16 = config.train.bf16 and device.type == "cuda"
    data_dir = resolve_data_dir(config.data.dir)
    outputs = Outputs({}, {}, {}, {}, config.model.encoder)
    for task in TASKS:
        for split in SPLITS:
            key = f"{task}.{split}"
            try:
                ds = load_split(config, tokenizer, task, split, data_dir=data_dir)
            except DataError as e:  # e.g. no Quora test file in this data folder
                outputs.missing[key] = f"no {task} {split} predictions: {e}"
                continue
            pred = predict_outputs(model, task, ds, device, bf16)
            outputs.values[key] = (pred.label if task == "sts" else pred.probs).float()
            outputs.ids[key] = pred.ids
            if split == "dev":
                outputs.gold[task] = pred.gold
    write_outputs(folder, outputs, {
        "name": member.name, "trial_id": member.trial_id, "seed": member.seed, "experiment": str(experiment),
        "checkpoint": str(member.checkpoint), "search_score": member.search_score, "data_dir": str(data_dir),
        "encoder": config.model.encoder,
    })  # fmt: skip
    return outputs


def write_outputs(folder: Path, outputs: Outputs, info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = {**outputs.values, **{f"{task}.dev.gold": g for task, g in outputs.gold.items()}}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / OUTPUTS_FILE))
    (tmp / MEMBER_FILE).write_text(json.dumps({**info, "missing": outputs.missing, "ids": outputs.ids}))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def read_outputs(folder: Path, experiment: Path, member: Member) -> Outputs | None:
    """A member's cached outputs, or None when there are none for this member of this search (a
    search's own checkpoint must also be the one the outputs came from)."""
    from safetensors.torch import load_file

    if not (folder / MEMBER_FILE).is_file() or not (folder / OUTPUTS_FILE).is_file():
        return None
    try:  # written atomically, so a file that does not read was spoilt since: predict again
        info = json.loads((folder / MEMBER_FILE).read_text())
        tensors = load_file(str(folder / OUTPUTS_FILE))
    except Exception:  # JSON, UTF-8, safetensors: each has its own error type
        return None
    if not isinstance(info, dict) or not isinstance(info.get("ids"), dict):
        return None
    if info.get("experiment") != str(experiment) or info.get("seed") != member.seed:
        return None
    if member.checkpoint is not None and info.get("checkpoint") != str(member.checkpoint):
        return None
    gold = {k.removesuffix(".dev.gold"): v for k, v in tensors.items() if k.endswith(".gold")}
    values = {k: v for k, v in tensors.items() if not k.endswith(".gold")}
    if member.seed is not None:  # a retrained member: its checkpoint and score as they were
        member.checkpoint = Path(info["checkpoint"])
        member.search_score = info.get("search_score", member.search_score)
    return Outputs(values, info["ids"], gold, info.get("missing", {}), info.get("encoder"))


# ---- combining -----------------------------------------------------------------------------------


def combine_members(p: Plan, members: list[Member], outputs: list[Outputs]) -> dict[str, Any]:
    """Select per task on dev, score members and the ensemble on the full dev sets, write the
    ensemble's prediction files into ``p.out``; returns the report."""
    from mtbert import DEFAULT_ENCODER
    from mtbert.ensemble import combine, greedy_select, labels
    from mtbert.evaluate import Scores, write_submission
    from mtbert.tasks import QUORA_NOTE, TASKS

    if not members:
        raise RuntimeError("no member has outputs to combine (every retraining failed, and no checkpoint was given)")
    dev_pairs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {m.name: [] for m in members}
    selections, ensemble_dev, files = {}, {}, {}
    written: dict[str, dict[str, tuple[list[str], torch.Tensor]]] = {split: {} for split in SPLITS}
    for task in TASKS:
        gold = outputs[0].gold[task]
        for split in SPLITS:
            _check_aligned(members, outputs, f"{task}.{split}")
        dev = torch.stack([o.values[f"{task}.dev"] for o in outputs])  # (M, N, ...)
        for m, o in zip(members, outputs):
            dev_pairs[m.name].append((labels(task, o.values[f"{task}.dev"]), gold))
        name = p.combiners[task]
        selection = greedy_select(task, dev, gold, name, p.max_rounds)
        selections[task] = selection
        counts = torch.tensor(selection.counts, dtype=torch.float64)
        ensemble_dev[task] = (combine(task, name, dev, counts), gold)
        written["dev"][task] = (outputs[0].ids[f"{task}.dev"], ensemble_dev[task][0])
        if f"{task}.test" in outputs[0].values:
            test = torch.stack([o.values[f"{task}.test"] for o in outputs])
            written["test"][task] = (outputs[0].ids[f"{task}.test"], combine(task, name, test, counts))
    p.out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        files[split] = {t: str(path) for t, path in write_submission(p.out, split, written[split]).items()}
    member_rows = []
    for m in members:
        pairs = dict(zip(TASKS, dev_pairs[m.name]))
        member_rows.append({
            "name": m.name, "trial_id": m.trial_id, "rank": m.rank, "seed": m.seed, "search_score": m.search_score,
            "checkpoint": str(m.checkpoint), "dev": Scores.compute(**pairs).as_dict(),
        })  # fmt: skip
    best = max(member_rows, key=lambda r: r["dev"]["overall"])
    notes = [*p.notes, DEV_NOTE]
    if any(o.encoder == DEFAULT_ENCODER for o in outputs):
        notes.append(QUORA_NOTE)
    return {
        "experiment": str(p.experiment), "metric": p.metric, "top_k": len(p.trials), "retrain_seeds": p.seeds,
        "combiners": p.combiners, "max_rounds": p.max_rounds,
        "members": member_rows,
        "best_member": {"name": best["name"], "dev": best["dev"]},
        "ensemble": {
            "dev": Scores.compute(**ensemble_dev).as_dict(),
            "weights": {t: {m.name: round(w, 6) for m, w in zip(members, s.weights) if w}
                        for t, s in selections.items()},
            "counts": {t: {m.name: c for m, c in zip(members, s.counts) if c} for t, s in selections.items()},
            "selection_history": {t: list(s.history) for t, s in selections.items()},
        },
        "files": files,
        "missing": sorted({w for o in outputs for w in o.missing.values()}),
        "notes": notes,
    }  # fmt: skip


def _check_aligned(members: list[Member], outputs: list[Outputs], key: str) -> None:
    have = [key in o.ids for o in outputs]
    if any(have) and not all(have):
        names = ", ".join(m.name for m, h in zip(members, have) if not h)
        raise RuntimeError(f"members {names} have no {key} predictions, but others have: were they made on "
                           "another data folder? delete their folders under members/ to predict again")  # fmt: skip
    for m, o in zip(members[1:], outputs[1:]):
        if key in o.ids and o.ids[key] != outputs[0].ids[key]:
            raise RuntimeError(f"member {m.name}'s {key} ids differ from member {members[0].name}'s: were they "
                               "made on another data folder? delete their folders under members/ to predict "
                               "again")  # fmt: skip


# ---- the table -----------------------------------------------------------------------------------


COLUMNS = (("sst_acc", "sst acc"), ("para_acc", "para acc"), ("para_f1", "para F1"), ("sts_pearson", "sts r"),
           ("sts_spearman", "sts rho"), ("overall", "overall"))  # fmt: skip


def print_report(report: dict[str, Any], out: Any = sys.stdout) -> None:
    def line(text: str) -> None:
        print(text, file=out)

    width = max(len("ensemble"), *(len(m["name"]) for m in report["members"])) + 2
    seeds = f", {report['retrain_seeds']} retrained seed(s) each" if report["retrain_seeds"] else ""
    line(f"full dev sets: {len(report['members'])} member(s), the top {report['top_k']} trial(s) of "
         f"{report['experiment']}{seeds}")  # fmt: skip
    line(f"{'member':{width}}{'rank':>5}{'search':>9}" + "".join(f"{h:>10}" for _, h in COLUMNS))
    for m in report["members"]:
        line(f"{m['name']:{width}}{m['rank']:5d}{m['search_score']:9.4f}"
             + "".join(f"{m['dev'][k]:10.4f}" for k, _ in COLUMNS))  # fmt: skip
    line(f"{'ensemble':{width}}{'':14}" + "".join(f"{report['ensemble']['dev'][k]:10.4f}" for k, _ in COLUMNS))
    line(
        f"(search: the trial's best {report['metric']} in the search, on its selection subset of the dev sets; "
        "the other columns: the full dev sets)"
    )
    for task, weights in report["ensemble"]["weights"].items():
        combiner = report["combiners"][task]
        line(f"{task} ({combiner}): " + ", ".join(f"{n} {w:.3f}" for n, w in weights.items()))
    for note in report["notes"]:
        line(note)
    for split, files in report["files"].items():
        if files:
            line(f"{split} predictions: " + ", ".join(files.values()))
