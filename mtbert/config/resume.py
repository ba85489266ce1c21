"""What a resumed run (``--resume``) may change: the settings fixed at resume and why
(``RESUME_FIXED``), and the ones a new config changes from its checkpoint's (``resume_conflicts``)."""

from __future__ import annotations

from typing import Any

from mtbert.config.phases import phase_config, run_phases
from mtbert.config.run import RunConfig
from mtbert.errors import show_json

_SAME_MODEL = "the model is rebuilt from the checkpoint's own config, so a new value would not be used"
_SAME_DATA = "the task streams go on where they were, in the same training examples and batches"
# The settings a resumed run (``--resume``) shares with its checkpoint, and why; a key covers every
# setting under it, ``*`` is any phase. The rest may change at resume: steps, learning rates and
# their schedule, weight decay, clipping, losses and their weights, the gradient method's own
# parameters, evaluation (interval, dev subset, patience, final evaluation), and where things go and
# run (out_dir, data.dir, data.cache_dir, device, bf16).
RESUME_FIXED: dict[str, str] = {
    "model": _SAME_MODEL,  # encoder, freeze_depth (also the optimizer's parameters), shared_pair_layer
    "heads": _SAME_MODEL,
    "data.max_train_per_task": _SAME_DATA,
    "data.extra_sst": _SAME_DATA,
    "data.max_length": _SAME_DATA + " (token lengths decide the length-bucketed batches)",
    "data.pair_separator": _SAME_DATA,
    "train.seed": "the data subsets, the order of the task streams and the task schedule are drawn from it",
    "sampling": "the task schedule goes on with the plan it was saved with",
    "grad.method": "the saved optimizer and gradient-combiner state belong to it",
    "mlm": "mlm phases end before the first checkpoint: their work is in the weights",
    "phases": "the run's phases (how many, in what order)",
    "phases.*.kind": "the run's phases (how many, in what order)",
    "phases.*.heads_only": "the specialist phase's frozen encoder",
}


def resume_fixed(key: str) -> str | None:
    """Why dotted ``key`` is fixed at resume (it is under a key of ``RESUME_FIXED``), else None."""
    parts = key.split(".")
    for fixed, why in RESUME_FIXED.items():
        want = fixed.split(".")
        if fixed == "phases" and len(parts) > 1:  # the list itself; its items' keys are listed apart
            continue
        if len(parts) >= len(want) and all(w in ("*", p) for w, p in zip(want, parts)):
            return why
    return None


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


