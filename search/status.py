"""``mtbert-search status``: a search's trials as one table (text, CSV or markdown).

One row per trial, best first: Tune's status, Optuna's state (COMPLETE, PRUNED when ASHA stopped
it, FAIL), the evaluations it reported, its sampled settings (dotted keys, real values), and its
best evaluation's metric and per-task scores on the selection subset.
"""

from __future__ import annotations

import math
from typing import Any

from search.export import decoded
from search.tuner import SCORE_KEYS, SearchResults

FORMATS = ("text", "csv", "markdown")


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
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(results.metric, ascending=results.mode == "min", na_position="last", kind="stable")
    return df.reset_index(drop=True)


def render(df: Any, fmt: str = "text") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "markdown":
        return markdown(df)
    return df.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}") + "\n"


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
