"""The final pick (``search.summary``): made-up trials whose order on the selection subset and on the
full dev sets differ. The full-dev winner among the top ``tune.final_top_k`` becomes the best; the
order reaches ``SearchResults.ranked`` (read back from summary.json), ``export``'s ranks and metadata,
and ``status``. A pick killed part way is finished by the next one without scoring anything twice."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

# trial: (selection overall, full-dev overall)
TRIALS = {"t1": (0.50, 0.41), "t2": (0.48, 0.45), "t3": (0.47, 0.43), "t4": (0.40, 0.49), "t5": (0.30, 0.20)}
SUBSET = 48


def made_up(experiment: Path):
    """A search folder's results: each trial's best checkpoint with its metrics.json (selection scores)."""
    from search.results import SearchResults, TrialRecord

    trials = []
    for trial_id, (selection, _) in TRIALS.items():
        checkpoint = experiment / f"trial_{trial_id}" / "checkpoint_000003"
        checkpoint.mkdir(parents=True)
        metrics = {"overall": selection, "sst_acc": selection - 0.1, "step": 12}
        (checkpoint / "metrics.json").write_text(json.dumps(metrics))
        best = {"overall": selection, "training_iteration": 3, "step": 12}
        trials.append(TrialRecord(trial_id=trial_id, status="TERMINATED", iterations=3, params={"optim.lr": 1e-3},
                                  best=best, last=best, checkpoint=checkpoint, path=checkpoint.parent,
                                  state="COMPLETE"))  # fmt: skip
    return SearchResults(experiment, "overall", "max", trials)


def space(final_eval: str = "best", top_k: int = 3):
    return SimpleNamespace(tune=SimpleNamespace(final_eval=final_eval, final_top_k=top_k),
                           base=SimpleNamespace(data=SimpleNamespace(max_eval_per_task=SUBSET)),
                           decode=lambda params: dict(params))  # fmt: skip


@pytest.fixture
def scored(monkeypatch):
    """``full_evaluation`` made up: each trial's full-dev score; the checkpoints it was called on."""
    import search.summary

    calls = []

    def full_evaluation(checkpoint, log=print):
        calls.append(Path(checkpoint).parent.name.removeprefix("trial_"))
        full = TRIALS[calls[-1]][1]
        return {"full_dev": {"overall": full, "sst_acc": full - 0.1}, "full_dev_examples": {"sst": 1101}}

    monkeypatch.setattr(search.summary, "full_evaluation", full_evaluation)
    return calls


def test_the_full_dev_winner_among_the_top_k_is_the_best_and_the_order_reaches_every_reader(tmp_path, scored,
                                                                                            monkeypatch):  # fmt: skip
    import search.export
    from search.export import TRIAL_FILE, export
    from search.results import read_final_pick
    from search.status import render, table
    from search.summary import summarize

    results = made_up(tmp_path)
    assert [t.trial_id for t in results.ranked()] == ["t1", "t2", "t3", "t4", "t5"]  # selection order
    summary = summarize(results, space(), log=lambda line: None)
    assert scored == ["t1", "t2", "t3"]  # the top 3 by selection only: t4's better full-dev score is not seen
    best = summary["best"]
    assert best["trial_id"] == "t2" and best["selection_rank"] == 2
    assert best["selection"]["overall"] == 0.48 and best["full_dev"]["overall"] == 0.45
    assert best["selection_dev_examples"] == SUBSET and best["full_dev_examples"] == {"sst": 1101}
    assert [(f["trial_id"], f["selection_rank"], f["full_dev"]["overall"]) for f in summary["finalists"]] == [
        ("t2", 2, 0.45), ("t3", 3, 0.43), ("t1", 1, 0.41)]  # fmt: skip
    assert summary["final_top_k"] == 3 and "top 3" in summary["rank_rule"]
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))

    # a reader of the folder gets the final order back from summary.json
    again = made_up_again(tmp_path)
    read_final_pick(again)
    final = ["t2", "t3", "t1", "t4", "t5"]
    assert [t.trial_id for t in again.ranked()] == final

    # export: ranks in that order, both scores in each rank's metadata
    monkeypatch.setattr(search.export, "checked_metrics", metrics_of)
    monkeypatch.setattr(search.export, "write_card", lambda *a, **k: None, raising=False)
    written = export(tmp_path, tmp_path / "out", top_k=4, results=again)
    infos = [json.loads((w / TRIAL_FILE).read_text()) for w in written]
    assert [i["trial_id"] for i in infos] == final[:4] and [i["rank"] for i in infos] == [1, 2, 3, 4]
    assert infos[0]["selection"]["overall"] == 0.48 and infos[0]["full_dev"]["overall"] == 0.45
    assert infos[0]["selection_dev_examples"] == SUBSET and infos[0]["finalist"]
    assert infos[3]["full_dev"] is None and not infos[3]["finalist"] and infos[3]["rank_rule"] == summary["rank_rule"]

    # status: rows in the final order, the full-dev column and what each score is on
    monkeypatch.setattr("search.engine.searcher.proposals", lambda experiment: {})
    df = table(again)
    assert list(df["trial_id"]) == final and list(df["full_dev_overall"][:3]) == [0.45, 0.43, 0.41]
    text = render(df)
    assert f"selection subset ({SUBSET} dev rows per task)" in text and "full_dev_overall: the best checkpoint" in text


