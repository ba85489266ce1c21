"""``mtbert-search report``: a search as one self-contained HTML page, readable without TensorBoard.

    OUT/index.html            header, the trials' table, every figure embedded (base64 PNG)
    OUT/learning_curves.png   the search metric per trial; ASHA's early stops marked
    OUT/task_scores.png       sst_acc, para_acc, sts_pearson of the best trials
    OUT/importance.png        Optuna's parameter importances (with enough completed trials)
    OUT/dimensions.png        the main dimensions against each trial's best metric
    OUT/gradient_conflict.png grad_cos_<a>_<b> and grad_conflict_frac (when the trials report them)
    OUT/pbt_lineage.png       PBT searches: the mutated settings of each trial over steps, exploits marked

It reads what ``status`` reads (``search.results.load_results``, the saved space and Optuna study)
plus each trial's ``result.json``, and works on a running or interrupted search: whatever is
missing (a trial with no results yet, the Optuna study, the summary) is said on the page instead.
The figures are drawn by ``search.plots``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from search.errors import SearchError, SpaceError
from search.export import check_out_folder
from search.launch import SEARCH_FILE, SUMMARY_FILE, Launch, saved_space
from search.results import SearchResults, decoded, load_results, report_words

INDEX = "index.html"
# Every figure the report can hold, in page order: file stem and section title.
FIGURES = (
    ("learning_curves", "Learning curves"),
    ("task_scores", "Per-task scores of the best trials"),
    ("importance", "Parameter importance"),
    ("dimensions", "Sampled settings against the metric"),
    ("gradient_conflict", "Gradient conflict"),
    ("pbt_lineage", "PBT lineage: the schedules it found"),
)
TOP_TRIALS = 5
GRADIENT_TRIALS = 8
SCORE_COLUMNS = ("sst_acc", "para_acc", "para_f1", "sts_pearson", "sts_spearman")


@dataclass
class Search:
    """What the report reads from a search folder; ``missing`` says what it could not."""

    experiment: Path
    launch: Launch
    results: SearchResults
    histories: dict[str, list[dict]]  # trial id -> its evaluations, in order
    space: Any = None  # search.space.file.Space, None if the saved space no longer loads
    study: Any = None  # the Optuna study, None before the searcher's state is first saved
    summary: dict | None = None
    missing: list[str] = field(default_factory=list)


@dataclass
class Section:
    name: str
    title: str
    figure: Any = None  # a matplotlib Figure, or None with ``reason``
    reason: str = ""
    caption: str = ""
    png: bytes = b""


def write_report(experiment: str | Path, out: str | Path, log: Any = print) -> Path:
    """Write the report of the search in ``experiment`` into the folder ``out``; returns OUT/index.html."""
    experiment, out = check_paths(experiment, out)
    started = time.perf_counter()
    search = read_search(experiment)
    sections = build_sections(search)
    index = out / INDEX
    try:
        out.mkdir(parents=True, exist_ok=True)
        for section in sections:
            stale = out / f"{section.name}.png"  # a figure an earlier report of this folder had
            if section.figure is None:
                stale.unlink(missing_ok=True)
                continue
            section.png = png_bytes(section.figure)
            stale.write_bytes(section.png)
            section.figure = None  # freed with the last reference; there is no pyplot figure to close
        index.write_text(render_html(search, sections))
    except OSError as e:  # a full disk, a folder made read-only meanwhile
        raise SearchError(f"could not write the report into {out}: {e}") from None
    log(f"report: {index} ({len(search.results.trials)} trial(s), "
        f"{sum(bool(s.png) for s in sections)} figure(s), {time.perf_counter() - started:.1f} s)")  # fmt: skip
    return index


def check_paths(experiment: str | Path, out: str | Path) -> tuple[Path, Path]:
    """The search folder and the report folder, or a SearchError before any work."""
    experiment = Path(experiment).expanduser().resolve()
    if not experiment.is_dir():
        raise SearchError(f"{experiment} is not a folder; give a search folder, <tune.storage_path>/<tune.name>")
    Launch.read(experiment)  # raises if the folder holds no search
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise SearchError(f"{out} is an existing file; --out takes a folder to write {INDEX} and the figures into")
    check_out_folder(out, f"{INDEX} and the figures")
    if out == experiment:
        raise SearchError(f"--out {out} is the search folder itself; give a folder of its own for the report")
    return experiment, out


# ---- reading -------------------------------------------------------------------------------------


def read_search(experiment: Path) -> Search:
    from search.engine.searcher import saved_study

    launch = Launch.read(experiment)
    missing = []
    try:
        results = load_results(experiment)
    except SearchError as e:  # the folder is a search (checked above) that has no Tune state yet
        results = SearchResults(experiment, launch.metric, launch.mode, [])
        missing.append(f"No trial results: {e}.")
    space = None
    try:
        space = saved_space(experiment)[0]
    except (SpaceError, SearchError) as e:
        missing.append(f"The saved space does not load ({e}); settings are shown as Optuna sampled them.")
    study = saved_study(experiment)
    if study is None:
        missing.append("No Optuna study is saved yet: Optuna states and parameter importance are unavailable.")
    summary = read_summary(experiment / SUMMARY_FILE, missing)
    histories = {t.trial_id: read_history(t.path) for t in results.trials}
    waiting = [t.trial_id for t in results.trials if not histories[t.trial_id]]
    if waiting:
        missing.append(f"{len(waiting)} trial(s) have reported no results yet: {', '.join(waiting)}.")
    running = [t.trial_id for t in results.trials if t.status in ("RUNNING", "PENDING", "PAUSED")]
    if summary is None and not (experiment / SUMMARY_FILE).is_file():
        missing.append(
            (f"The search is still running or was interrupted ({len(running)} trial(s) unfinished); this report "
             "shows the results so far." if running else
             "There is no summary.json: the search has not finished or was interrupted.")
            + f" 'mtbert-search resume {experiment}' continues an interrupted search."
        )  # fmt: skip
    return Search(experiment, launch, results, histories, space, study, summary, missing)


def read_summary(path: Path, missing: list[str]) -> dict | None:
    """The search's summary.json, or None (and a line in ``missing`` if it is there but does not read)."""
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        missing.append(f"{path.name} does not read ({e}); the search's summary is left out.")
        return None
    if not isinstance(summary, dict):
        missing.append(f"{path.name} holds a {type(summary).__name__}, not the search's summary; it is left out.")
        return None
    return summary


