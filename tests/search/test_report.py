"""``mtbert-search report``: the figure builders on hand-made trials (fast), the bad-input checks, and
the report of a real small search (slow): valid images, the figures and the table showing the same
trials, every image embedded, stopped trials marked."""

from __future__ import annotations

import base64
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from search import plots
from search.engine.searcher import param_importances
from search.errors import SearchError
from search.launch import Launch
from search.report import Search, Section, check_paths, read_history, render_html, write_report
from search.results import SearchResults, TrialRecord

MAX_T = 4


# ---- hand-made trials ------------------------------------------------------------------------------


def trial(tid: str, scores: list[float], state: str | None = "COMPLETE", status: str = "TERMINATED",
          params: dict | None = None, grad: bool = False) -> tuple[TrialRecord, list[dict]]:  # fmt: skip
    rows = []
    for i, v in enumerate(scores, 1):
        row = {"training_iteration": i, "step": 2 * i, "overall": v, "sst_acc": v / 2, "para_acc": v,
               "sts_pearson": v - 0.4}  # fmt: skip
        if grad:
            row.update(grad_cos_sst_para=0.1 * i, grad_cos_sst_sts=-0.1 * i, grad_cos_para_sts=0.05,
                       grad_conflict_frac=1 / 3)  # fmt: skip
        rows.append(row)
    best = max(rows, key=lambda r: r["overall"]) if rows else None
    record = TrialRecord(trial_id=tid, status=status, iterations=len(rows), params=params or {}, best=best,
                         last=rows[-1] if rows else None, checkpoint=None, path=Path(tid), state=state)  # fmt: skip
    return record, rows


def search_of(*made: tuple[TrialRecord, list[dict]]) -> tuple[SearchResults, dict[str, list[dict]]]:
    results = SearchResults(Path("exp"), "overall", "max", [t for t, _ in made])
    return results, {t.trial_id: rows for t, rows in made}


@pytest.fixture
def mixed():
    """a: complete and best; b: stopped by ASHA after 2; c: complete; d: running, no results yet."""
    return search_of(
        trial("a", [0.5, 0.6, 0.65, 0.7], params={"optim.lr": 1e-4, "grad.method": "pcgrad"}),
        trial("b", [0.4, 0.42], state="PRUNED", params={"optim.lr": 1e-5, "grad.method": "sum"}),
        trial("c", [0.45, 0.5, 0.55, 0.6], params={"optim.lr": 3e-5, "grad.method": "sum"}),
        trial("d", [], state="RUNNING", status="RUNNING", params={"optim.lr": 2e-5, "grad.method": "pcgrad"}),
    )


def lines_of(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def test_learning_curves_have_one_line_per_trial_with_results_best_first(mixed):
    results, histories = mixed
    fig = plots.learning_curves(results, histories, MAX_T)
    assert isinstance(fig, Figure)
    (ax,) = [a for a in fig.axes if a.get_lines()]
    assert lines_of(ax) == ["a", "c", "b"]  # d has no results: no line
    assert list(ax.get_lines()[2].get_ydata()) == [0.4, 0.42]
    stopped = [c for c in ax.collections if c.get_gid() == "stopped"]
    assert len(stopped) == 1 and stopped[0].get_offsets().tolist() == [[2, 0.42]]  # b's last evaluation
    (best,) = [c for c in ax.collections if c.get_gid() == "best"]
    assert best.get_offsets().tolist() == [[4, 0.7]]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:3] == ["a", "c", "b"] and f"budget: max_t = {MAX_T}" in legend
    assert "evaluation" in ax.get_xlabel() and "dev overall" in ax.get_ylabel() and ax.get_title()


def test_learning_curves_without_results_say_so():
    results, histories = search_of(trial("d", [], state=None, status="PENDING"))
    assert plots.learning_curves(results, histories, MAX_T) == "No trial has reported overall yet."


def test_a_trial_short_of_the_budget_without_an_optuna_state_counts_as_stopped():
    results, histories = search_of(trial("a", [0.5, 0.6, 0.7, 0.8], state=None), trial("b", [0.4], state=None))
    ax = plots.learning_curves(results, histories, MAX_T).axes[0]
    (stopped,) = [c for c in ax.collections if c.get_gid() == "stopped"]
    assert stopped.get_offsets().tolist() == [[1, 0.4]]


