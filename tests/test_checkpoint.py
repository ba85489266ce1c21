"""Checkpoints: round trip, resumable state, and refusing what is not ours to read."""

from __future__ import annotations

import pytest
import torch

from mtbert.checkpoint import CheckpointError, load_checkpoint, read_state, save_checkpoint
from mtbert.config import RunConfig
from mtbert.model import build_model
from mtbert.pretrained import load_encoder


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
    loaded, _, loaded_config, metrics = load_checkpoint(path)
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