def read_history(trial_dir: Path) -> list[dict]:
    """A trial's evaluations from its ``result.json`` (one JSON object a line), in order; a result
    repeated by a resumed trial counts once (the later one)."""
    path = Path(trial_dir) / "result.json"
    if not path.is_file():
        return []
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed trial
            continue
        if isinstance(row, dict) and row.get("training_iteration") is not None:
            rows[int(row["training_iteration"])] = row
    return [rows[k] for k in sorted(rows)]


def decoded_params(search: Search, params: dict[str, Any]) -> dict[str, Any]:
    return decoded(search.space, params)


# ---- figures -------------------------------------------------------------------------------------


def build_sections(search: Search) -> list[Section]:
    from search import plots
    from search.engine.searcher import param_importances

    results, histories, max_t = search.results, search.histories, search.launch.max_t
    titles = dict(FIGURES)
    metric = plots.label(results.metric)
    sections = [
        _section("learning_curves", titles, plots.learning_curves(results, histories, max_t),
                 f"{metric} on the dev selection subset after each evaluation, one line per trial (best first in "
                 f"the legend). ASHA compares trials at the same evaluation and stops the weaker ones; a cross marks "
                 f"a trial stopped before the budget of max_t = {max_t} evaluations (Optuna: PRUNED)."),
        _section("task_scores", titles, plots.task_curves(results, histories, TOP_TRIALS),
                 "The per-task scores behind the metric, for the best trials."),
    ]  # fmt: skip
    importances = param_importances(search.study)
    if isinstance(importances, str):
        sections.append(Section("importance", titles["importance"], reason=importances))
        order = None
    else:
        completed = sum(t.state == "COMPLETE" for t in results.trials)
        sections.append(_section(
            "importance", titles, plots.importance(importances, completed),
            "How much each dimension decides whether a trial lands among the best (Optuna's default evaluator, "
            "PED-ANOVA, on the completed trials' final values). Conditional dimensions count only where active; "
            "with a few dozen trials, read it as a hint.",
        ))  # fmt: skip
        order = list(dict.fromkeys(name.split("#")[0] for name in importances))
    values = {t.trial_id: decoded_params(search, t.params) for t in results.trials}
    kinds = {d.key: d.kind for d in search.space.dimensions} if search.space is not None else {}
    sections.append(_section(
        "dimensions", titles, plots.dimensions(results, values, max_t, kinds, order),
        f"Each trial's sampled value of the main dimensions ({'by importance' if order else 'in the space order'}, "
        f"at most {plots.MAX_DIMENSIONS}) against its best {metric}. A stopped trial's best comes from fewer "
        "evaluations than a completed one's.",
    ))  # fmt: skip
    sections.append(_section(
        "gradient_conflict", titles, plots.gradient_curves(results, histories, GRADIENT_TRIALS),
        f"The best trials that record them (at most {GRADIENT_TRIALS}): the cosine between two tasks' gradients on "
        "the shared encoder (below 0 they conflict: the update that helps one hurts the other; PCGrad projects "
        "such conflicts away), and the fraction of task pairs in conflict, at the last diagnosed step before each "
        "evaluation.",
    ))  # fmt: skip
    lineage = pbt_section(search, values, kinds, titles)
    if lineage is not None:
        sections.append(lineage)
    return sections