@pytest.mark.parametrize("status, state, iterations, expected", [
    ("TERMINATED", "COMPLETE", 4, "complete"),
    ("TERMINATED", "PRUNED", 2, "stopped"),
    ("TERMINATED", None, 2, "stopped"),
    ("TERMINATED", None, 4, "complete"),
    ("ERROR", "FAIL", 1, "failed"),
    ("RUNNING", "RUNNING", 2, "running"),
    ("PENDING", None, 0, "waiting"),
])  # fmt: skip
def test_ending(status, state, iterations, expected):
    record = TrialRecord("x", status, iterations, {}, None, None, None, Path("x"), state)
    assert plots.ending(record, MAX_T) == expected


def test_task_curves_show_the_top_trials_in_one_panel_per_task(mixed):
    results, histories = mixed
    fig = plots.task_curves(results, histories, top=2)
    assert [ax.get_title() for ax in fig.axes] == [plots.label(k) for k in plots.TASK_SCORES]
    for ax, key in zip(fig.axes, plots.TASK_SCORES):
        assert lines_of(ax) == ["a", "c"]
        assert list(ax.get_lines()[0].get_ydata()) == [r[key] for r in histories["a"]]


def test_a_trial_keeps_its_colour_across_figures(mixed):
    results, histories = mixed
    curves = plots.learning_curves(results, histories, MAX_T).axes[0].get_lines()
    tasks = plots.task_curves(results, histories).axes[0].get_lines()
    colours = {line.get_label(): line.get_color() for line in curves}
    assert {line.get_label(): line.get_color() for line in tasks} == {k: colours[k] for k in ("a", "c", "b")}
    assert len(set(colours.values())) == 3


def test_gradient_curves_present():
    results, histories = search_of(
        trial("a", [0.5, 0.6], grad=True), trial("b", [0.4, 0.5], grad=True), trial("c", [0.3, 0.35])
    )
    fig = plots.gradient_curves(results, histories)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["cos(g_sst, g_para)", "cos(g_sst, g_sts)", "cos(g_para, g_sts)",
                                                 plots.label("grad_conflict_frac")]  # fmt: skip
    for ax in panels:
        assert lines_of(ax) == ["a", "b"]  # c reports no diagnostics
    assert list(panels[1].get_lines()[0].get_ydata()) == pytest.approx([-0.1, -0.2])


def test_gradient_curves_absent_say_how_to_get_them(mixed):
    results, histories = mixed
    reason = plots.gradient_curves(results, histories)
    assert isinstance(reason, str) and "grad.diagnose_every" in reason


def test_gradient_curves_keep_the_best_trials():
    made = [trial(f"t{i}", [0.1 * i], grad=True) for i in range(1, 6)]
    results, histories = search_of(*made)
    ax = plots.gradient_curves(results, histories, top=2).axes[0]
    assert lines_of(ax) == ["t5", "t4"]


def test_dimensions_draw_a_log_axis_categories_and_every_trial_with_a_result(mixed):
    results, _histories = mixed
    values = {t.trial_id: t.params for t in results.trials}
    kinds = {"optim.lr": "loguniform", "grad.method": "choice"}
    fig = plots.dimensions(results, values, MAX_T, kinds, keys=["grad.method", "optim.lr"])
    method, lr = [ax for ax in fig.axes if ax.get_visible()]
    assert method.get_xlabel() == "grad.method" and lr.get_xlabel() == "optim.lr"
    assert [t.get_text() for t in method.get_xticklabels()] == ["pcgrad", "sum"]  # best trial's value first
    assert lr.get_xscale() == "log"
    points = sorted(p for c in lr.collections for p in c.get_offsets().tolist())
    assert points == sorted([[1e-4, 0.7], [3e-5, 0.6], [1e-5, 0.42]])  # d has no result: not drawn


def test_dimensions_without_settings_say_so(mixed):
    results, _ = mixed
    assert isinstance(plots.dimensions(results, {}, MAX_T), str)
    expected = "No trial with a result has sampled settings to show."
    assert plots.dimensions(results, {}, MAX_T) == expected
    # settings of a trial with no result (d) are no settings to show either
    assert plots.dimensions(results, {"d": {"optim.lr": 2e-5}}, MAX_T) == expected
    # keys asked for that no trial sampled: nothing to show, said the same way
    assert plots.dimensions(results, {"a": {"optim.lr": 1e-4}}, MAX_T, keys=["train.seed"]) == expected
    # and one setting of one scored trial is a figure, not the sentence
    assert isinstance(plots.dimensions(results, {"a": {"optim.lr": 1e-4}}, MAX_T), Figure)


def study_of(n_complete: int, n_params: int = 2):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(t):
        x = t.suggest_float("optim.lr", 0, 1)
        for k in range(1, n_params):
            t.suggest_float(f"noise{k}", 0, 1)
        return -((x - 0.3) ** 2)  # only optim.lr matters

    study.optimize(objective, n_trials=n_complete)
    return study


