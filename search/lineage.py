"""A PBT trial's lineage, as ``search.engine.schedulers.LineagePBT`` records it in the trial's folder
(``lineage.json``: one entry per exploit, the donor trial and step, the values before and after), read
back without Ray for ``status``, the report and TensorBoard.

``schedule`` turns a trial's lineage and its settings into the values of the mutated settings over
global training steps: what PBT's schedule was for that trial.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

LINEAGE_FILE = "lineage.json"


def read_lineage(trial_dir: str | Path) -> list[dict]:
    """The exploits recorded in a local trial folder, in order; [] when there are none (or the file
    does not read: it is written whole, through a temporary file, so that is a file from elsewhere)."""
    path = Path(trial_dir) / LINEAGE_FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def exploit_text(entry: dict) -> str:
    """One exploit in a line: ``step 6: from trial cc49553e at step 4 (overall 0.4496 vs 0.3145),
    optim.lr 4.95e-05 -> 0.009483 (* 1.2)``; the values are the donor's and the new ones."""
    scores = ""
    if entry.get("donor_score") is not None and entry.get("score") is not None:
        scores = f" (score {value_text(entry['donor_score'])} vs {value_text(entry['score'])})"
    changes = []
    for key in entry.get("mutated", []):
        old, new = entry.get("donor_values", {}).get(key), entry.get("after", {}).get(key)
        op = entry.get("operations", {}).get(key)
        changes.append(f"{key} {value_text(old)} -> {value_text(new)}" + (f" ({op})" if op else ""))
    return (f"step {entry.get('step')}: from trial {entry.get('donor')} at step {entry.get('donor_step')}{scores}"
            + (": " + ", ".join(changes) if changes else ""))  # fmt: skip


def short_text(entry: dict) -> str:
    """An exploit in a few words: the donor and its step, the new values of the mutated keys."""
    values = ", ".join(f"{k}={value_text(entry.get('after', {}).get(k))}" for k in entry.get("mutated", []))
    return f"{entry.get('donor')}@{entry.get('donor_step')}" + (f" ({values})" if values else "")


def schedule(lineage: list[dict], params: dict[str, Any], key: str, last_step: float | None) -> list[tuple]:
    """The value of ``key`` over global steps for a trial: ``[(start step, end step, value), ...]``.

    Before its first exploit the trial ran its own value from step 0 (the first entry's ``before``;
    ``params``, its decoded settings now, when it never exploited); each exploit at the trial's step
    ``s`` went on from the donor's step ``d`` with the new value, so a segment ends at ``s`` and the
    next starts at ``d``. The last segment ends at ``last_step`` (the trial's last reported step).
    """
    segments: list[tuple] = []
    start, value = 0, (lineage[0].get("before", {}) if lineage else params).get(key)
    for entry in lineage:
        end = entry.get("step")
        if end is not None and value is not None:
            segments.append((start, end, value))
        start, value = entry.get("donor_step") or 0, entry.get("after", {}).get(key)
    end = last_step if last_step is not None and _finite(last_step) else start
    if value is not None:
        segments.append((start, end, value))
    return segments


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
