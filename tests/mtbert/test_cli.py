"""mtbert-train end to end: a short run's JSON, its files, and bad input refused before work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mtbert.cli import main


def run_cli(*args: str, env_data: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ}
    if env_data is not None:
        env["MTBERT_DATA"] = env_data
    return subprocess.run([sys.executable, "-m", "mtbert.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow
def test_short_run_prints_json_and_writes_predictions(data_dir, token_cache, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: {encoder: tiny}\ntrain: {max_steps: 6, eval_every: 3}\n")
    out = run_cli(str(config), "--json", "--no-progress", "--set", f"train.out_dir={tmp_path / 'out'}",
                  "--set", f"data.cache_dir={token_cache}", "--set", "data.max_train_per_task=64",
                  "--set", "data.max_eval_per_task=32", "--set", "sampling.batch_size=8",
                  env_data=str(data_dir))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ("sst_acc", "para_acc", "sts_pearson", "overall", "steps", "train_samples_per_s", "checkpoint"):
        assert key in result, key
    assert result["steps"] == 6 and result["train_samples_per_s"] > 0
    assert result["overall"] == pytest.approx(
        (result["sst_acc"] + result["para_acc"] + (1 + result["sts_pearson"]) / 2) / 3)
    assert result["selection_dev_examples"] == {"sst": 32, "para": 32, "sts": 32}
    # the Quora files' malformed rows are reported, with file and line
    assert "quora-train.csv:11662" in out.stderr and "quora-dev.csv:2577" in out.stderr
    predictions = tmp_path / "out" / "best" / "predictions"
    sst_dev = (predictions / "sst-dev-output.csv").read_text().splitlines()
    assert sst_dev[0] == "id \t Predicted_Sentiment " and len(sst_dev) == 1 + 1101
    assert (predictions / "sts-test-output.csv").is_file()
    assert result["dev"] == "full"


def test_quick_run_without_final_evaluation(small_run, capsys):
    config = small_run(**{"train.final_eval": False, "train.max_steps": 4, "train.eval_every": 2})
    path = config.train.out_dir + ".yaml"
    from pathlib import Path

    Path(path).write_text(config.to_yaml())
    assert main([path, "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dev"] == "selection" and result["predictions"] is None
    assert result["overall"] == result["selection_metrics"]["overall"] and result["steps"] == 4


@pytest.mark.parametrize("yaml_text, message", [
    ("optim: {lr: 0}\n", "optim.lr: is 0.0, but must be > 0"),
    ("model: {encoder: tiny, freeze_depth: 9}\n", "model.freeze_depth: is 9, but 'tiny' has 2 layers"),
    ("sampling: {schedule: sequentail}\n", "did you mean 'sequential'"),
])
def test_bad_config_exits_2_before_any_work(tmp_path, capsys, yaml_text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    out_dir = tmp_path / "out"
    assert main([str(config), "--set", f"train.out_dir={out_dir}"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err
    assert not out_dir.exists()


def test_missing_data_folder_exits_2(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{encoder: tiny}}\ndata: {{dir: {tmp_path / 'nodata'}}}\n")
    assert main([str(config)]) == 2
    assert "nodata" in capsys.readouterr().err


def test_data_check_reports_quora_rows(data_dir, capsys):
    assert main(["data", "check", "--dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "quora-dev.csv:2577" in out and "quora-dev.csv:14222" in out
    assert "4 malformed row(s) in all" in out


@pytest.mark.parametrize("argv", [
    ["--set", "optim.lr=3e-5", "train.max_steps=100", "run.yaml"],
    ["run.yaml", "--set", "optim.lr=3e-5", "train.max_steps=100"],
    ["--set", "optim.lr=3e-5", "--set", "train.max_steps=100", "run.yaml", "--json"],
    ["--set", "optim.lr=3e-5", "train.max_steps=100", "--", "run.yaml"],
])  # fmt: skip
def test_set_takes_several_pairs_after_one_flag(argv):
    from mtbert.cli import parse_train_args

    args = parse_train_args(argv)
    assert args.config == "run.yaml" and args.overrides == ["optim.lr=3e-5", "train.max_steps=100"]


def test_several_set_pairs_all_apply(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model: {encoder: tiny}\n")
    out_dir = tmp_path / "out"
    assert main(["--set", f"train.out_dir={out_dir}", "optim.lr=0", str(config)]) == 2  # the second pair is read
    assert "optim.lr: is 0.0, but must be > 0" in capsys.readouterr().err and not out_dir.exists()
    with pytest.raises(SystemExit) as stop:  # a lone --set, no config: argparse's usage error
        main(["--set", "optim.lr=1e-5"])
    assert stop.value.code == 2 and "required: config" in capsys.readouterr().err