def pbt_section(search: Search, values: dict[str, dict[str, Any]], kinds: dict[str, str],
                titles: dict[str, str]) -> Section | None:  # fmt: skip
    """The lineage figure of a PBT search (None for other schedulers): the mutated settings of the
    saved space, else those the trials' lineage names."""
    from search import plots

    scheduler = getattr(search.space.tune, "scheduler", None) if search.space is not None else None
    recorded = list(dict.fromkeys(k for t in search.results.trials for e in t.lineage for k in e.get("mutated", [])))
    if (scheduler is None or scheduler.kind != "pbt") and not recorded:
        return None
    keys = list(scheduler.mutations or ()) if scheduler is not None and scheduler.kind == "pbt" else recorded
    return _section(
        "pbt_lineage", titles, plots.pbt_lineage(search.results, values, keys, kinds),
        "Population Based Training: the value of each mutated setting each trial trained with, over global "
        "training steps (a line per trial). When a trial exploited another (lineage.json in its folder; "
        "'mtbert-search status' lists them), it went on from the donor's checkpoint at the donor's step with the "
        "donor's settings, mutated: the arrow goes from the donor's value to the recipient's new one, labelled "
        "donor→recipient, and the recipient's line goes on from there. Read along the best trial's line for the "
        "schedule PBT found.",
    )  # fmt: skip


def _section(name: str, titles: dict[str, str], built: Any, caption: str) -> Section:
    if isinstance(built, str):
        return Section(name, titles[name], reason=built)
    return Section(name, titles[name], figure=built, caption=caption)


def png_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# ---- the page ------------------------------------------------------------------------------------


def subset_words(results: SearchResults) -> str:
    """The selection subset's size, in words ("200 dev rows per task"), as far as it is known."""
    rows = results.selection_dev_examples
    if rows:
        return f"{rows} dev rows per task"
    return "the whole dev sets" if results.rank_rule else "tune.eval_subset dev rows per task"