def test_param_importances_rank_the_dimension_that_decides():
    importances = param_importances(study_of(40))
    assert next(iter(importances)) == "optim.lr" and set(importances) == {"optim.lr", "noise1"}
    assert importances["optim.lr"] > importances["noise1"]
    fig = plots.importance(importances, 40)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["noise1", "optim.lr"]  # most important on top


@pytest.mark.parametrize("study, words", [
    (None, "holds none yet"),
    (lambda: study_of(3), "at least 5 completed trials and this search has 3"),
    (lambda: study_of(10, n_params=1), "vary 1 dimension"),
])  # fmt: skip
def test_param_importances_skip_with_a_sentence(study, words):
    reason = param_importances(study() if study else None)
    assert isinstance(reason, str) and words in reason


def test_figures_never_touch_pyplot(mixed):
    import matplotlib.pyplot as plt

    results, histories = mixed
    before = plt.get_fignums()
    plots.learning_curves(results, histories, MAX_T)
    plots.task_curves(results, histories)
    plots.importance({"a": 0.7, "b": 0.3}, 10)
    assert plt.get_fignums() == before


def test_read_history_orders_evaluations_and_keeps_a_repeated_one_once(tmp_path):
    (tmp_path / "result.json").write_text(
        '{"training_iteration": 1, "overall": 0.1}\n{"training_iteration": 2, "overall": 0.2}\n'
        '{"training_iteration": 2, "overall": 0.25}\n{"training_iter'  # a resumed trial, a line cut short
    )
    assert read_history(tmp_path) == [{"training_iteration": 1, "overall": 0.1},
                                      {"training_iteration": 2, "overall": 0.25}]  # fmt: skip
    assert read_history(tmp_path / "missing") == []


def test_html_table_marks_stopped_and_waiting_trials(mixed, tmp_path):
    results, histories = mixed
    Launch("space.yaml", max_t=MAX_T).save(tmp_path, "{}\n")
    search = Search(tmp_path, Launch.read(tmp_path), results, histories, missing=[("1 trial(s) have reported no "
                    "results yet: d.")])  # fmt: skip
    page = render_html(search, [Section("learning_curves", "Learning curves", reason="Nothing to draw.")])
    rows = {cells[1]: kind for kind, cells in table_cells(page)}
    assert rows == {"a": "best", "c": "complete", "b": "stopped", "d": "waiting"}
    assert "stopped early by ASHA after 2 of 4" in page and "reported no results yet: d." in page
    assert "Nothing to draw." in page and "data:image/png" not in page


def test_html_table_says_why_a_trial_failed_or_stopped_itself(tmp_path):
    error = tmp_path / "error.txt"
    error.write_text("Failure # 1 (occurred at 2026-01-01)\nTraceback (most recent call last):\n  File \"x.py\"\n"
                     "RuntimeError: out of memory\n")  # fmt: skip
    failed, failed_rows = trial("f", [0.3], state="FAIL", status="ERROR")
    failed.error = str(error)
    nan, nan_rows = trial("n", [0.2, 0.25], state="PRUNED")
    nan.stop_reason = "non-finite loss at step 5"
    results, histories = search_of(trial("a", [0.5, 0.6, 0.7, 0.8]), (failed, failed_rows), (nan, nan_rows))
    Launch("space.yaml", max_t=MAX_T).save(tmp_path, "{}\n")
    page = render_html(Search(tmp_path, Launch.read(tmp_path), results, histories), [])
    rows = {cells[1]: (kind, cells) for kind, cells in table_cells(page)}
    assert rows["f"][0] == "failed" and "failed" in rows["f"][1]
    assert rows["n"][0] == "stopped" and "non-finite loss at step 5" in rows["n"][1]
    assert "RuntimeError: out of memory" in page and str(error) in page


def table_cells(page: str) -> list[tuple[str, list[str]]]:
    body = page.split('<table class="trials">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<tr class="(\w+)">(.*?)</tr>', body)
    return [(kind, re.findall(r"<td>(.*?)</td>", cells)) for kind, cells in rows]


# ---- bad input -------------------------------------------------------------------------------------


def test_bad_input_raises_before_any_work(tmp_path):
    with pytest.raises(SearchError, match="is not a folder"):
        check_paths(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(SearchError, match="holds no mtbert search"):
        write_report(tmp_path, tmp_path / "out")
    Launch("space.yaml").save(tmp_path / "exp", "{}\n")
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SearchError, match="taken is an existing file"):
        write_report(tmp_path / "exp", tmp_path / "taken")
    with pytest.raises(SearchError, match="is the search folder itself"):
        write_report(tmp_path / "exp", tmp_path / "exp")
    assert not (tmp_path / "out").exists() and (tmp_path / "taken").read_text() == "a file"


