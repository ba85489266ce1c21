"""``mtbert-search status``: a search's trials as one table (text, CSV or markdown).

One row per trial, best first: Tune's status, Optuna's state (COMPLETE, PRUNED when ASHA stopped
it, FAIL), the evaluations it reported, its sampled settings (dotted keys, real values), and its
best evaluation's metric and per-task scores on the selection subset. When a trial failed or
stopped itself, a last ``note`` column says why: the exception of an errored trial (its last
failure), the reason of a trial that ended on a non-finite loss, or how often a trial that went on
had failed (a lost node, say) before it succeeded.
"""

from __future__ import annotations

import math
from typing import Any

from search.results import SCORE_KEYS, SearchResults, decoded

FORMATS = ("text", "csv", "markdown")
NOTE_WIDTH = 72  # the text table's note column


def table(results: SearchResults, space: Any = None) -> Any:
    import pandas as pd

    rows = []
    for t in results.trials:
        row: dict[str, Any] = {
            "trial_id": t.trial_id,
            "status": t.status,
            "optuna": t.state or "",
            "iterations": t.iterations,
        }
        row.update(decoded(space, t.params))
        best = t.best or {}
        for key in dict.fromkeys((results.metric, *SCORE_KEYS)):
            row[key] = best.get(key)
        row["step"] = best.get("step")
        row["note"] = note(t)
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df) and not df["note"].any():
        df = df.drop(columns="note")
    if len(df):
        df = df.sort_values(results.metric, ascending=results.mode == "min", na_position="last", kind="stable")
    return df.reset_index(drop=True)


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
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "markdown":
        return markdown(df)
    formatters: dict[str, Any] = {}
    if "note" in df.columns:  # free text last, left-aligned and cut short (csv and markdown keep it whole)
        notes = [v if len(v) <= NOTE_WIDTH else v[: NOTE_WIDTH - 3] + "..." for v in df["note"].fillna("")]
        width = max(len("note"), *map(len, notes))
        df = df.drop(columns="note").assign(**{"note".ljust(width): [v.ljust(width) for v in notes]})
        formatters["note".ljust(width)] = str
    return df.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}", formatters=formatters) + "\n"


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
