"""A space file's ``tune.sampler``: which Optuna sampler proposes the trials, and its options.

    tune:
      sampler: tpe                                   # a kind alone
      sampler: {kind: tpe, n_startup_trials: 4}      # a kind and options for its constructor
      sampler: {kind: gp, deterministic_objective: true}

Kinds: ``tpe`` (the default), ``random``, ``qmc``, ``gp``, ``cmaes``; every other key of the mapping
is an option of that kind's Optuna sampler (``TPESampler``, ``RandomSampler``, ``QMCSampler``,
``GPSampler``, ``CmaEsSampler``), passed to its constructor as written. A mapping without ``kind``
is TPE's options. A profile's or ``--set``'s ``tune.sampler`` replaces the file's as a whole.

Defaults, where the file gives none: ``seed`` is ``tune.seed``; a kind that takes
``n_startup_trials`` (tpe, gp, cmaes) gets ``startup_trials(num_samples)``, a quarter of the
trials, at least 2; TPE is multivariate with ``group: true``, which Optuna recommends for
conditional spaces (a dimension under ``when:``). Optuna counts every finished trial of the study
towards ``n_startup_trials``, so warm-start points (``tune.warm_start``) and the trials an earlier
search hands over count too: with ``warm_start: [base]`` and 8 trials, the base point and one
random trial come before the model's first proposal.

The kind and the mapping's shape are checked here; the option names and their types come from the
Optuna sampler's own signature, so that check is ``search.engine.samplers``' (the one part of a
space file read through Optuna).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtbert.errors import did_you_mean, show
from search.errors import SpaceError

KINDS = ("tpe", "random", "qmc", "gp", "cmaes")
DEFAULT_KIND = "tpe"
NAMES = {"tpe": "TPE", "random": "random sampling", "qmc": "quasi-Monte Carlo (QMC)", "gp": "Gaussian process (GP)",
         "cmaes": "CMA-ES"}  # fmt: skip
STARTUP_KINDS = ("tpe", "gp", "cmaes")  # the kinds whose sampler takes n_startup_trials
TPE_DEFAULTS = {"multivariate": True, "group": True}


def startup_trials(num_samples: int) -> int:
    """The default ``n_startup_trials``: a quarter of ``num_samples``, at least 2. Optuna samples at
    random until that many trials of the study have finished (COMPLETE or PRUNED), warm-start points
    and trials added from an earlier search included."""
    return max(2, num_samples // 4)


def read_sampler(value: Any, where: str, path: Path) -> dict[str, Any] | None:
    """``tune.sampler`` as written, as ``{"kind": ..., option: value, ...}`` (None: the default TPE).
    Checks the shape and the kind; the options are ``search.engine.samplers.check_options``'."""
    if value is None:
        return None
    at = where
    if isinstance(value, str):
        value = {"kind": value}
    elif isinstance(value, dict) and "kind" in value:
        at = f"{where}.kind"
    if not isinstance(value, dict):
        raise SpaceError(path, where, f"is {show(value)}, but must be a sampler kind ({', '.join(KINDS)}) or a "
                                      "mapping such as {kind: tpe, n_startup_trials: 4}")  # fmt: skip
    kind = value.get("kind", DEFAULT_KIND)
    if kind not in KINDS or isinstance(kind, bool):
        raise SpaceError(path, at, f"unknown sampler kind {show(kind)}{did_you_mean(kind, KINDS)}; "
                                   f"choose from: {', '.join(KINDS)}")  # fmt: skip
    options = {str(k): v for k, v in value.items() if k != "kind"}
    if options:
        from search.engine.samplers import check_options  # Optuna's signatures: loaded only for options

        check_options(kind, options, where, path)
    return {"kind": kind, **options}


def sampler_options(sampler: dict[str, Any] | None, num_samples: int, seed: int) -> tuple[str, dict[str, Any]]:
    """The kind and the constructor options a search uses: the file's, with the defaults filled in."""
    sampler = sampler or {"kind": DEFAULT_KIND}
    kind = sampler["kind"]
    options = {"seed": seed}
    if kind in STARTUP_KINDS:
        options["n_startup_trials"] = startup_trials(num_samples)
    if kind == "tpe":
        options.update(TPE_DEFAULTS)
    options.update({k: v for k, v in sampler.items() if k != "kind"})
    return kind, options


def describe(sampler: dict[str, Any] | None, num_samples: int, seed: int, warm: bool) -> str:
    """One line for the notes a search prints first: the sampler, its startup and its seed."""
    kind, options = sampler_options(sampler, num_samples, seed)
    text = NAMES[kind]
    if kind == "tpe":
        how = [w for w in ("multivariate", "group") if options.get(w)]
        text += f" ({', '.join(how)})" if how else ""
    if "n_startup_trials" in options:
        n = options["n_startup_trials"]
        counted = " (warm-start trials count)" if warm else ""
        text += f", random until {n} trial{'s' * (n != 1)} finished{counted}"
    given = sorted(k for k in sampler or {} if k not in ("kind", "seed", "n_startup_trials"))
    text += "".join(f", {k} {show(options[k])}" for k in given)
    return f"sampler: {text}, seed {options['seed']}"