def table_rows(search: Search) -> tuple[list[str], list[tuple[str, list[Any]]]]:
    """The table's columns and, best first, (row class, cells) per trial."""
    from search import plots

    results, max_t = search.results, search.launch.max_t
    trials = plots.ordered(results)
    params = {t.trial_id: decoded_params(search, t.params) for t in trials}
    keys = list(dict.fromkeys(k for t in trials for k in params[t.trial_id]))
    full = any(results.finalist(t.trial_id) for t in trials)  # the final pick's full-dev scores, once it ended
    columns = ["#", "trial", "Tune status", "Optuna state", "evaluations", "ended", *keys, results.metric,
               *(k for k in SCORE_COLUMNS if k != results.metric), "best at step",
               *([f"{results.metric}, full dev"] if full else [])]  # fmt: skip
    rows = []
    for rank, t in enumerate(trials, 1):
        end = plots.ending(t, max_t)
        best = t.best or {}
        ended = plots.ENDINGS[end]
        if end == "stopped":  # by ASHA or the time budget, or by itself (a non-finite loss, say)
            ended = t.stop_reason or f"stopped early by ASHA after {t.iterations} of {max_t}"
        cells = [rank if t.best else "", t.trial_id, t.status, t.state or "", f"{t.iterations} / {max_t}", ended,
                 *(params[t.trial_id].get(k, "") for k in keys), best.get(results.metric),
                 *(best.get(k) for k in SCORE_COLUMNS if k != results.metric), best.get("step")]  # fmt: skip
        if full:
            cells.append(((results.finalist(t.trial_id) or {}).get("full_dev") or {}).get(results.metric))
        kind = "best" if rank == 1 and t.best else end
        rows.append((kind, cells))
    return columns, rows


def header(search: Search) -> list[tuple[str, str]]:
    """(label, HTML) lines of the page's header."""
    from search import plots

    results, launch = search.results, search.launch
    counts: dict[str, int] = {}
    for t in results.trials:
        key = t.state or t.status
        counts[key] = counts.get(key, 0) + 1
    metric = f"{_esc(plots.label(results.metric))} ({_code(results.metric)}, {_esc(results.mode)} is better)"
    states = ", ".join(f"{n} {_esc(s)}" for s, n in sorted(counts.items())) or "none yet"
    lines = [
        ("folder", _code(search.experiment)),
        ("metric", f"{metric} on the dev selection subset; ASHA budget max_t = {launch.max_t} evaluations"),
        ("trials", f"{len(results.trials)}: {states}"),
    ]
    ranked = plots.ordered(results)
    if ranked and ranked[0].best:
        best = ranked[0]
        at = f"step {_cell(best.best.get('step'))} (evaluation {_cell(best.best.get('training_iteration'))})"
        score = _cell(best.best[results.metric])
        state = _esc(best.state or best.status)
        final = (results.finalist(best.trial_id) or {}).get("full_dev") or {}
        full = f"; {results.metric} {_cell(final.get(results.metric))} on the full dev sets" if final else ""
        on = f"on the selection subset ({_esc(subset_words(results))})"
        lines.append(("best trial", f"{_code(best.trial_id)}: {results.metric} {score} {on} at {at}{full}, {state}"))
        if results.rank_rule:
            lines.append(("order", _esc(results.rank_rule)))
        report = report_words(results)
        if report:
            lines.append(("held out", _esc(report)))
    lines.append(("time", _esc(search_time(search))))
    settings = [launch.space_file] + [f"--set {k}={v}" for k, v in launch.overrides.items()]
    settings += [f"--profile {launch.profile}"] if launch.profile else []
    settings += ["--smoke"] if launch.smoke else []
    lines.append(("started as", _code("mtbert-search " + " ".join(settings))))
    return lines


def search_time(search: Search) -> str:
    """When the search started (search.json is written first) and ended (summary.json, written
    last), or the time of its latest result while it has not ended."""
    start = (search.experiment / SEARCH_FILE).stat().st_mtime
    stamps = [r["timestamp"] for rows in search.histories.values() for r in rows if r.get("timestamp")]
    summary = search.experiment / SUMMARY_FILE
    if summary.is_file():
        end, what = summary.stat().st_mtime, "ended"
    elif stamps:
        end, what = max(stamps), "latest result"
    else:
        return f"started {_when(start)}; no result yet"
    return f"started {_when(start)}, {what} {_when(end)} ({_duration(end - start)})"


def quora_note(search: Search) -> str | None:
    """mtbert's notice about the default encoder, when some trial used it."""
    from mtbert import DEFAULT_ENCODER
    from mtbert.tasks import QUORA_NOTE

    base = search.space.base.model.encoder if search.space is not None else None
    encoders = {decoded_params(search, t.params).get("model.encoder", base) for t in search.results.trials} | {base}
    return QUORA_NOTE.removeprefix("note: ") if DEFAULT_ENCODER in encoders else None


