"""The dev sets split in two halves: ``data.dev_holdout`` of each dev set's rows, chosen by a seeded
hash of the row id, form the *report* half; the rest, the *selection* half, is what every evaluation
reads (checkpoint choice, early stopping, a search's schedulers, sampler and final pick). The report
half is read only by ``mtbert.predict.report_evaluation``, once, when a run or a search has chosen
its model, so its scores are an estimate that nothing was selected on.

A row's half depends only on its id, the seed and the fraction: not on the file's order, the other
rows, the machine or the run, so every run and search on the same data with the same two settings
splits it alike (``blake2b`` of ``"<seed>:<id>"``, its first 8 bytes read as a fraction of 2^64).
"""

from __future__ import annotations

import hashlib

HALVES = ("selection", "report", "all")


def in_report_half(row_id: str, fraction: float, seed: int = 0) -> bool:
    """Whether the dev row ``row_id`` belongs to the report half."""
    digest = hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def keep(half: str, fraction: float | None, seed: int = 0):
    """A predicate on row ids: the rows of ``half`` (``selection``, ``report`` or ``all``)."""
    if half not in HALVES:
        raise ValueError(f"half is {half!r}, but must be one of {', '.join(HALVES)}")
    if half == "all" or not fraction:
        if half == "report":
            raise ValueError("there is no report half: data.dev_holdout is not set")
        return lambda row_id: True
    report = half == "report"
    return lambda row_id: in_report_half(row_id, fraction, seed) == report
