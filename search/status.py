"""``mtbert-search status``: a search's trials as one table (text, CSV or markdown).

One row per trial, best first (the search's order, ``SearchResults.ranked``: once it has ended, its
final pick first, their full-dev score in ``full_dev_<metric>``): Tune's status, Optuna's state
(COMPLETE, PRUNED when ASHA stopped it, FAIL), the evaluations it reported, how Optuna proposed it
(``proposed_by``: warm start, startup (random), tpe, random, qmc, gp, cmaes), its sampled settings
(dotted keys, real values), and its best evaluation's metric and per-task scores on the selection
subset; in a PBT search, a ``lineage`` column lists each time a trial went on from another's
checkpoint (``donor@step`` and the new values of the mutated settings; ``search.lineage``). When a
trial failed or stopped itself, a last ``note`` column says why: the exception of an errored trial
(its last failure), the reason of a trial that ended on a non-finite loss, or how often a trial that
went on had failed (a lost node, say) before it succeeded.
"""

from __future__ import annotations

import math
from typing import Any

from search.lineage import short_text
from search.results import SCORE_KEYS, SearchResults, decoded, report_words

FORMATS = ("text", "csv", "markdown")
NOTE_WIDTH = 72  # the text table's note column


def table(results: SearchResults, space: Any = None) -> Any:
    import pandas as pd

    from search.engine.searcher import proposals

    proposed = proposals(results.experiment)
    rows = []
    for t in results.trials:
        row: dict[str, Any] = {
            "trial_id": t.trial_id,
            "status": t.status,
            "optuna": t.state or "",
            "iterations": t.iterations,
            "proposed_by": proposed.get(t.trial_id, ""),
        }
        row.update(decoded(space, t.params))
        best = t.best or {}
        for key in dict.fromkeys((results.metric, *SCORE_KEYS)):
            row[key] = best.get(key)
        row["step"] = best.get("step")
        final = results.finalist(t.trial_id) or {}
        row[f"full_dev_{results.metric}"] = (final.get("full_dev") or {}).get(results.metric)
        # PBT: each exploit as donor@its step (the new values of the mutated settings)
        row["lineage"] = "; ".join(short_text(e) for e in t.lineage)
        row["note"] = note(t)
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df) and not df["note"].any():
        df = df.drop(columns="note")
    if len(df) and not df["lineage"].any():  # not a PBT search, or no exploit yet
        df = df.drop(columns="lineage")
    if len(df) and not df["proposed_by"].any():  # a search saved before trials recorded it
        df = df.drop(columns="proposed_by")
    full = f"full_dev_{results.metric}"
    if len(df) and df[full].isna().all():  # no final pick yet, or tune.final_eval: none
        df = df.drop(columns=full)
    if len(df):  # the search's order (its final pick first), then trials without a checkpoint by their metric
        df = df.sort_values(results.metric, ascending=results.mode == "min", na_position="last", kind="stable")
        first = {t.trial_id: i for i, t in enumerate(results.ranked())}
        df = df.sort_values("trial_id", key=lambda ids: ids.map(lambda i: first.get(i, len(first))), kind="stable")
    df = df.reset_index(drop=True)
    df.attrs["legend"] = legend(results, full in df.columns, space)
    return df


def legend(results: SearchResults, full_dev: bool, space: Any = None) -> str:
    """What the score columns are scored on, and the order of the rows."""
    if results.rank_rule:  # the search has ended: its summary says
        rows, known = results.selection_dev_examples, True
    else:  # the space says, when it loads
        rows, known = (space.base.data.max_eval_per_task, True) if space is not None else (None, False)
    subset = "tune.eval_subset rows per task" if not known else f"{rows} dev rows per task" if rows else "all dev rows"
    text = f"scores: the best evaluation's, on the selection subset ({subset})"
    if full_dev:
        text += f"; full_dev_{results.metric}: the best checkpoint on the full dev sets (the search's final pick)"
    text += f"; order: {results.rank_rule}" if results.rank_rule else "; best first"
    report = report_words(results)
    return text + (f"\n{report}" if report else "")


def note(trial: Any) -> str:
    """Why a trial ended the way it did, in one line; empty for a trial that simply ran."""
    if trial.status == "ERROR":
        message = trial.error_message() or "no error file"
        return f"failed ({trial.failures}x): " + message.splitlines()[0]
    if trial.stop_reason:
        return trial.stop_reason
    if trial.failures:
        went_on = "then went on from its last checkpoint" if trial.status == "TERMINATED" else "retrying"
        return f"failed {trial.failures}x, {went_on}"
    return ""


def render(df: Any, fmt: str = "text") -> str:
    """The table as ``fmt``; text and markdown end with a line saying what the scores are on (``legend``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
    if fmt == "csv":
        return df.to_csv(index=False)
    below = f"{df.attrs['legend']}\n" if df.attrs.get("legend") else ""
    if fmt == "markdown":
        return markdown(df) + (f"\n{below}" if below else "")
    formatters: dict[str, Any] = {}
    if "note" in df.columns:  # free text last, left-aligned and cut short (csv and markdown keep it whole)
        notes = [v if len(v) <= NOTE_WIDTH else v[: NOTE_WIDTH - 3] + "..." for v in df["note"].fillna("")]
        width = max(len("note"), *map(len, notes))
        df = df.drop(columns="note").assign(**{"note".ljust(width): [v.ljust(width) for v in notes]})
        formatters["note".ljust(width)] = str
    text = df.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}", formatters=formatters)
    return text + "\n" + below


def markdown(df: Any) -> str:
    """A GitHub-style markdown table (pandas' to_markdown needs tabulate, which is not a dependency)."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    columns = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
