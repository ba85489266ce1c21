"""mtbert-train on bad input and interruptions: resume rules, empty data files, Ctrl-C, duplicate
YAML keys, infinite settings, and messages that say what is wrong in one line, with no traceback.

Runs are tiny (the tiny encoder, the fixture rows of tests/fixtures/course as train and dev sets) and
go through ``mtbert.cli.main`` in this process, except Ctrl-C, which needs a real process to signal.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtbert.cli import main
from mtbert.config import ConfigError, RunConfig
from mtbert.data.course import DataError, read_task
import helpers

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = helpers.FIXTURES / "course"
COURSE = {"sst": "ids-sst", "quora": "quora", "sts": "sts"}  # file prefixes
HEADERS = {"sst": "\tid\tsentence\tsentiment\n", "quora": "\tid\tsentence1\tsentence2\tis_duplicate\n",
           "sts": "\tid\tsentence1\tsentence2\tsimilarity\n"}  # fmt: skip


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokens")


def course(folder: Path) -> Path:
    """A data folder of the fixture rows, each dev file doubling as the train file."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in COURSE.values():
        shutil.copy(FIXTURES / f"{prefix}-dev.csv", folder / f"{prefix}-dev.csv")
        shutil.copy(FIXTURES / f"{prefix}-dev.csv", folder / f"{prefix}-train.csv")
    return folder


def config_file(tmp_path: Path, tokens: Path, data: Path | None = None, extra: str = "") -> Path:
    data_line = f"data: {{dir: {data}, cache_dir: {tokens}, max_length: 32}}" if data else f"data: {{cache_dir: {tokens}}}"
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: {encoder: tiny}\n" + data_line + "\n"
        "sampling: {batch_size: 4}\n"
        "heads: {sst: {hidden: [8]}, para: {hidden: [8]}, sts: {hidden: [8]}}\n"
        f"train: {{max_steps: 4, eval_every: 2, final_eval: false, out_dir: {tmp_path / 'run1'}}}\n" + extra
    )
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokens) -> Path:
    """A finished 4-step run (evaluations at 2 and 4), shared read-only: its folder holds run.yaml,
    data/ and run1/ (best/ and last/)."""
    folder = tmp_path_factory.mktemp("trained")
    assert main([str(config_file(folder, tokens, course(folder / "data"))), "--no-progress"]) == 0
    return folder


