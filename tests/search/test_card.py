"""Model cards: every export rank and every ensemble folder holds a README.md whose front matter is
Hugging Face model-card YAML, each metric labelled with the dev rows it came from, and whose
``transformers`` snippet loads the encoder as it says (the tiny encoder, offline)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from helpers import fixture_data, tiny_ensemble, tiny_search

from search.card import base_model, rank_card
from search.cli import main

KEYS = {("sst", "accuracy"): "sst_acc", ("quora", "accuracy"): "para_acc", ("quora", "f1"): "para_f1",
        ("sts", "pearsonr"): "sts_pearson", ("sts", "spearmanr"): "sts_spearman"}  # fmt: skip


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, text[:200]
    return yaml.safe_load(match.group(1))


def metrics_by_config(meta: dict) -> dict[str, dict]:
    """{dataset.config: {score key: (value, used_for_selection)}} from a card's model-index."""
    (index,) = meta["model-index"]
    out: dict[str, dict] = {}
    for result in index["results"]:
        dataset = result["dataset"]
        assert dataset["split"] == "dev" and result["task"]["type"] in ("text-classification", "sentence-similarity")
        for m in result["metrics"]:
            key = KEYS[dataset["type"], m["type"]]
            assert m["name"].endswith("(selection subset)" if dataset["config"] == "selection-subset" else "(full dev)")
            out.setdefault(dataset["config"], {})[key] = (m["value"], dataset["args"]["used_for_selection"])
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fixture_data(tmp_path_factory.mktemp("card") / "data")


@pytest.fixture(scope="module")
def exported(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("card")
    experiment, results = tiny_search(tmp, data)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr("search.export.load_results", lambda _: results)
        assert main(["export", str(experiment), "--top-k", "2", "--out", str(tmp / "best")]) == 0
    return tmp / "best"


def test_an_export_rank_has_a_model_card_whose_scores_say_where_they_came_from(exported):
    for rank in (1, 2):
        folder = exported / f"rank-{rank}"
        info = json.loads((folder / "trial.json").read_text())
        text = (folder / "README.md").read_text()
        meta = front_matter(text)
        assert {"tags", "pipeline_tag", "model-index"} <= set(meta) and "mtbert-search" in meta["tags"]
        assert "base_model" not in meta  # the random tiny encoder comes from no hub model
        selection = info.get("selection") or info["scores"]
        found = metrics_by_config(meta)
        assert set(found) == {"selection-subset"}  # this trial was never scored on the full dev sets
        assert found["selection-subset"] == {k: (selection[k], True) for k in KEYS.values()}
        (result, *_) = meta["model-index"][0]["results"]
        assert result["dataset"]["args"]["rows"] == 4  # data.max_eval_per_task of the trial
        assert f"trial {info['trial_id']}" in text and f"mtbert-train predict {folder} --task sst" in text
        assert "| `optim.lr` |" in text and "no score above is held out" in text


def test_the_card_loads_the_encoder_with_transformers_as_it_says(exported):
    from mtbert import load_encoder

    folder = exported / "rank-1"
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.DOTALL).group(1)
    assert f'AutoModel.from_pretrained("{folder}/encoder")' in code
    scope: dict = {}
    exec(code, scope)  # noqa: S102 -- the card's own lines: transformers, offline (HF_HUB_OFFLINE), from the folder
    tokenizer, encoder = scope["tokenizer"], scope["encoder"]
    batch = tokenizer(["A gorgeous, witty film."], return_tensors="pt")
    ours, _ = load_encoder(str(folder / "encoder"))
    with torch.inference_mode():
        theirs = encoder.eval()(**batch).last_hidden_state
        mine = ours.eval()(**batch).last_hidden_state
    # the same weights through two implementations (transformers' BERT, minBERT's fused layers): float32 rounding
    assert torch.allclose(theirs, mine, atol=1e-5)


def test_full_dev_scores_are_labelled_apart_from_the_selection_subset():
    from mtbert import RunConfig

    config = RunConfig().with_overrides({"data.max_eval_per_task": 200})  # the default encoder
    selection = {"sst_acc": 0.41, "para_acc": 0.7, "para_f1": 0.6, "sts_pearson": 0.7, "sts_spearman": 0.69,
                 "overall": 0.65}  # fmt: skip
    full = {k: v - 0.01 for k, v in selection.items()}
    info = {"rank": 1, "trial_id": "abc", "experiment": "/r/pcgrad", "selection": selection, "full_dev": full,
            "full_dev_examples": {"sst": 1101, "para": 20212, "sts": 863}, "finalist": True,
            "selection_dev_examples": 200, "params": {"optim.lr": 3e-5}}  # fmt: skip
    text = rank_card(Path("/nowhere/rank-1"), info, config)
    meta = front_matter(text)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    found = metrics_by_config(meta)
    assert found["selection-subset"] == {k: (selection[k], True) for k in KEYS.values()}
    assert found["full-dev"] == {k: (full[k], True) for k in KEYS.values()}  # a finalist: ranked on them
    rows = {r["dataset"]["type"]: r["dataset"]["args"]["rows"] for r in meta["model-index"][0]["results"]
            if r["dataset"]["config"] == "full-dev"}  # fmt: skip
    assert rows == {"sst": 1101, "quora": 20212, "sts": 863}
    assert "## Caveat" in text and "Quora duplicate questions" in text
    info["finalist"] = False
    assert all(not used for _, used in metrics_by_config(front_matter(rank_card(
        Path("/nowhere/rank-1"), info, config)))["full-dev"].values())  # fmt: skip


def test_base_model_is_the_hub_name_or_none():
    assert base_model("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_model("bert-base-uncased") == "bert-base-uncased"
    assert base_model("tiny") is None and base_model("/models/mine") is None and base_model("./mine") is None


def test_an_ensemble_folder_has_a_model_card(data, tmp_path, monkeypatch):
    out = tiny_ensemble(tmp_path, data, monkeypatch)
    report = json.loads((out / "report.json").read_text())
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    found = metrics_by_config(meta)
    # chosen on the full dev sets: labelled so
    assert found == {"full-dev": {k: (report["ensemble"]["dev"][k], True) for k in KEYS.values()}}
    for task, weights in report["ensemble"]["weights"].items():
        row = f"| {task} | `{report['combiners'][task]}` | " + ", ".join(f"{m} ({w:.3f})" for m, w in weights.items())
        assert row in text
    for m in report["members"]:
        assert f"`{m['checkpoint']}`" in text
    assert f"mtbert-train predict {out} --task sst" in text and "optimistic" in text


def test_the_card_of_a_real_search_labels_its_full_dev_and_selection_scores(smoke_search, tmp_path):
    """The session's search (tune.final_eval: best): rank-1's card gives the summary's full-dev scores
    as full-dev and its checkpoint's evaluation as the selection subset."""
    out = tmp_path / "best"
    assert main(["export", str(smoke_search["experiment"]), "--out", str(out)]) == 0
    best = smoke_search["summary"]["best"]
    info = json.loads((out / "rank-1" / "trial.json").read_text())
    assert info["trial_id"] == best["trial_id"]
    found = metrics_by_config(front_matter((out / "rank-1" / "README.md").read_text()))
    assert {k: v for k, (v, _) in found["full-dev"].items()} == {k: best["full_dev"][k] for k in KEYS.values()}
    assert {k: v for k, (v, _) in found["selection-subset"].items()} == {k: best["selection"][k] for k in KEYS.values()}
