"""The run config: YAML sections, dotted keys, overrides and the messages for bad values."""

from __future__ import annotations

import pytest

from mtbert.config import ConfigError, RunConfig, all_keys, parse_set
from mtbert.validation import load_config
import helpers


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_and_stable_names():
    keys = all_keys()
    for key in ("data.dir", "data.max_train_per_task", "data.max_eval_per_task", "model.encoder",
                "model.freeze_depth", "optim.lr", "train.max_steps", "train.eval_every", "train.seed",
                "grad.method", "sampling.alpha", "sampling.ratios.para", "heads.sst.kind", "losses.sts.kind"):
        assert key in keys, key
    assert RunConfig().flat()["optim.lr"] == 5e-5


def test_yaml_sections_and_number_forms(tmp_path):
    cfg = load_config(write(tmp_path, """
model: {encoder: tiny, freeze_depth: 1}
optim: {lr: 1e-5, head_lr: 3.0e-4}
sampling: {schedule: ratios, ratios: {sst: 0, para: 3, sts: 1}}
heads: {sst: {kind: linear, hidden: []}}
search: {ignored: here}
"""))
    assert cfg.optim.lr == 1e-5 and cfg.optim.head_lr == 3e-4  # 1e-5 is a string to YAML 1.1
    assert (cfg.sampling.ratios.sst, cfg.sampling.ratios.para) == (0.0, 3.0)
    assert cfg.model.freeze_depth == 1 and cfg.heads.sst.kind == "linear"


def test_overrides_parse_values(tmp_path):
    cfg = load_config(write(tmp_path, "model: {encoder: tiny}\ntrain: {eval_every: 7}\n"),
                      parse_set(["optim.lr=2e-5", "train.max_steps=7", "heads.sst.hidden=[64, 32]", "data.dir=null"]))
    assert cfg.optim.lr == 2e-5 and cfg.train.max_steps == 7 and cfg.heads.sst.hidden == [64, 32]
    assert cfg.flat() == RunConfig().with_overrides(
        {"model.encoder": "tiny", "train.eval_every": 7, "optim.lr": 2e-5, "train.max_steps": 7, "heads.sst.hidden": [64, 32]}).flat()


BAD = [
    ("optim: {lrr: 1e-5}", r"run\.yaml: optim\.lrr: unknown setting \(did you mean 'optim\.lr'\?\)"),
    ("optimizer: {lr: 1e-5}", r"optimizer: unknown setting \(did you mean 'optim'\?\)"),
    ("optim: {lr: -1e-5}", r"optim\.lr: is -1e-05, but must be > 0"),
    ("optim: {lr: fast}", r"optim\.lr: is \"fast\", but must be a number"),
    ("sampling: {alpha: 1.5}", r"sampling\.alpha: is 1\.5, but must be in \[0\.0, 1\.0\]"),
    ("model: {encoder: tiny, freeze_depth: 3}", r"model\.freeze_depth: is 3, but 'tiny' has 2 layers \(allowed: 0 to 2"),
    ("sampling: {schedule: ratios, ratios: {sst: 0, para: 0, sts: 0}}", r"sampling\.ratios: are all zero"),
    ("grad: {method: pcgard}", r"grad\.method: unknown 'pcgard'.*choose from: .*sum"),
    ("sampling: {schedule: roundrobin}", r"sampling\.schedule: unknown 'roundrobin' \(did you mean 'round_robin'\?\)"),
    ("train: {max_steps: 10, eval_every: 20}", r"train\.eval_every: is 20, but must be <= train\.max_steps \(10\)"),
    ("train: {max_steps: ten}", r"train\.max_steps: is \"ten\", but must be an integer"),
    ("train: {bf16: 1}", r"train\.bf16: is 1, but must be true or false"),
    ("heads: {sst: {hidden: 128}}", r"heads\.sst\.hidden: is 128, but must be a list of int"),
    ("heads: {sst: {dropout: 1.0}}", r"heads\.sst\.dropout: is 1\.0, but must be in \[0\.0, 1\.0\)"),
    ("optim: [1, 2]", r"optim: must be a mapping"),
    ("losses: {para: {kind: mnr}}", r"heads\.para\.kind: losses\.para\.kind 'mnr' needs sentence embeddings"),
    ("heads: {para: {kind: cosine, pair_encoding: concat}}", r"heads\.para\.kind: .*siamese"),
    ("model: {shared_pair_layer: true}\nheads: {para: {hidden: [64]}}",
     r"model\.shared_pair_layer: .*heads\.para\.hidden is \[64\] and heads\.sts\.hidden is \[128\]"),
    ("heads: {para: {features: [u, w]}}", r"heads\.para\.features: is \[\"u\", \"w\"\], but must be a non-empty list of"),
    ("optim: {lr: 1e-5", r"run\.yaml: yaml: not valid YAML"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.split(":")[0].replace("\\", "") for _, m in BAD])
def test_bad_configs_name_key_value_and_rule(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"--set: optim\.lrate: unknown setting \(did you mean 'optim\.lr'\?\)"):
        load_config(write(tmp_path, ""), parse_set(["optim.lrate=1"]))
    with pytest.raises(ConfigError, match=r"must look like KEY=VALUE"):
        parse_set(["optim.lr"])
    with pytest.raises(ConfigError, match=r"nothere\.yaml does not exist"):
        load_config(tmp_path / "nothere.yaml")


def test_partial_section_keeps_its_own_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "heads: {para: {hidden: [64]}}\n"))
    assert (cfg.heads.para.kind, cfg.heads.para.hidden, cfg.heads.sts.kind) == ("concat", [64], "regression")


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig().with_overrides({"model.encoder": "tiny", "sampling.ratios.sst": 2})
    path = tmp_path / "again.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path).flat() == cfg.flat()


def test_shipped_example_config_is_valid():

    cfg = load_config(helpers.REPO / "configs" / "example.yaml")
    assert cfg.model.encoder == "all-MiniLM-L6-v2" and cfg.train.max_steps > 0
