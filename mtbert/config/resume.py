"""What a resumed run (``--resume``) may change: the settings fixed at resume and why
(``RESUME_FIXED``), those under them that may change all the same and what then happens
(``RESUME_CHANGEABLE``), and the fixed ones a new config changes from its checkpoint's
(``resume_conflicts``)."""

from __future__ import annotations

from typing import Any

from mtbert.config.phases import phase_config, run_phases
from mtbert.config.run import RunConfig
from mtbert.errors import show_json

_SAME_MODEL = "the model is rebuilt from the checkpoint's own config, so a new value would not be used"
_SAME_DATA = "the task streams go on where they were, in the same training examples and batches"
_REPLAN = "the task schedule is re-planned with the new value from the resumed step on (mtbert.data.sampling)"
# The settings a resumed run (``--resume``) shares with its checkpoint, and why; a key covers every
# setting under it, ``*`` is any task or phase, and the most specific key that covers a setting
# decides (``RESUME_CHANGEABLE`` included). The rest may change at resume: steps, learning rates and
# their schedule, weight decay, clipping, losses and their weights, the gradient method's own
# parameters and weights, evaluation (interval, dev subset, patience, final evaluation), where things
# go and run (out_dir, data.dir, data.cache_dir, device, bf16), and the settings of
# ``RESUME_CHANGEABLE`` (head dropout, sampling alpha, ratios, samples per epoch), which Population
# Based Training mutates when a trial goes on from another's checkpoint.
RESUME_FIXED: dict[str, str] = {
    "model": _SAME_MODEL,  # encoder, freeze_depth (also the optimizer's parameters), shared_pair_layer
    "heads": _SAME_MODEL,  # kind, hidden, pooling, pair_encoding, features, bins; not dropout
    "data.max_train_per_task": _SAME_DATA,
    "data.extra_sst": _SAME_DATA,
    "data.max_length": _SAME_DATA + " (token lengths decide the length-bucketed batches)",
    "data.pair_separator": _SAME_DATA,
    "data.dev_holdout": "the best step so far was chosen on the selection half it leaves; another split would "
    "let the report half's rows into that choice",
    "data.holdout_seed": "the best step so far was chosen on the selection half it picks; another split would "
    "let the report half's rows into that choice",
    "train.seed": "the data subsets, the order of the task streams and the task schedule are drawn from it",
    # sampling: a schedule's own rates and counts may change (RESUME_CHANGEABLE); what a step is may not
    "sampling": "the task schedule goes on with the plan it was saved with",
    "sampling.schedule": "the task schedule goes on with the plan it was saved with; another schedule is another plan",
    "sampling.batch_size": (
        "the task schedule counts in batches of it, and the task streams' length buckets are cut at it, so the "
        "streams could not go on where they were"
    ),
    "sampling.mixed": (
        "the task schedule's kind of step (one task's batch, or one batch of every task) is what the gradient "
        "method's saved state was gathered on"
    ),
    "sampling.per_step": (
        "the task schedule's round-robin variant ('equal' cycles the smaller tasks, 'proportional' sees each "
        "example once per epoch); switched inside an epoch, that epoch would be neither"
    ),
    "grad.method": "the saved optimizer and gradient-combiner state belong to it",
    "mlm": "mlm phases end before the first checkpoint: their work is in the weights",
    "phases": "the run's phases (how many, in what order)",
    "phases.*.kind": "the run's phases (how many, in what order)",
    "phases.*.heads_only": "the specialist phase's frozen encoder",
}

# Settings under a key of ``RESUME_FIXED`` that may still change at resume, and what happens when one
# does, from the resumed step on (``mtbert.train.run.open_run`` applies them).
RESUME_CHANGEABLE: dict[str, str] = {
    # The model is rebuilt from the checkpoint's config, then every dropout module of each head takes
    # the new rate (mtbert.model.multitask.set_dropout), which its spec records, so a head re-drawn
    # later (a specialist phase) keeps it. The encoder's own dropout is not a run-config setting.
    "heads.*.dropout": "the heads' dropout layers take the new rate from the resumed step on",
    # proportional and annealed (p_i ~ N_i^alpha): the epoch in progress and the ones after are
    # drawn with the new alpha; epochs keep their length, so steps keep their epoch numbers and the
    # plan from the resumed step is the one a schedule built with the new alpha has at those steps.
    # (An annealed schedule's length in epochs follows train.max_steps, which may change too.)
    "sampling.alpha": _REPLAN,
    "sampling.anneal_start": _REPLAN,
    "sampling.anneal_end": _REPLAN,
    # ratios and samples_per_epoch: the per-step counts from the resumed step on are the new
    # settings'. They change an epoch's length: the epoch in progress takes the new length counted
    # from its first step, or ends at the resumed step if it is already that long; epochs after it
    # have the new length (the schedule's ``anchor``, saved in its state).
    "sampling.ratios": _REPLAN,
    "sampling.samples_per_epoch": _REPLAN,
}


