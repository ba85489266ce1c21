"""One real search (the CLI in a subprocess: Ray, Optuna, ASHA, the tiny encoder on a few hundred real
rows), then what it left behind: the summary, the Optuna study, TensorBoard files, status and export."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import MAX_T, NUM_SAMPLES, cli, trial_dirs, trial_rows
from optuna.trial import TrialState

from search.launch import Launch


@pytest.fixture(scope="module")
def search_run(smoke_search):
    return smoke_search


@pytest.mark.slow
def test_summary_names_the_best_trial_and_its_scores(search_run):
    summary = search_run["summary"]
    assert summary["trials"] == NUM_SAMPLES
    best = summary["best"]
    assert set(best["params"]) == {"optim.lr", "optim.head_lr"}
    assert 1e-6 <= best["params"]["optim.lr"] <= 1e-2
    assert set(best["selection"]) >= {"sst_acc", "para_acc", "sts_pearson", "overall"}
    assert best["selection_dev_examples"] == 48
    # the best checkpoint scored on the full dev sets, with prediction files
    assert set(best["full_dev"]) >= {"sst_acc", "para_acc", "sts_pearson", "overall"}
    assert (Path(best["checkpoint"]) / "predictions" / "sst-dev-output.csv").is_file()
    # the final pick: the top 3 trials by selection score (tune.final_top_k's default), each with both
    # scores, best first on the full dev sets; the best is the first of them
    best_rows = {d.name.removeprefix("trial_"): max(r["overall"] for r in trial_rows(d))
                 for d in trial_dirs(search_run["experiment"])}  # fmt: skip
    top = sorted(best_rows, key=lambda t: (-best_rows[t], t))[:3]
    finalists = summary["finalists"]
    assert summary["final_top_k"] == 3 and sorted(f["trial_id"] for f in finalists) == sorted(top)
    for f in finalists:
        assert f["selection"]["overall"] == pytest.approx(best_rows[f["trial_id"]])  # as the summary's own check above
        assert top[f["selection_rank"] - 1] == f["trial_id"]
        assert set(f["full_dev"]) >= {"sst_acc", "para_acc", "sts_pearson", "overall"}
        assert f["full_dev_examples"]["sst"] > 48  # the whole sst dev set, not the subset
        assert Path(f["checkpoint"], "predictions", "sst-dev-output.csv").is_file()
    full = [f["full_dev"]["overall"] for f in finalists]
    assert full == sorted(full, reverse=True) and best["trial_id"] == finalists[0]["trial_id"]
    assert best["full_dev"] == finalists[0]["full_dev"]
    assert Path(best["config"]).is_file() and "tiny" in Path(best["config"]).read_text()
    assert json.loads((search_run["experiment"] / "summary.json").read_text())["best"]["trial_id"] == best["trial_id"]


@pytest.mark.slow
def test_trials_asha_stopped_are_pruned_in_the_optuna_study(search_run):
    from search.engine.searcher import load_searcher

    experiment = search_run["experiment"]
    searcher = load_searcher(experiment)
    pruned = complete = 0
    for trial_dir in trial_dirs(experiment):
        trial_id = trial_dir.name.removeprefix("trial_")
        rows = trial_rows(trial_dir)
        frozen = searcher.optuna_trial(trial_id)
        intermediate = {r["training_iteration"]: r["overall"] for r in rows}
        assert frozen.intermediate_values == pytest.approx(intermediate), trial_id
        if len(rows) < MAX_T:  # ASHA stopped it
            assert frozen.state == TrialState.PRUNED, trial_id
            pruned += 1
        else:
            assert frozen.state == TrialState.COMPLETE, trial_id
            assert frozen.value == pytest.approx(rows[-1]["overall"])
            complete += 1
    assert pruned >= 1 and complete >= 1, (pruned, complete)
    assert len(searcher.study().trials) == NUM_SAMPLES


@pytest.mark.slow
def test_tensorboard_has_every_trial_with_its_metrics_and_hparams(search_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dirs = trial_dirs(search_run["experiment"])
    assert len(dirs) == NUM_SAMPLES
    # its run config names Tune's CSV and JSON loggers itself (a resume keeps Tune's automatic ones off)
    assert Launch.read(search_run["experiment"]).explicit_loggers is True
    for trial_dir in dirs:
        events = EventAccumulator(str(trial_dir))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        # the search's own curves only: Tune adds no TensorBoard logger of its own (ray/tune/* tags)
        assert not any(tag.startswith("ray/") for tag in tags), sorted(tags)
        expected = {"dev/overall", "dev/sst_acc", "dev/para_acc", "dev/para_f1", "dev/sts_pearson",
                    "train/train_loss_sst", "train/train_loss_para", "train/train_loss_sts", "train/lr",
                    "train/train_samples_per_s", "grad/grad_conflict_frac", "grad/grad_cos_sst_para"}  # fmt: skip
        assert expected <= tags, expected - tags
        rows = trial_rows(trial_dir)
        for tag, key in (("dev/overall", "overall"), ("train/train_loss_sts", "train_loss_sts"), ("train/lr", "lr"),
                         ("grad/grad_conflict_frac", "grad_conflict_frac")):  # fmt: skip
            logged = {e.step: e.value for e in events.Scalars(tag)}
            assert logged == pytest.approx({r["step"]: r[key] for r in rows}, rel=1e-6), tag
        hparams = events.PluginTagToContent("hparams")
        assert "_hparams_/session_start_info" in hparams
        from tensorboard.plugins.hparams import plugin_data_pb2

        start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
        params = json.loads((trial_dir / "params.json").read_text())
        assert set(start.session_start_info.hparams) == {"optim.lr", "optim.head_lr"}
        assert start.session_start_info.hparams["optim.lr"].number_value == pytest.approx(params["optim.lr"])


@pytest.mark.slow
def test_status_formats(search_run, capsys):
    from search.cli import main

    experiment = str(search_run["experiment"])  # the command once as a user runs it, then in-process
    out = cli("status", experiment, "--format", "csv")
    assert out.returncode == 0, out.stderr
    import io

    df = pd.read_csv(io.StringIO(out.stdout))
    assert len(df) == NUM_SAMPLES
    assert {"trial_id", "status", "optuna", "iterations", "optim.lr", "optim.head_lr", "overall", "sst_acc",
            "para_acc", "sts_pearson"} <= set(df.columns)  # fmt: skip
    # best first: the final pick's finalists by full-dev score, then the others by selection score
    finalists = search_run["summary"]["finalists"]
    assert list(df["trial_id"][: len(finalists)]) == [f["trial_id"] for f in finalists]
    full = [f["full_dev"]["overall"] for f in finalists]
    assert list(df["full_dev_overall"][: len(finalists)]) == pytest.approx(full)  # floats read back from CSV text
    assert df["overall"][len(finalists) :].is_monotonic_decreasing
    assert set(df["optuna"]) <= {"COMPLETE", "PRUNED"} and "PRUNED" in set(df["optuna"])
    assert df.iloc[0]["trial_id"] == search_run["summary"]["best"]["trial_id"]
    assert main(["status", experiment, "--format", "markdown"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| trial_id | status | optuna | iterations |") and md[1].startswith("|---|")
    assert len(md) == 2 + NUM_SAMPLES + 2 and md[-1].startswith("scores: ")  # the table, a blank line, the legend
    assert main(["status", experiment]) == 0
    text = capsys.readouterr().out
    assert "trial_id" in text and len(text.splitlines()) == 1 + NUM_SAMPLES + 1
    assert "on the selection subset (48 dev rows per task); full_dev_overall: the best checkpoint" in text


@pytest.mark.slow
def test_export_top_2_reloads_and_reproduces_its_metrics(search_run):
    from transformers import BertModel

    from mtbert.data.prepare import prepare_data
    from mtbert.model.pretrained import load_tokenizer
    from mtbert.predict import evaluate
    from mtbert.train.checkpoint import load_checkpoint

    out = search_run["tmp"] / "export"
    result = cli("export", str(search_run["experiment"]), "--top-k", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["rank-1", "rank-2"]
    infos = [json.loads((out / f"rank-{k}" / "trial.json").read_text()) for k in (1, 2)]
    assert infos[0]["trial_id"] == search_run["summary"]["best"]["trial_id"]
    # ranked by the final pick: both are finalists (the top 3 by selection), best first on the full dev sets
    assert infos[0]["finalist"] and infos[1]["finalist"] and infos[0]["trial_id"] != infos[1]["trial_id"]
    assert infos[0]["full_dev"]["overall"] >= infos[1]["full_dev"]["overall"]
    assert infos[0]["selection_dev_examples"] == 48 and infos[0]["full_dev_examples"]["sst"] > 48
    assert infos[0]["selection"]["overall"] == infos[0]["score"] and "top 3" in infos[0]["rank_rule"]
    for rank, info in enumerate(infos, 1):
        folder = out / f"rank-{rank}"
        assert {p.name for p in folder.iterdir()} >= {"encoder", "heads.safetensors", "config.yaml", "metrics.json",
                                                      "trial.json"}  # fmt: skip
        assert not (folder / "state").exists()
        assert set(info["params"]) == {"optim.lr", "optim.head_lr"}
        loaded = load_checkpoint(folder)
        model, tokenizer, config, metrics = loaded.model, loaded.tokenizer, loaded.config, loaded.metrics
        assert metrics["overall"] == info["score"]
        # the same dev subset the search evaluated on: the numbers come back exactly
        data = prepare_data(config, tokenizer)
        again = evaluate(model, data.dev, torch.device("cpu")).metrics
        assert {k: again[k] for k in again} == {k: metrics[k] for k in again}
    hf = BertModel.from_pretrained(str(out / "rank-1" / "encoder"))
    assert hf.config.hidden_size == 32 and load_tokenizer(out / "rank-1" / "encoder").vocab_size > 1000
    # a second export into the same folder is refused
    again = cli("export", str(search_run["experiment"]), "--out", str(out))
    assert again.returncode == 2 and "rank-1 already exists" in again.stderr


def test_a_second_search_with_the_same_name_gets_its_own_folder(tmp_path):
    from types import SimpleNamespace

    from search.launch import free_name

    space = SimpleNamespace(tune=SimpleNamespace(storage_path=str(tmp_path), name="e2e"))
    assert free_name(space) is None
    (tmp_path / "e2e").mkdir()
    assert free_name(space) is None  # an empty folder is free
    (tmp_path / "e2e" / "search.json").write_text("{}")
    (tmp_path / "e2e-2").mkdir()
    assert free_name(space) == "e2e-3"