def metrics_of(trial) -> dict:
    return json.loads((trial.checkpoint / "metrics.json").read_text())


def made_up_again(experiment: Path):
    """The same trials as a later command reads them (fresh records over the same folder)."""
    from search.results import SearchResults, TrialRecord

    trials = []
    for trial_id, (selection, _) in TRIALS.items():
        checkpoint = experiment / f"trial_{trial_id}" / "checkpoint_000003"
        best = {"overall": selection, "training_iteration": 3, "step": 12}
        trials.append(TrialRecord(trial_id=trial_id, status="TERMINATED", iterations=3, params={"optim.lr": 1e-3},
                                  best=best, last=best, checkpoint=checkpoint, path=checkpoint.parent,
                                  state="COMPLETE"))  # fmt: skip
    return SearchResults(experiment, "overall", "max", trials)


def test_a_finalist_whose_best_checkpoint_moved_on_falls_back_to_its_selection_place(tmp_path, scored):
    from search.results import read_final_pick
    from search.summary import summarize

    summarize(made_up(tmp_path), space(), log=lambda line: None)
    later = made_up_again(tmp_path)
    moved = later.trials[1]  # t2, resumed since, has a newer best checkpoint
    moved.checkpoint = moved.checkpoint.with_name("checkpoint_000005")
    read_final_pick(later)
    assert [t.trial_id for t in later.ranked()] == ["t3", "t1", "t2", "t4", "t5"]


def test_final_eval_none_keeps_the_selection_order_and_all_scores_every_trial(tmp_path, scored):
    from search.summary import summarize

    results = made_up(tmp_path)
    summary = summarize(results, space("none"), log=lambda line: None)
    assert scored == [] and summary["finalists"] == [] and summary["best"]["trial_id"] == "t1"
    assert summary["best"]["full_dev"] is None and [t.trial_id for t in results.ranked()][:2] == ["t1", "t2"]

    summary = summarize(results, space("all", top_k=1), log=lambda line: None)
    assert [f["trial_id"] for f in summary["finalists"]] == ["t4", "t2", "t3", "t1", "t5"]
    assert summary["best"]["trial_id"] == "t4" and set(summary["full_dev"]) == set(TRIALS)


def test_a_final_pick_killed_part_way_is_finished_without_scoring_again(tmp_path, scored, monkeypatch):
    import search.summary
    from search.summary import FINAL_EVAL_FILE, summarize

    fake = search.summary.full_evaluation

    def killed_at_the_third(checkpoint, log=print):
        if len(scored) == 2:
            raise KeyboardInterrupt  # SIGKILL, as far as the folder can tell
        return fake(checkpoint, log)

    monkeypatch.setattr(search.summary, "full_evaluation", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        summarize(made_up(tmp_path), space(), log=lambda line: None)
    assert not (tmp_path / "summary.json").exists()
    assert len(json.loads((tmp_path / FINAL_EVAL_FILE).read_text())) == 2
    monkeypatch.setattr(search.summary, "full_evaluation", fake)
    summary = summarize(made_up_again(tmp_path), space(), log=lambda line: None)
    assert scored == ["t1", "t2", "t3"]  # t1 and t2 once, before the kill
    assert [f["trial_id"] for f in summary["finalists"]] == ["t2", "t3", "t1"]
