"""Checkpoints: round trip, resumable state, and refusing what is not ours to read."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import padded_batch

from mtbert.config import RunConfig
from mtbert.model.multitask import build_model
from mtbert.model.pretrained import load_encoder
from mtbert.train.checkpoint import CheckpointError, load_checkpoint, read_state, save_checkpoint


@pytest.fixture
def saved(tmp_path):
    config = RunConfig().with_overrides({"model.encoder": "tiny", "heads.sst.hidden": [16]})
    encoder, tokenizer = load_encoder("tiny")
    model = build_model(config, encoder)
    state = {"step": 3, "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]},
             "pair": (1, "a"), "rng": torch.tensor([1, 2], dtype=torch.uint8), "none": None}
    path = save_checkpoint(tmp_path / "ckpt", model, tokenizer, config, {"overall": 0.5}, state)
    return path, model, config, state


def test_round_trip(saved):
    path, model, config, state = saved
    checkpoint = load_checkpoint(path)
    loaded, loaded_config, metrics = checkpoint.model, checkpoint.config, checkpoint.metrics
    assert loaded_config.flat() == config.flat() and metrics == {"overall": 0.5}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    back = read_state(path)
    assert back["step"] == 3 and back["pair"] == (1, "a") and back["none"] is None
    assert list(back["optimizer"]["state"]) == [0]  # integer keys survive JSON
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], torch.ones(2))
    assert torch.equal(back["rng"], state["rng"]) and back["rng"].dtype == torch.uint8
    assert not (path.parent / "ckpt.tmp").exists()


def test_pickle_in_place_of_heads_is_refused(saved):
    path, model, _, _ = saved
    torch.save(model.state_dict(), path / "heads.safetensors")  # a pickle under the safetensors name
    with pytest.raises(CheckpointError, match=r"heads\.safetensors is not a readable safetensors file"):
        load_checkpoint(path)


def test_truncated_and_missing_files(saved):
    path, _, _, _ = saved
    (path / "metrics.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"metrics\.json is not valid JSON"):
        load_checkpoint(path)
    (path / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match=r"config\.yaml is missing; a checkpoint holds"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_checkpoint(path.parent / "nothing")


def test_heads_that_do_not_fit_the_config(saved):
    path, _, _, _ = saved
    (path / "config.yaml").write_text((path / "config.yaml").read_text().replace("- 16", "- 24", 1))
    with pytest.raises(CheckpointError, match=r"heads\.safetensors does not fit the heads in config\.yaml"):
        load_checkpoint(path)


# ---- merged layout: a model over TaskEncoders ---------------------------------------------------


@pytest.fixture
def saved_merged(tmp_path):
    from mtbert.model.multitask import to_specialists

    config = RunConfig().with_overrides({"model.encoder": "tiny", "heads.sst.hidden": [16]})
    encoder, tokenizer = load_encoder("tiny")
    model = to_specialists(build_model(config, encoder), 1, seed=3)
    with torch.no_grad():  # every task's top its own, as after phase-2 fine-tuning
        g = torch.Generator().manual_seed(0)
        for p in model.encoder.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    path = save_checkpoint(tmp_path / "ckpt", model, tokenizer, config, {"overall": 0.5})
    return path, model.eval()


def predictions(model) -> dict:
    batch = padded_batch(200, [9, 4, 6, 7])
    with torch.no_grad():
        return {t: model.predict(t, batch) for t in model.tasks}


def test_merged_round_trip(saved_merged):
    from mtbert.model.merge import TaskEncoders

    path, model = saved_merged
    assert not (path / "encoder").exists()
    assert json.loads((path / "merged.json").read_text()) == {"shared_depth": 1, "tasks": ["sst", "para", "sts"]}
    checkpoint = load_checkpoint(path)
    loaded, tokenizer = checkpoint.model, checkpoint.tokenizer
    assert isinstance(loaded.encoder, TaskEncoders) and loaded.encoder.shared_depth == 1
    assert loaded.encoder.branch("sst").encoder.layer[0] is loaded.encoder.branch("sts").encoder.layer[0]
    assert loaded.encoder.branch("sst").encoder.layer[1] is not loaded.encoder.branch("sts").encoder.layer[1]
    assert tokenizer("a b")["input_ids"][0] == tokenizer.cls_token_id
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    want, got = predictions(model), predictions(loaded.eval())
    for task in model.tasks:  # exact: a reloaded checkpoint promises its own predictions on one machine
        assert torch.equal(got[task].label, want[task].label), task
        assert (got[task].probs is None) == (want[task].probs is None)
        assert got[task].probs is None or torch.equal(got[task].probs, want[task].probs), task


def test_merged_encoders_load_in_transformers(saved_merged):
    from transformers import BertModel as HFBertModel

    path, model = saved_merged
    batch = padded_batch(200, [9, 4, 6])
    outputs = {}
    for task in model.tasks:
        hf = HFBertModel.from_pretrained(str(path / "encoders" / task)).eval()
        with torch.no_grad():
            want = hf(**batch)
            got = model.encoder(task, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        keep = batch["attention_mask"].bool()
        torch.testing.assert_close(got.last_hidden_state[keep], want.last_hidden_state[keep], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=1e-5, rtol=1e-5)
        outputs[task] = want.pooler_output
    assert not torch.allclose(outputs["sst"], outputs["para"])  # each directory holds its own task's top


def test_merged_files_that_are_wrong(saved_merged):
    from safetensors.torch import load_file, save_file

    path, _ = saved_merged
    weights = path / "encoders" / "para" / "model.safetensors"
    state = load_file(str(weights))
    state["embeddings.LayerNorm.bias"][0] += 1e-3
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"encoders\['para'\] differs .* in embeddings\.LayerNorm\.bias"):
        load_checkpoint(path)
    (path / "merged.json").write_text('{"shared_depth": 1, "tasks": ["sst", "para"]}')
    with pytest.raises(CheckpointError, match=r"merged\.json lists tasks \['sst', 'para'\], but .* need: sts"):
        load_checkpoint(path)
    (path / "merged.json").write_text('{"shared_depth": "one", "tasks": ["sst", "para", "sts"]}')
    with pytest.raises(CheckpointError, match=r"merged\.json holds .*, but must hold"):
        load_checkpoint(path)
    (path / "merged.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"merged\.json is not valid JSON"):
        load_checkpoint(path)
    (path / "merged.json").write_text('{"shared_depth": 1, "tasks": ["sst", "para", "sts"]}')
    shutil.rmtree(path / "encoders" / "sts")
    with pytest.raises(CheckpointError, match=r"encoders/sts is missing; merged\.json lists task 'sts'"):
        load_checkpoint(path)
    (path / "merged.json").unlink()
    with pytest.raises(CheckpointError, match=r"merged\.json is missing"):
        load_checkpoint(path)