def one_error_line(err: str) -> str:
    """The single line a refused input prints (no traceback, nothing else)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mtbert-train"), err
    return lines[0]


# ---- 1. --resume refuses settings fixed at resume, takes the others ---------------------------------


@pytest.mark.parametrize("setting, shown", [
    ("heads.sst.kind=linear", ['heads.sst.kind is "linear"', "checkpoint's is \"mlp\""]),
    ("heads.para.hidden=[16]", ["heads.para.hidden is [16]", "checkpoint's is [8]"]),
    ("model.freeze_depth=1", ["model.freeze_depth is 1", "checkpoint's is 0"]),
    ("sampling.batch_size=2", ["sampling.batch_size is 2", "checkpoint's is 4"]),
    ("sampling.mixed=true", ["sampling.mixed is true", "checkpoint's is false", "one batch of every task"]),
    ("heads.sts.pooling=mean", ['heads.sts.pooling is "mean"', "checkpoint's is \"cls\""]),
    ("grad.method=pcgrad", ['grad.method is "pcgrad"', "checkpoint's is \"sum\""]),
    ("train.seed=3", ["train.seed is 3", "checkpoint's is 0"]),
    ("data.max_length=16", ["data.max_length is 16", "checkpoint's is 32"]),
    ("phases=[multitask, specialist]", ['phases is ["multitask", "specialist"]', "checkpoint's is [\"multitask\"]"]),
])  # fmt: skip
def test_resume_refuses_a_setting_fixed_at_resume_before_anything_is_written(trained, tmp_path, capsys, setting,
                                                                             shown):  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "O"
    code = main([str(trained / "run.yaml"), "--no-progress", "--set", setting, "--set", f"train.out_dir={out}",
                 "--resume", str(trained / "run1" / "last")])  # fmt: skip
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert f"--resume {trained / 'run1' / 'last'}" in line and "fixed at resume" in line
    for text in shown:
        assert text in line
    assert not out.exists()


def test_resume_takes_new_steps_rates_and_folder_and_its_checkpoints_resume_again(trained, tmp_path):
    config = trained / "run.yaml"
    out = tmp_path / "O"
    changed = ["--set", "train.max_steps=6", "--set", "train.eval_every=3", "--set", "optim.lr=2e-3",
               "--set", "optim.weight_decay=0.05", "--set", "heads.sst.dropout=0.1",
               "--set", f"train.out_dir={out}"]  # fmt: skip
    assert main([str(config), "--no-progress", *changed, "--resume", str(trained / "run1" / "last")]) == 0
    from mtbert.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(out / "last")
    saved, metrics = loaded.config, loaded.metrics  # the original failure: heads did not fit config.yaml
    assert metrics["step"] == 6 and saved.optim.lr == 2e-3 and saved.train.out_dir == str(out)
    assert saved.heads.sst.dropout == 0.1 and loaded.model.specs["sst"].dropout == 0.1  # may change at resume
    again = ["--set", "train.max_steps=8", "--set", "optim.lr=2e-3", "--set", "heads.sst.dropout=0.1",
             "--set", f"train.out_dir={out}"]  # fmt: skip
    assert main([str(config), "--no-progress", *again, "--resume", str(out / "last")]) == 0


def test_a_resume_trains_with_the_new_learning_rates(trained):
    """torch's optimizer and LambdaLR state bring back the saved rates; the new config's must win."""
    from mtbert.train.run import start
    from mtbert.validation import load_config

    config = load_config(trained / "run.yaml", {"optim.lr": "3e-3", "optim.head_lr": "7e-3", "optim.schedule": "constant",
                                                 "optim.warmup": "0", "optim.weight_decay": "0.2"})  # fmt: skip
    trainer = start(config, resume=trained / "run1" / "last")
    rates = {g["name"]: (g["lr"], g["weight_decay"]) for g in trainer.objective.optimizer.param_groups}
    assert rates == {"encoder": (3e-3, 0.2), "encoder_no_decay": (3e-3, 0.0), "heads": (7e-3, 0.2)}
    trainer.train_step()
    assert trainer.objective.scheduler.get_last_lr() == [3e-3, 3e-3, 7e-3]


def test_resume_conflicts_reach_into_a_phase_set():
    from mtbert.config import RESUME_FIXED, resume_conflicts

    saved = RunConfig().with_overrides({"model.encoder": "tiny", "phases": ["multitask", "multitask"]})
    new = saved.with_overrides({"phases.1.set": {"sampling.batch_size": 8}, "phases.1.steps": 50})
    conflicts = resume_conflicts(saved, new)
    assert len(conflicts) == 1
    assert conflicts[0].startswith("phases.1.set.sampling.batch_size is 8, but the checkpoint's is 32 (the task schedule")
    assert resume_conflicts(saved, saved.with_overrides({"optim.lr": 1e-3, "train.out_dir": "x"})) == []
    assert "model" in RESUME_FIXED and "heads" in RESUME_FIXED and "optim" not in RESUME_FIXED


# ---- 2. the reported checkpoint exists ---------------------------------------------------------------


def test_resume_into_another_folder_reports_a_best_checkpoint_that_exists(trained, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "O"
    # no step left to train: the best is the resumed run's, which must come across to O
    assert main([str(trained / "run.yaml"), "--no-progress", "--json", "--set", f"train.out_dir={out}",
                 "--resume", str(trained / "run1" / "last")]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    best = Path(result["checkpoint"])
    assert best == out / "best" and best.is_dir()
    from mtbert.train.checkpoint import load_checkpoint

    metrics = load_checkpoint(best).metrics
    assert metrics["step"] == result["best_step"]
    assert metrics["overall"] == pytest.approx(result["overall"], nan_ok=True)


# ---- 3. a data file without rows fails in the loader, naming it ---------------------------------------


@pytest.mark.parametrize("task, split, file", [("sst", "train", "ids-sst-train.csv"), ("sts", "dev", "sts-dev.csv")])
def test_a_header_only_file_exits_2_naming_it_before_training(tmp_path, tokens, capsys, task, split, file):
    data = course(tmp_path / "data")
    (data / file).write_text(HEADERS[task])
    config = config_file(tmp_path, tokens, data)
    assert main([str(config), "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(data / file) in line and f"(the {task} {split} file)" in line and "no rows" in line
    assert "columns: (index), id," in line  # what is expected
    assert not (tmp_path / "run1").exists()


def test_an_empty_file_says_it_is_empty(tmp_path):
    data = course(tmp_path / "data")
    (data / "quora-dev.csv").write_text("")
    with pytest.raises(DataError, match=r"quora-dev\.csv is empty \(the quora dev file: 0 bytes, no header line\)"):
        read_task(data, "quora", "dev")
    (data / "quora-dev.csv").write_text("\tid\tsentence1\tsentence2\tis_duplicate\n0\tq1\tA?\tB?\t7\n")
    with pytest.raises(DataError, match=r"no usable row \(the quora dev file\): all 1 are malformed, e\.g\. line 2"):
        read_task(data, "quora", "dev")


def test_a_search_refuses_an_empty_file_before_ray_starts_or_a_folder_is_made(tmp_path, tokens, capsys):
    """A search reads and tokenises its trials' data in the driver before it takes a folder or starts
    Ray: an empty file exits 2 naming it, instead of failing in every trial after their retries."""
    from search.cli import main as search_main

    data = course(tmp_path / "data")
    (data / "ids-sst-train.csv").write_text(HEADERS["sst"])
    space = tmp_path / "space.yaml"
    space.write_text(f"model: {{encoder: tiny}}\ndata: {{dir: {data}, cache_dir: {tokens}}}\n"
                     "search:\n  optim.lr: {loguniform: [1.0e-5, 1.0e-3]}\n"
                     f"tune: {{num_samples: 2, storage_path: {tmp_path / 'results'}}}\n")  # fmt: skip
    assert search_main([str(space)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ids-sst-train.csv has a header but no rows (the sst train file)" in err[0], err
    assert not (tmp_path / "results").exists()


# ---- 4. Ctrl-C ---------------------------------------------------------------------------------------


def test_ctrl_c_saves_last_prints_the_resume_command_and_exits_130(tmp_path, tokens):
    config = config_file(tmp_path, tokens, course(tmp_path / "data"))
    out = tmp_path / "out"
    sets = ["--set", "train.max_steps=100000", "--set", "train.eval_every=3", "--set", f"train.out_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mtbert.cli", str(config), "--no-progress", *sets],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (out / "last" / "metrics.json").exists():  # the first evaluation's save: training runs
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    step = int(stderr.split("interrupted at step ")[1].split()[0])
    metrics = json.loads((out / "last" / "metrics.json").read_text())
    assert metrics["step"] == step and (out / "last" / "state" / "state.json").is_file()
    command = stderr.split("continue with: ")[1].splitlines()[0]
    assert shlex.split(command) == ["mtbert-train", str(config), *sets, "--resume", str(out / "last"), "--no-progress"]
    # the printed command goes on from there (with fewer steps, so that it ends)
    argv = shlex.split(command)[1:] + ["--set", f"train.max_steps={step + 1}", "--json"]
    assert main(argv) == 0


def test_a_stop_between_evaluations_saves_last_and_resumes_exactly(tmp_path, tokens):
    from mtbert.train.checkpoint import load_checkpoint
    from mtbert.train.loop import TrainingInterrupted
    from mtbert.train.run import train
    from mtbert.validation import load_config

    config = load_config(config_file(tmp_path, tokens, course(tmp_path / "data")),
                         {"train.max_steps": "6", "train.eval_every": "4"})  # fmt: skip
    straight = train(config, checkpoint_dir=tmp_path / "straight")
    steps = []

    def stop() -> bool:
        steps.append(1)
        return len(steps) == 3  # after step 3, between the evaluations at 4 and 6... and before 4's

    with pytest.raises(TrainingInterrupted) as stopped:
        train(config, checkpoint_dir=tmp_path / "cut", stop=stop)
    assert stopped.value.step == 3 and stopped.value.checkpoint == tmp_path / "cut" / "last"
    assert json.loads((tmp_path / "cut" / "last" / "metrics.json").read_text())["step"] == 3
    resumed = train(config, checkpoint_dir=tmp_path / "cut", resume=tmp_path / "cut" / "last")
    want = load_checkpoint(tmp_path / "straight" / "last").model.state_dict()
    got = load_checkpoint(tmp_path / "cut" / "last").model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    timing = {"train_samples_per_s", "train_seconds"}
    assert [{k: v for k, v in m.items() if k not in timing} for m in resumed.history] == \
        [{k: v for k, v in m.items() if k not in timing} for m in straight.history]  # fmt: skip


# ---- 5. duplicate YAML keys ------------------------------------------------------------------------------


def test_a_duplicate_key_exits_2_naming_file_key_and_both_lines(tmp_path, capsys):
    config = tmp_path / "dup.yaml"
    config.write_text("model: {encoder: tiny}\noptim:\n  lr: 1.0e-5\n  head_lr: 1.0e-3\n  lr: 2.0e-5\n")
    assert main([str(config), "--set", f"train.out_dir={tmp_path / 'out'}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(config) in line and "duplicate key 'lr' on line 5 (first on line 3)" in line
    assert not (tmp_path / "out").exists()


def test_the_unique_key_loader_reads_plain_yaml_and_refuses_a_repeated_section():
    from mtbert.config import load_yaml

    assert load_yaml("a: {b: 1}\nc: [1, 2]\n") == {"a": {"b": 1}, "c": [1, 2]}
    with pytest.raises(Exception, match=r"duplicate key 'train' on line 3 \(first on line 1\)"):
        load_yaml("train: {max_steps: 5}\nmodel: {encoder: tiny}\ntrain: {eval_every: 5}\n")


# ---- 6. infinite and NaN settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("setting, key", [
    ("optim.lr=.inf", "optim.lr"), ("optim.weight_decay=.inf", "optim.weight_decay"),
    ("losses.sst.weight=.inf", "losses.sst.weight"), ("mlm.epochs=.inf", "mlm.epochs"),
    ("grad.weights.sts=.inf", "grad.weights.sts"), ("losses.para.weight=.nan", "losses.para.weight"),
    ("optim.clip_norm=1e999", "optim.clip_norm"),
])  # fmt: skip
def test_a_non_finite_number_exits_2_before_any_folder(tmp_path, tokens, capsys, setting, key):
    config = config_file(tmp_path, tokens, course(tmp_path / "data"))
    assert main([str(config), "--set", setting, "--set", f"train.out_dir={tmp_path / 'out'}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{key}: is " in line and "but must be a finite number" in line
    assert not (tmp_path / "out").exists()


def test_a_non_finite_phase_rate_is_refused():
    with pytest.raises(ConfigError, match=r"phases\.0\.lr: is inf, but must be a finite number or null"):
        RunConfig().with_overrides({"model.encoder": "tiny", "phases": [{"kind": "multitask", "lr": float("inf")}]})


# ---- 7. messages that say what is wrong, exit codes, strict JSON -------------------------------------------


def test_a_folder_as_config_says_it_is_a_folder(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{tmp_path} is a folder; expected a run config YAML file" in line


def test_a_file_as_data_folder_says_it_is_a_file(tmp_path, tokens, capsys, monkeypatch):
    config = config_file(tmp_path, tokens)  # data.dir null: $MTBERT_DATA
    monkeypatch.setenv("MTBERT_DATA", str(config))
    assert main([str(config)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"data folder {config} (from $MTBERT_DATA) is a file; it must be a folder" in line


def test_data_check_exits_2_naming_each_unusable_file(tmp_path, capsys):
    data = course(tmp_path / "data")
    assert main(["data", "check", "--dir", str(data)]) == 0  # malformed rows alone are reported, not fatal
    (data / "sts-dev.csv").write_text(HEADERS["sts"])
    (data / "quora-train.csv").write_bytes(b"\tid\tsentence1\tsentence2\tis_duplicate\n0\tq\t\xff\tb\t1\n")
    capsys.readouterr()
    assert main(["data", "check", "--dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"sts dev: {data / 'sts-dev.csv'} has a header but no rows" in err
    assert f"quora train: {data / 'quora-train.csv'}:2: not UTF-8" in err
    assert f"2 file(s) cannot be used: {data / 'quora-train.csv'}, {data / 'sts-dev.csv'}" in err


def test_json_output_is_strict_json(tmp_path, tokens, capsys):
    data = course(tmp_path / "data")
    # every STS dev label the same: Pearson's r is undefined (NaN)
    (data / "sts-dev.csv").write_text(HEADERS["sts"] + "".join(f"{i}\ts{i}\tA man{i}.\tA dog{i}.\t2.0\n" for i in range(4)))
    config = config_file(tmp_path, tokens, data)
    assert main([str(config), "--no-progress", "--json"]) == 0
    text = capsys.readouterr().out

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    result = json.loads(text, parse_constant=refuse)
    assert result["sts_pearson"] is None and result["selection_metrics"]["sts_pearson"] is None
    assert isinstance(result["sst_acc"], float)


def corrupt_heads(ckpt: Path) -> None:
    (ckpt / "heads.safetensors").write_bytes(b"not safetensors")


def corrupt_state(ckpt: Path) -> None:
    (ckpt / "state" / "state.json").write_text("{")


def state_without_step(ckpt: Path) -> None:
    state = json.loads((ckpt / "state" / "state.json").read_text())
    state["__dict__"] = [kv for kv in state["__dict__"] if kv[0] != "step"]
    (ckpt / "state" / "state.json").write_text(json.dumps(state))


def no_config(ckpt: Path) -> None:
    (ckpt / "config.yaml").unlink()


@pytest.mark.parametrize("damage, message", [
    (corrupt_heads, "heads.safetensors is not a readable safetensors file"),
    (corrupt_state, "state.json is not valid JSON"),
    (state_without_step, "its saved state lacks 'step'"),
    (no_config, "config.yaml is missing; --resume takes a checkpoint folder"),
])  # fmt: skip
def test_a_damaged_checkpoint_to_resume_exits_2_in_one_line(trained, tmp_path, capsys, damage, message):
    last = tmp_path / "last"
    shutil.copytree(trained / "run1" / "last", last)
    damage(last)
    capsys.readouterr()
    out = tmp_path / "out"
    assert main([str(trained / "run.yaml"), "--no-progress", "--set", f"train.out_dir={out}", "--resume", str(last)]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["{cfg}", "--set", "optim.lr"], "'optim.lr' must look like KEY=VALUE"),
    (["{tmp}/missing.yaml"], "missing.yaml does not exist; expected a run config YAML file"),
    (["{bin}"], "is not UTF-8 text"),
    (["{cfg}", "--resume", "{tmp}/nowhere"], "checkpoint {tmp}/nowhere does not exist"),
    (["{cfg}", "--resume", "{cfg}"], "is a file; --resume takes a checkpoint folder"),
    (["{cfg}", "--set", "train.out_dir={cfg}"], "which is a file; it must be a folder"),
])  # fmt: skip
def test_other_bad_input_exits_2_in_one_line(tmp_path, tokens, capsys, args, message):
    cfg = config_file(tmp_path, tokens, course(tmp_path / "data"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"model: {encoder: \xff}\n")
    fill = {"cfg": str(cfg), "tmp": str(tmp_path), "bin": str(binary)}
    assert main([a.format(**fill) for a in args]) == 2
    assert message.format(**fill) in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("device,says", [
    ("tpu", "train.device: is 'tpu', but must be auto, cpu, cuda or cuda:N"),
    ("cuda:7", "train.device: is 'cuda:7', but this torch"),
])  # fmt: skip
def test_a_device_this_torch_cannot_use_exits_2_before_training(tmp_path, tokens, capsys, monkeypatch, device, says):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    config = config_file(tmp_path, tokens, course(tmp_path / "data"))
    out = tmp_path / "out"
    assert main([str(config), "--set", f"train.device={device}", "--set", f"train.out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not out.exists()


def test_an_out_dir_that_cannot_be_made_exits_2_before_training(tmp_path, tokens, capsys):
    config = config_file(tmp_path, tokens, course(tmp_path / "data"))
    assert main([str(config), "--set", "train.out_dir=/proc/no-such-folder/run"]) == 2  # /proc takes no folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.out_dir: is '/proc/no-such-folder/run', but /proc is not writable" in err[0], err