def render_html(search: Search, sections: list[Section]) -> str:
    name = search.experiment.name
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Search report: {_esc(name)}</title>", f"<style>{CSS}</style></head><body>",
        f"<h1>Search report: {_esc(name)}</h1>", "<table class=\"header\">",
        *(f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>" for k, v in header(search)), "</table>",
    ]  # fmt: skip
    note = quora_note(search)
    if note:
        parts.append(f'<p class="caveat"><b>Quora caveat.</b> {_esc(note)}.</p>')
    if search.missing:
        parts.append('<h2>Missing</h2><ul class="missing">' + "".join(f"<li>{_esc(m)}</li>" for m in search.missing)
                     + "</ul>")  # fmt: skip
    parts.append(trials_table(search))
    for s in sections:
        parts.append(f'<h2 id="{s.name}">{_esc(s.title)}</h2>')
        if not s.png:
            parts.append(f'<p class="skipped">{_esc(s.reason)}</p>')
            continue
        data = base64.b64encode(s.png).decode("ascii")
        link = f'<a href="{s.name}.png">{s.name}.png</a>'
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(s.title)}">'
                     f"<figcaption>{_esc(s.caption)} ({link})</figcaption></figure>")  # fmt: skip
    parts.append(f'<p class="footer">Written {_when(time.time())} by mtbert-search report.</p></body></html>')
    return "\n".join(parts) + "\n"


def trials_table(search: Search) -> str:
    columns, rows = table_rows(search)
    if not rows:
        return '<h2>Trials</h2><p class="skipped">No trials yet.</p>'
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join(f'<tr class="{kind}">' + "".join(f"<td>{_cell(v)}</td>" for v in cells) + "</tr>"
                   for kind, cells in rows)  # fmt: skip
    failed = [t for t in search.results.trials if t.status == "ERROR"]
    errors = ""
    if failed:
        items = (f"<li>{_code(t.trial_id)}: {_esc(t.error_message() or 'no error file')} ({_code(t.error)})</li>"
                 for t in failed)  # fmt: skip
        errors = "<p>Failed trials:</p><ul>" + "".join(items) + "</ul>"
    results = search.results
    order = (f"Best first: {_esc(results.rank_rule)}" if results.rank_rule
             else f"Best first by the best evaluation's {_esc(results.metric)}")  # fmt: skip
    full = (f"; the last column is the best checkpoint's {_esc(results.metric)} on the full dev sets (the "
            "search's final pick)" if results.finalists else "")  # fmt: skip
    return (f"<h2>Trials</h2><p>{order}. The scores are the best evaluation's, on the dev selection subset "
            f"({_esc(subset_words(results))}){full}. Settings are the sampled dimensions, by their "
            "dotted keys.</p>"
            f'<div class="scroll"><table class="trials"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            f"</div>{errors}")  # fmt: skip


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table.header th { text-align: left; padding-right: 1em; vertical-align: top; color: #555; font-weight: normal; }
.scroll { overflow-x: auto; }
table.trials { border-collapse: collapse; font-size: 0.85em; }
table.trials th, table.trials td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right;
                                   white-space: nowrap; }
table.trials th { background: #f4f4f4; }
table.trials tr.best { background: #fff6d5; font-weight: bold; }
table.trials tr.stopped { color: #8a5a00; }
table.trials tr.failed { color: #b00; }
table.trials tr.waiting, table.trials tr.running { color: #777; font-style: italic; }
.caveat { background: #eef4fb; border-left: 4px solid #1f77b4; padding: 0.5em 1em; }
ul.missing li { color: #8a5a00; }
.skipped { color: #777; font-style: italic; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { font-size: 0.9em; color: #444; }
.footer { color: #999; font-size: 0.8em; margin-top: 3em; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _code(value: Any) -> str:
    return f"<code>{_esc(value)}</code>"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return _esc(f"{value:.4g}")
    if isinstance(value, (list, dict)):
        return _esc(json.dumps(value, separators=(", ", ": ")))
    return _esc(value)


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"