def _covers(pattern: str, parts: list[str]) -> bool:
    want = pattern.split(".")
    if pattern == "phases" and len(parts) > 1:  # the list itself; its items' keys are listed apart
        return False
    return len(parts) >= len(want) and all(w in ("*", p) for w, p in zip(want, parts))


def resume_fixed(key: str) -> str | None:
    """Why dotted ``key`` is fixed at resume, else None: the most specific key of ``RESUME_FIXED``
    or ``RESUME_CHANGEABLE`` that covers it decides (``heads.sst.dropout`` may change, although
    ``heads`` is fixed; ``heads.sst`` as a whole is fixed)."""
    parts = key.split(".")
    found: tuple[int, str | None] = (0, None)
    for table, fixed in ((RESUME_FIXED, True), (RESUME_CHANGEABLE, False)):
        for pattern, why in table.items():
            depth = pattern.count(".") + 1
            if depth > found[0] and _covers(pattern, parts):
                found = (depth, why if fixed else None)
    return found[1]


def may_change_at_resume(key: str) -> bool:
    """Whether dotted ``key`` may differ from the checkpoint's when a run resumes (or a Population
    Based Training trial goes on from another trial's checkpoint): not fixed by ``RESUME_FIXED``."""
    return resume_fixed(key) is None


def resume_conflicts(saved: RunConfig, new: RunConfig) -> list[str]:
    """Each setting fixed at resume (``RESUME_FIXED``) that ``new`` changes from the checkpoint's
    ``saved`` config, as ``"key is NEW, but the checkpoint's is OLD"``; a phase's ``set:`` counts."""
    out: list[str] = []

    def compare(old: dict[str, Any], now: dict[str, Any], prefix: str, skip: set[str]) -> None:
        for key in sorted(set(old) | set(now)):
            why = resume_fixed(key)
            if key in skip or why is None or old.get(key) == now.get(key):
                continue
            skip.add(key)
            out.append(f"{prefix}{key} is {show_json(now.get(key))}, but the checkpoint's is {show_json(old.get(key))} ({why})")

    top = {k: v for k, v in saved.flat().items() if k != "phases"}
    reported: set[str] = set()
    compare(top, {k: v for k, v in new.flat().items() if k != "phases"}, "", reported)
    old_phases, new_phases = run_phases(saved), run_phases(new)
    old_kinds, new_kinds = [p.kind for p in old_phases], [p.kind for p in new_phases]
    if old_kinds != new_kinds:  # "phases" and "phases.*.kind"
        out.append(f"phases is {show_json(new_kinds)}, but the checkpoint's is {show_json(old_kinds)} ({RESUME_FIXED['phases']})")
        return out
    fields = [k.split(".")[2] for k in RESUME_FIXED if k.startswith("phases.*.") and k != "phases.*.kind"]
    for i, (old_phase, new_phase) in enumerate(zip(old_phases, new_phases)):
        for name in fields:
            if getattr(old_phase, name) != getattr(new_phase, name):
                out.append(f"phases.{i}.{name} is {show_json(getattr(new_phase, name))}, but the checkpoint's is "
                           f"{show_json(getattr(old_phase, name))} ({RESUME_FIXED['phases.*.' + name]})")  # fmt: skip
        # what the phase trains with, its set: applied (sampling, grad.method, train.seed may change there)
        old_cfg, new_cfg = phase_config(saved, i).flat(), phase_config(new, i).flat()
        compare({k: v for k, v in old_cfg.items() if k != "phases"},
                {k: v for k, v in new_cfg.items() if k != "phases"}, f"phases.{i}.set.", set(reported))  # fmt: skip
    return out


