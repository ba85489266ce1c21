"""The figures of a search report (``search.report``), one builder per view:

    learning_curves   the search metric of every trial at each evaluation, ASHA's stops marked
    task_curves       sst_acc, para_acc and sts_pearson of the best trials
    importance        Optuna's parameter importances (computed by ``search.engine.searcher.param_importances``)
    dimensions        the main dimensions' sampled values against each trial's best metric
    gradient_curves   grad_cos_<a>_<b> and grad_conflict_frac per trial, when the trials report them
    pbt_schedules     PBT: the values of the mutated settings over global steps per trial, exploits marked

Each builder returns a matplotlib ``Figure``, or a sentence saying why there is nothing to draw.
Figures are made with ``Figure()`` on an Agg canvas, never through pyplot: no display is needed,
no global state (current figure, rcParams, styles) is shared between figures, and a figure is
freed like any other object once the report has written it.

``histories`` maps a trial id to its evaluations in order (the rows of its ``result.json``); a
trial's ``training_iteration`` counts its evaluations, the unit of ASHA's ``max_t``.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullFormatter

if TYPE_CHECKING:
    from search.results import SearchResults, TrialRecord

ITERATION = "training_iteration"
TASK_SCORES = ("sst_acc", "para_acc", "sts_pearson")
LABELS = {
    "overall": "dev overall", "sst_acc": "SST accuracy", "para_acc": "Quora paraphrase accuracy",
    "para_f1": "Quora paraphrase F1", "sts_pearson": "STS Pearson r", "sts_spearman": "STS Spearman rho",
    "grad_conflict_frac": "fraction of task pairs in conflict (cos < 0)",
}  # fmt: skip
# How a trial ended, as the table and the figures show it.
ENDINGS = {
    "complete": "ran its full budget", "stopped": "stopped early by ASHA", "running": "still running",
    "failed": "failed", "waiting": "no results yet",
}  # fmt: skip
ENDING_COLORS = {"complete": "#1f77b4", "stopped": "#ff7f0e", "running": "#2ca02c", "failed": "#d62728"}
MAX_DIMENSIONS = 6
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # fmt: skip
_DASHES = ("-", "--", "-.", ":")


def label(key: str) -> str:
    if key.startswith("grad_cos_"):
        a, _, b = key.removeprefix("grad_cos_").partition("_")
        return f"cos(g_{a}, g_{b})"
    return LABELS.get(key, key)


def ending(trial: TrialRecord, max_t: int) -> str:
    """complete, stopped (before its budget: Optuna's PRUNED), running, failed or waiting (no results)."""
    if trial.status == "ERROR" or trial.state == "FAIL":
        return "failed"
    if trial.state == "PRUNED":
        return "stopped"
    if trial.status in ("RUNNING", "PENDING", "PAUSED"):
        return "running" if trial.iterations else "waiting"
    if not trial.iterations:
        return "waiting"
    if trial.state is None and trial.iterations < max_t:  # no Optuna study to ask: judge by the budget
        return "stopped"
    return "complete"


def ordered(results: SearchResults) -> list[TrialRecord]:
    """Trials best first (as the report's table lists them): the search's order (``results.ranked``,
    its final pick first once it has ended), then trials without a checkpoint by their best metric,
    those without one last."""
    sign = -1 if results.mode == "max" else 1
    ranked = results.ranked()
    scored = [t for t in results.trials if t.best and _number(t.best.get(results.metric)) is not None
              and t not in ranked]  # fmt: skip
    rest = [t for t in results.trials if t not in scored and t not in ranked]
    return ranked + sorted(scored, key=lambda t: sign * t.best[results.metric]) + rest


def styles(trial_ids: list[str]) -> dict[str, dict[str, Any]]:
    """One colour and dash per trial, the same in every figure (40 distinct, then they repeat)."""
    pairs = itertools.cycle(itertools.product(_DASHES, _COLORS))
    return {tid: {"linestyle": dash, "color": color} for tid, (dash, color) in zip(trial_ids, pairs)}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# ---- the search metric -----------------------------------------------------------------------------


def learning_curves(results: SearchResults, histories: dict[str, list[dict]], max_t: int) -> Figure | str:
    """One line per trial with results (labelled with its trial id): the search metric at each
    evaluation. A cross marks where a trial was stopped before ``max_t`` evaluations, a triangle a
    trial still running, a star the best evaluation of the best trial."""
    metric = results.metric
    trials = [t for t in ordered(results) if _series(histories.get(t.trial_id, []), metric)[0]]
    if not trials:
        return f"No trial has reported {metric} yet."
    style = styles([t.trial_id for t in ordered(results)])
    fig = new_figure(10.5, 5.2)
    ax = fig.add_subplot()
    marks: dict[str, list[tuple[float, float, str]]] = {"stopped": [], "running": [], "failed": []}
    for rank, t in enumerate(trials):
        x, y = _series(histories[t.trial_id], metric)
        best = rank == 0 and t.best is not None
        ax.plot(x, y, label=t.trial_id, marker=".", markersize=5, linewidth=2.4 if best else 1.3,
                zorder=3 if best else 2, **style[t.trial_id])  # fmt: skip
        end = ending(t, max_t)
        if end in marks:
            marks[end].append((x[-1], y[-1], style[t.trial_id]["color"]))
    for end, marker, size in (("stopped", "X", 90), ("running", ">", 70), ("failed", "x", 70)):
        if marks[end]:
            xs, ys, cs = zip(*marks[end])
            ax.scatter(xs, ys, marker=marker, s=size, c=cs, edgecolors="black", linewidths=0.8, zorder=4, gid=end)
    best = trials[0]
    if best.best is not None and best.best.get(ITERATION) is not None:
        ax.scatter([best.best[ITERATION]], [best.best[metric]], marker="*", s=260, c="gold", edgecolors="black",
                   zorder=5, gid="best")  # fmt: skip
    # a LineCollection, not a line: the axes' lines are the trials' alone
    ax.vlines([max_t], 0, 1, transform=ax.get_xaxis_transform(), colors="grey", linestyles="dotted", linewidth=1.5)
    right = max(max_t, max(max(_series(histories[t.trial_id], metric)[0]) for t in trials))
    pad = max(0.3, 0.025 * right)  # room for the markers at both ends
    ax.set_xlim(1 - pad, right + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("evaluation (training_iteration, ASHA's unit of time)")
    ax.set_ylabel(f"{label(metric)} ({results.mode} is better)")
    ax.set_title(f"{label(metric)} of each trial at each evaluation")
    _step_axis(ax, [histories[t.trial_id] for t in trials])
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    keys = [
        Line2D([], [], marker="X", color="white", markerfacecolor="grey", markeredgecolor="black", markersize=9,
               label="stopped before max_t"),
        Line2D([], [], marker="*", color="white", markerfacecolor="gold", markeredgecolor="black", markersize=14,
               label="best evaluation"),
        Line2D([], [], color="grey", linestyle="dotted", linewidth=1.5, label=f"budget: max_t = {max_t}"),
    ]  # fmt: skip
    if marks["running"]:
        keys.append(Line2D([], [], marker=">", color="white", markerfacecolor="grey", markeredgecolor="black",
                           markersize=8, label="still running"))  # fmt: skip
    ax.legend(handles + keys, names + [k.get_label() for k in keys], loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize=8, ncol=1 if len(handles) <= 22 else 2, title="trial (best first)", title_fontsize=8,
              frameon=False)  # fmt: skip
    return fig


def task_curves(results: SearchResults, histories: dict[str, list[dict]], top: int = 5) -> Figure | str:
    """sst_acc, para_acc and sts_pearson of the ``top`` best trials at each evaluation, one panel per
    task; a star marks the evaluation each trial is ranked by (its best search metric)."""
    trials = [t for t in ordered(results) if t.best and any(_series(histories.get(t.trial_id, []), k)[0]
                                                            for k in TASK_SCORES)][:top]  # fmt: skip
    if not trials:
        return "No trial has reported per-task scores yet."
    style = styles([t.trial_id for t in ordered(results)])
    fig = new_figure(13, 4.4)
    axes = fig.subplots(1, len(TASK_SCORES), sharex=True)
    for ax, key in zip(axes, TASK_SCORES):
        for t in trials:
            x, y = _series(histories[t.trial_id], key)
            if not x:
                continue
            ax.plot(x, y, marker=".", markersize=5, linewidth=1.5, label=t.trial_id, **style[t.trial_id])
            at, value = t.best.get(ITERATION), _number(t.best.get(key))
            if at is not None and value is not None:
                ax.scatter([at], [value], marker="*", s=120, color=style[t.trial_id]["color"], edgecolors="black",
                           linewidths=0.6, zorder=4)  # fmt: skip
        ax.set_title(label(key))
        ax.set_xlabel("evaluation")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score on the dev selection subset")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=len(names), fontsize=8,
               title=f"the {len(trials)} best trial(s) by {results.metric}; star: the evaluation each is ranked by",
               title_fontsize=8, frameon=False)  # fmt: skip
    return fig


# ---- the dimensions --------------------------------------------------------------------------------


def importance(importances: dict[str, float], completed: int) -> Figure:
    keys = list(importances)[::-1]  # most important at the top
    fig = new_figure(8, 0.9 + 0.42 * len(keys))
    ax = fig.add_subplot()
    ax.barh(keys, [importances[k] for k in keys], color="#1f77b4")
    for i, k in enumerate(keys):
        ax.text(importances[k], i, f" {importances[k]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(max(importances.values()) * 1.15, 0.05))
    ax.set_xlabel("importance (sums to 1)")
    ax.set_title(f"parameter importance (Optuna PED-ANOVA, {completed} completed trials)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def dimensions(results: SearchResults, values: dict[str, dict[str, Any]], max_t: int,
               kinds: dict[str, str] | None = None, keys: list[str] | None = None) -> Figure | str:  # fmt: skip
    """One panel per main dimension (``keys``, at most ``MAX_DIMENSIONS``; else the first ones in
    ``values``): each trial's sampled value against its best metric, coloured by how it ended.
    ``values`` maps a trial id to its decoded settings; ``kinds`` a key to its dimension kind
    (``loguniform`` draws a log axis; ``choice`` and non-numbers draw categories)."""
    metric, kinds = results.metric, kinds or {}
    scored = [t for t in ordered(results) if t.best and _number(t.best.get(metric)) is not None]
    present = list(dict.fromkeys(k for t in scored for k in values.get(t.trial_id, {})))
    keys = [k for k in (keys or present) if k in present][:MAX_DIMENSIONS]
    if not keys:
        return "No trial with a result has sampled settings to show."
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = new_figure(4.3 * ncols, 3.2 * nrows + 0.6)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    rng = np.random.default_rng(0)  # the jitter of categories: the same picture every time
    seen: set[str] = set()
    for ax, key in zip(axes, keys):
        points = [(values[t.trial_id][key], t.best[metric], ending(t, max_t), t is scored[0])
                  for t in scored if key in values.get(t.trial_id, {})]  # fmt: skip
        categorical = kinds.get(key) == "choice" or not all(_number(v) is not None for v, *_ in points)
        if categorical:
            cats = list(dict.fromkeys(_text(v) for v, *_ in points))
            xs = [cats.index(_text(v)) + rng.uniform(-0.12, 0.12) for v, *_ in points]
            ax.set_xticks(range(len(cats)), [_short(c) for c in cats], rotation=20 if len(cats) > 2 else 0,
                          fontsize=8)  # fmt: skip
            ax.set_xlim(-0.5, len(cats) - 0.5)
        else:
            xs = [float(v) for v, *_ in points]
            if kinds.get(key) == "loguniform" and min(xs) > 0:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^-5, 3x10^-5 ... run into each other
            elif kinds.get(key) == "int" or all(float(x).is_integer() for x in xs):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for x, (_, y, end, best) in zip(xs, points):
            colour = ENDING_COLORS.get(end, "grey")
            ax.scatter([x], [y], s=200 if best else 36, marker="*" if best else "o", color=colour, edgecolors="black",
                       linewidths=0.5, alpha=0.85, zorder=3 if best else 2)  # fmt: skip
            seen.add(end)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    for ax in axes[: len(keys) : ncols]:
        ax.set_ylabel(f"best {label(metric)}")
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    legend = [Line2D([], [], marker="o", linestyle="none", color=ENDING_COLORS[e], markeredgecolor="black",
                     label=ENDINGS[e]) for e in ENDING_COLORS if e in seen]  # fmt: skip
    legend.append(Line2D([], [], marker="*", linestyle="none", color="grey", markeredgecolor="black", markersize=12,
                         label="best trial"))  # fmt: skip
    fig.legend(handles=legend, loc="outside lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.suptitle(f"sampled settings against each trial's best {label(metric)}")
    return fig


# ---- gradient conflict -----------------------------------------------------------------------------


def _finish_panels(fig: Figure, axes: list, used: int, ncols: int, xlabel: str, legend_title: str) -> None:
    """A grid of panels sharing x: spare panels hidden, the x label under each column's last panel,
    and one legend of the trials (the first panel's lines) to the right."""
    for ax in axes[used:]:
        ax.set_visible(False)
    for ax in axes[:used][-ncols:]:
        ax.set_xlabel(xlabel)
        ax.xaxis.set_tick_params(labelbottom=True)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize=8, title=legend_title, title_fontsize=8,
               frameon=False)  # fmt: skip


def gradient_keys(histories: dict[str, list[dict]]) -> list[str]:
    """The gradient-conflict keys any trial reports, task pairs in the trainer's order."""
    keys = list(dict.fromkeys(k for rows in histories.values() for r in rows for k in r if k.startswith("grad_cos_")))
    if any("grad_conflict_frac" in r for rows in histories.values() for r in rows):
        keys.append("grad_conflict_frac")
    return keys


def gradient_curves(results: SearchResults, histories: dict[str, list[dict]], top: int = 8) -> Figure | str:
    """One panel per ``grad_cos_<a>_<b>`` and ``grad_conflict_frac``, one line for each of the ``top``
    best trials that report them: the cosine between two tasks' gradients on the shared encoder
    (below 0: they conflict)."""
    keys = gradient_keys(histories)
    if not keys:
        return ("The trials report no gradient-conflict diagnostics (grad_cos_<a>_<b>, grad_conflict_frac): "
                "set grad.diagnose_every above 0 to record them.")  # fmt: skip
    trials = [t for t in ordered(results) if any(_series(histories.get(t.trial_id, []), k)[0] for k in keys)][:top]
    style = styles([t.trial_id for t in ordered(results)])
    ncols = min(2, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = new_figure(11.5, 3.3 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        for t in trials:
            x, y = _series(histories[t.trial_id], key)
            if x:
                ax.plot(x, y, marker=".", markersize=4, linewidth=1.2, label=t.trial_id, **style[t.trial_id])
        if key.startswith("grad_cos_"):
            ax.hlines([0], 0, 1, transform=ax.get_yaxis_transform(), colors="black", linewidth=0.8)  # not a line
            ax.set_ylabel("cosine")
        else:
            ax.set_ylim(-0.05, 1.05)
            ax.set_ylabel("fraction")
        ax.set_title(label(key), fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _finish_panels(fig, axes, len(keys), ncols, "evaluation", f"the {len(trials)} best\ntrial(s)")
    fig.suptitle("gradient conflict between tasks on the shared encoder (at the evaluation's last diagnosed step)")
    return fig


# ---- PBT's schedules --------------------------------------------------------------------------------


def pbt_schedules(results: SearchResults, values: dict[str, dict[str, Any]],
                  keys: list[str]) -> dict[str, dict[str, list[tuple]]]:  # fmt: skip
    """``{trial id: {key: [(start step, end step, value), ...]}}``: what each trial with results
    trained with, over global steps, from its lineage (``search.lineage.schedule``); ``values`` maps
    a trial id to its decoded settings now (after its last exploit)."""
    from search.lineage import schedule

    out: dict[str, dict[str, list[tuple]]] = {}
    for t in ordered(results):
        if not t.iterations:
            continue
        last = _number((t.last or {}).get("step"))
        out[t.trial_id] = {k: schedule(t.lineage, values.get(t.trial_id, {}), k, last) for k in keys}
    return out


def pbt_lineage(results: SearchResults, values: dict[str, dict[str, Any]], keys: list[str],
                kinds: dict[str, str] | None = None) -> Figure | str:  # fmt: skip
    """One panel per mutated setting (``keys``, at most ``MAX_DIMENSIONS``): each trial's value over
    global training steps (``pbt_schedules``), a line per trial in its colour. An exploit is an
    arrow at the step the recipient went on from, from the donor's value there to the recipient's
    new one, labelled ``donor→recipient``; the recipient's line before it ends where it exploited."""
    kinds = kinds or {}
    exploits = [(t, e) for t in results.trials for e in t.lineage]
    if not exploits:
        return "No trial has exploited another yet: PBT records an exploit when a trial in the bottom quantile " \
               "goes on from one in the top quantile."  # fmt: skip
    keys = keys[:MAX_DIMENSIONS]
    data = pbt_schedules(results, values, keys)
    style = styles([t.trial_id for t in ordered(results)])
    ncols = min(2, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = new_figure(11.5, 3.6 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        for trial_id, segments in data.items():
            for i, (start, end, value) in enumerate(segments.get(key, [])):
                y = _number(value)
                if y is not None:
                    ax.plot([start, end], [y, y], linewidth=1.6, label=trial_id if i == 0 else None,
                            **style[trial_id])  # fmt: skip
        for t, e in exploits:
            old, new = _number(e.get("donor_values", {}).get(key)), _number(e.get("after", {}).get(key))
            x = _number(e.get("donor_step"))
            if old is None or new is None or x is None:
                continue
            ax.annotate("", xy=(x, new), xytext=(x, old), gid="exploit",
                        arrowprops={"arrowstyle": "->", "color": style[t.trial_id]["color"], "linewidth": 1.2})  # fmt: skip
            ax.scatter([x], [new], marker="o", s=22, color=style[t.trial_id]["color"], edgecolors="black",
                       linewidths=0.5, zorder=4)  # fmt: skip
            ax.annotate(f"{e.get('donor')}→{t.trial_id}", (x, new), xytext=(3, 3), textcoords="offset points",
                        fontsize=6, color=style[t.trial_id]["color"])  # fmt: skip
        if kinds.get(key) == "loguniform":
            ax.set_yscale("log")
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
    _finish_panels(fig, axes, len(keys), ncols, "training step", "trial")
    fig.suptitle(f"PBT: each trial's mutated settings over training steps ({len(exploits)} exploit(s), arrows: "
                 "donor → recipient)")  # fmt: skip
    return fig


# ---- helpers ---------------------------------------------------------------------------------------


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(evaluation numbers, values) of the rows holding a number under ``key``."""
    pairs = [(r.get(ITERATION), _number(r.get(key))) for r in rows]
    pairs = [(int(i), v) for i, v in pairs if i is not None and v is not None]
    return [i for i, _ in pairs], [v for _, v in pairs]


def _step_axis(ax: Any, histories: list[list[dict]]) -> None:
    """A top axis in training steps when every trial evaluates at the same interval."""
    ratios = {r["step"] / r[ITERATION] for rows in histories for r in rows
              if _number(r.get("step")) is not None and r.get(ITERATION)}  # fmt: skip
    if len(ratios) != 1:
        return
    every = ratios.pop()
    if every <= 0:
        return
    top = ax.secondary_xaxis("top", functions=(lambda x: x * every, lambda s: s / every))
    top.set_xlabel("training step", fontsize=9)
    top.tick_params(labelsize=8)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