def test_a_search_with_no_results_yet_still_reports(tmp_path):
    experiment = tmp_path / "exp"
    Launch("space.yaml", max_t=MAX_T).save(experiment, Path("spaces/pcgrad.yaml").read_text())
    lines = []
    index = write_report(experiment, tmp_path / "out", log=lines.append)
    page = index.read_text()
    assert "No trial results" in page and "No trials yet." in page
    assert "No trial has reported overall yet." in page and "data:image/png" not in page
    assert "Quora caveat" in page  # the space's encoder is all-MiniLM-L6-v2
    assert not list((tmp_path / "out").glob("*.png")) and str(index) in lines[0]


# ---- a real search ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(smoke_search, tmp_path_factory):
    """The report of the session's shared search, written into a folder of this module's."""
    from search.results import load_results

    tmp = tmp_path_factory.mktemp("report")
    experiment = smoke_search["experiment"]
    started = time.perf_counter()
    index = write_report(experiment, tmp / "out", log=lambda line: None)
    return {"experiment": experiment, "index": index, "page": index.read_text(), "out": tmp / "out",
            "results": load_results(experiment), "seconds": time.perf_counter() - started, "tmp": tmp}  # fmt: skip


@pytest.mark.slow
def test_report_pngs_are_valid_images(searched):
    import matplotlib.image

    names = sorted(p.stem for p in searched["out"].glob("*.png"))
    # the template space records gradient diagnostics; too few trials complete for importance
    assert {"learning_curves", "task_scores", "dimensions", "gradient_conflict"} <= set(names)
    for name in names:
        image = matplotlib.image.imread(searched["out"] / f"{name}.png")
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400, name
        pixels = np.ascontiguousarray((image * 255).round().astype(np.uint8)[..., :3])  # (H, W, 3) RGB
        colours = pixels.reshape(-1, 3) @ np.array([1, 256, 65536])  # one integer per colour: a fast unique
        assert len(np.unique(colours)) > 20, name  # not one colour


@pytest.mark.slow
def test_html_embeds_every_image_and_lists_every_trial(searched):
    page, out = searched["page"], searched["out"]
    embedded = [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]
    files = sorted(out.glob("*.png"))
    assert len(embedded) == len(files) and {(out / p.name).read_bytes() for p in files} == set(embedded)
    listed = [cells[1] for _, cells in table_cells(page)]
    assert sorted(listed) == sorted(t.trial_id for t in searched["results"].trials)
    assert "overall" in page and "max is better" in page and "best trial" in page


@pytest.mark.slow
def test_figures_show_the_trials_the_table_lists(searched):
    from search.report import read_search

    search = read_search(searched["experiment"])
    listed = [cells[1] for _, cells in table_cells(searched["page"])]
    with_results = [tid for tid in listed if search.histories[tid]]
    ax = plots.learning_curves(search.results, search.histories, search.launch.max_t).axes[0]
    assert lines_of(ax) == with_results  # the same trials, in the table's order
    tasks = plots.task_curves(search.results, search.histories, top=3)
    assert lines_of(tasks.axes[0]) == with_results[:3]
    grads = plots.gradient_curves(search.results, search.histories, top=len(listed))
    assert lines_of(grads.axes[0]) == with_results


@pytest.mark.slow
def test_pruned_trials_are_marked_stopped(searched):
    rows = {cells[1]: (kind, cells) for kind, cells in table_cells(searched["page"])}
    pruned = [t for t in searched["results"].trials if t.state == "PRUNED"]
    assert pruned, "ASHA stopped no trial in this search"
    for t in pruned:
        kind, cells = rows[t.trial_id]
        assert kind in ("stopped", "best") and f"stopped early by ASHA after {t.iterations} of 4" in cells
    for t in searched["results"].trials:
        if t.state == "COMPLETE":
            assert "ran its full budget" in rows[t.trial_id][1]


@pytest.mark.slow
def test_a_trial_without_results_is_reported_missing(searched):
    copy = searched["tmp"] / "copy"
    shutil.copytree(searched["experiment"], copy)
    lost = min(p for p in copy.iterdir() if p.name.startswith("trial_"))
    for name in ("result.json", "progress.csv"):
        (lost / name).unlink()
    trial_id = lost.name.removeprefix("trial_")
    page = write_report(copy, searched["tmp"] / "out-copy", log=lambda line: None).read_text()
    assert f"have reported no results yet: {trial_id}" in page
    ax_labels = re.findall(r"<td>([0-9a-f]{8})</td>", page)
    assert trial_id in ax_labels
