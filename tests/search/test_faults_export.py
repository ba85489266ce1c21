"""Bad input to export, ensemble and report, and impossible values in a space file: each is refused
with exit 2 and one line naming the file and what is wrong, before any work, and nothing partial is
left behind.

The export and ensemble tests run on a search folder built by hand (``search.json``, the space, a
real tiny mtbert checkpoint per trial) with the trial records ``load_results`` would read from
Ray Tune's files handed in directly, so they take seconds. One slow test runs the command as a user
does, on a copy of the session's real search (``smoke_search``).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from mtbert.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mtbert.config import RunConfig
from mtbert.data.course import REQUIRED_FILES, TASK_FILES
from mtbert.model.multitask import build_model
from mtbert.model.pretrained import load_encoder
from search.cli import main
from search.space.file import SpaceError, load_space
from search.launch import Launch
from search.results import SearchResults, TrialRecord

SPACE = """\
model: {encoder: tiny}
data: {dir: /nonexistent/data}
search:
  optim.lr: {loguniform: [1.0e-5, 1.0e-3]}
tune: {num_samples: 3}
"""
TRIALS = ("t1", "t2", "t3")  # best first


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    config = RunConfig().with_overrides({"model.encoder": "tiny", "heads.sst.hidden": [16]})
    encoder, tokenizer = load_encoder("tiny")
    model = build_model(config, encoder)
    folder = tmp_path_factory.mktemp("checkpoint") / "checkpoint_000001"
    metrics = {"overall": 0.5, "sst_acc": 0.4, "step": 4}
    return save_checkpoint(folder, model, tokenizer, config, metrics, {"step": 4})


@pytest.fixture
def search(tmp_path, tiny_checkpoint, monkeypatch):
    """A finished search of three trials, each with a copy of a good checkpoint; the trial records
    stand in for Ray Tune's files."""
    experiment = tmp_path / "results" / "faults"
    Launch("faults.yaml", max_t=2).save(experiment, SPACE)
    trials = []
    for i, tid in enumerate(TRIALS):
        checkpoint = experiment / f"trial_{tid}" / "checkpoint_000001"
        shutil.copytree(tiny_checkpoint, checkpoint)
        best = {"overall": 0.6 - 0.1 * i, "training_iteration": 2, "step": 4}
        trials.append(TrialRecord(tid, "TERMINATED", 2, {"optim.lr": 1e-4}, best, best, checkpoint,
                                  checkpoint.parent, "COMPLETE"))  # fmt: skip
    results = SearchResults(experiment.resolve(), "overall", "max", trials)

    def load_results(folder):
        assert Path(folder).expanduser().resolve() == experiment.resolve(), folder
        return results

    monkeypatch.setattr("search.export.load_results", load_results)
    monkeypatch.setattr("search.ensemble.load_results", load_results)
    data = tmp_path / "data"  # the files an ensemble checks for before it starts, empty
    data.mkdir()
    for task, split in REQUIRED_FILES:
        (data / TASK_FILES[task][split]).touch()
    monkeypatch.setenv("MTBERT_DATA", str(data))
    return experiment


def checkpoint_of(experiment: Path, tid: str) -> Path:
    return experiment / f"trial_{tid}" / "checkpoint_000001"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def leftovers(out: Path) -> list[str]:
    """Whatever an export left at or beside OUT: rank folders and temporary folders."""
    names = [p.name for p in out.parent.iterdir() if p != out and p.name not in ("results", "data")]
    if out.is_dir():
        names += [f"{out.name}/{p.name}" for p in out.iterdir()]
    return sorted(names)


# ---- export: every checkpoint checked before anything is written ---------------------------------


def test_export_writes_complete_loadable_ranks(search, tmp_path, capsys):
    out = tmp_path / "best"
    assert main(["export", str(search), "--top-k", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "rank-1"), str(out / "rank-2")]
    assert leftovers(out) == ["best/rank-1", "best/rank-2"]
    for rank, tid in ((1, "t1"), (2, "t2")):
        folder = out / f"rank-{rank}"
        info = json.loads((folder / "trial.json").read_text())
        assert (info["rank"], info["trial_id"], info["score"]) == (rank, tid, pytest.approx(0.7 - 0.1 * rank))
        assert info["scores"] == {"overall": 0.5, "sst_acc": 0.4} and info["step"] == 4
        assert not (folder / "state").exists()
        loaded = load_checkpoint(folder)
        config, metrics = loaded.config, loaded.metrics
        assert config.model.encoder == "tiny" and metrics["overall"] == 0.5


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _torch_save(path: Path) -> None:
    torch.save({"w": torch.ones(2)}, path)


def _pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))


CORRUPT = {  # file in the checkpoint, how it is spoilt, what the error says
    "truncated heads": ("heads.safetensors", _truncate, "is not a readable safetensors file"),
    "heads a torch.save archive": ("heads.safetensors", _torch_save, "it is a pickle"),
    "heads a pickle": ("heads.safetensors", _pickle, "it is a pickle"),
    "truncated encoder": ("encoder/model.safetensors", _truncate, "is not a readable safetensors file"),
    "metrics not JSON": ("metrics.json", lambda p: p.write_text("{not json"), "is not valid JSON"),
    "metrics a list": ("metrics.json", lambda p: p.write_text("[1, 2]"), "must hold a JSON object"),
    "config missing": ("config.yaml", lambda p: p.unlink(), "is missing"),
    "config not YAML": ("config.yaml", lambda p: p.write_text("model: {encoder: tiny\n"), "not valid YAML"),
    "config binary": ("config.yaml", lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "is not UTF-8 text"),
    "heads do not fit config": ("heads.safetensors", lambda p: _wider_sst_head(p.parent / "config.yaml"),
                                "does not fit the heads in config.yaml"),  # fmt: skip
    "encoder config missing": ("encoder/config.json", lambda p: p.unlink(), "config.json is missing"),
    "tokenizer missing": ("encoder/tokenizer.json", lambda p: _no_tokenizer(p.parent), "has no tokenizer"),
}


def _wider_sst_head(config: Path) -> None:
    config.write_text(config.read_text().replace("- 16", "- 24", 1))


def _no_tokenizer(encoder: Path) -> None:
    for name in ("tokenizer.json", "vocab.txt"):
        (encoder / name).unlink(missing_ok=True)


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_export_refuses_a_bad_checkpoint_and_leaves_nothing(search, tmp_path, capsys, case, no_unpickling):
    name, spoil, words = CORRUPT[case]
    spoil(checkpoint_of(search, "t2") / name)  # rank 1 is good: nothing of it may be left either
    out = tmp_path / "best"
    assert main(["export", str(search), "--top-k", "3", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "trial t2" in err and words in err, err
    assert str(checkpoint_of(search, "t2") / name.split("/")[0]) in err, err
    assert leftovers(out) == [], leftovers(out)


@pytest.mark.slow
def test_export_of_a_real_search_refuses_a_truncated_checkpoint(smoke_search, tmp_path):
    """The command as a user runs it, on a copy of a real search (Tune's files name the trials'
    folders relative to the search, so the copy's checkpoints are the ones read)."""
    from helpers import cli

    from search.results import load_results

    experiment = tmp_path / "e2e"
    shutil.copytree(smoke_search["experiment"], experiment)
    second = load_results(experiment).ranked()[1].checkpoint
    assert second.is_relative_to(experiment)
    _truncate(second / "heads.safetensors")
    out = tmp_path / "best"
    result = cli("export", str(experiment), "--top-k", "2", "--out", str(out))
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert str(second / "heads.safetensors") in err and "is not a readable safetensors file" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e2e"]  # no OUT, no temporary folder beside it


def test_a_bad_checkpoint_is_refused_the_same_way_by_loading(search, no_unpickling):
    from mtbert.train.checkpoint import check_checkpoint

    checkpoint = checkpoint_of(search, "t1")
    _truncate(checkpoint / "heads.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(str(checkpoint / "heads.safetensors")) + " is not a readable"):
        check_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match=re.escape(str(checkpoint / "heads.safetensors")) + " is not a readable"):
        load_checkpoint(checkpoint)


def test_checking_reads_no_tensor(search, monkeypatch):
    """The check reads safetensors headers only, and builds no model weights."""
    import safetensors.torch

    from mtbert.train.checkpoint import check_checkpoint

    def refuse(*args, **kwargs):
        raise AssertionError("tensors were read")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "load", refuse)
    info = check_checkpoint(checkpoint_of(search, "t1"))
    assert info.config.model.encoder == "tiny" and info.metrics["overall"] == 0.5


def test_export_out_that_is_a_file_exits_2(search, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert main(["export", str(search), "--out", str(taken)]) == 2
    err = one_line_error(capsys)
    assert str(taken) in err and "is a file" in err and "--out" in err, err
    assert taken.read_text() == "a file"
    assert main(["export", str(search), "--out", str(taken / "best")]) == 2  # a file on the way
    err = one_line_error(capsys)
    assert str(taken) in err and "is a file" in err, err


def test_export_into_a_folder_holding_a_rank_exits_2(search, tmp_path, capsys):
    out = tmp_path / "best"
    (out / "rank-2").mkdir(parents=True)
    assert main(["export", str(search), "--top-k", "2", "--out", str(out)]) == 2
    assert "rank-2 already exists" in one_line_error(capsys)
    assert leftovers(out) == ["best/rank-2"]


def test_a_failed_copy_takes_back_the_ranks_written(search, tmp_path, monkeypatch):
    """An error while copying rank 2 (the disk fills, say) leaves neither rank 1 nor a temporary folder."""
    from search.export import export
    from search.errors import SearchError

    copy = shutil.copytree

    def failing(src, dst, *args, **kw):
        if "trial_t2" in str(src):
            raise OSError(28, "No space left on device")
        return copy(src, dst, *args, **kw)

    monkeypatch.setattr(shutil, "copytree", failing)
    out = tmp_path / "best"
    with pytest.raises(SearchError, match="No space left on device"):
        export(search, out, top_k=2)
    assert leftovers(out) == []


# ---- ensemble: members checked before any work -----------------------------------------------------


@pytest.mark.parametrize("case", ["config missing", "truncated heads", "heads a pickle", "metrics not JSON"])
def test_ensemble_refuses_a_bad_member_before_any_work(search, tmp_path, capsys, monkeypatch, case, no_unpickling):
    monkeypatch.setenv("MTBERT_DATA", str(tmp_path / "no-data"))
    name, spoil, words = CORRUPT[case]
    spoil(checkpoint_of(search, "t2") / name)
    out = tmp_path / "ens"
    assert main(["ensemble", str(search), "--top-k", "2", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "trial t2" in err and str(checkpoint_of(search, "t2") / name) in err and words in err, err
    assert not out.exists()


def test_ensemble_without_the_data_exits_2_before_any_work(search, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MTBERT_DATA", str(tmp_path / "no-data"))
    out = tmp_path / "ens"
    assert main(["ensemble", str(search), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "trial t1" in err and f"data folder {tmp_path / 'no-data'}" in err and "MTBERT_DATA" in err, err
    assert not out.exists()


def test_ensemble_retraining_needs_a_space_that_loads(search, tmp_path, capsys):
    (search / "space.yaml").write_text("search: [\n")
    out = tmp_path / "ens"
    assert main(["ensemble", str(search), "--retrain-seeds", "1", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "space.yaml" in err and "not valid YAML" in err and "--retrain-seeds" in err, err
    assert not out.exists()


def test_ensemble_with_a_spoilt_retrain_record_exits_2(search, tmp_path, capsys):
    out = tmp_path / "ens"
    (out / "retrain").mkdir(parents=True)
    (out / "retrain" / "retrain.json").write_text("{not json")
    assert main(["ensemble", str(search), "--retrain-seeds", "1", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "retrain.json" in err and "choose another --out" in err, err


@pytest.mark.parametrize("args, words", [
    (["--out", "FILE"], "is a file"),
    (["--out", "FILE/ens"], "is a file"),
    (["--top-k", "-2", "--out", "OUT"], "--top-k is -2, but must be >= 1"),
])  # fmt: skip
def test_ensemble_bad_out_or_top_k_exits_2(search, tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.setenv("MTBERT_DATA", str(tmp_path / "no-data"))
    (tmp_path / "file").write_text("a file")
    args = [a.replace("FILE", str(tmp_path / "file")).replace("OUT", str(tmp_path / "ens")) for a in args]
    assert main(["ensemble", str(search), *args]) == 2
    assert words in one_line_error(capsys)
    assert (tmp_path / "file").read_text() == "a file" and not (tmp_path / "ens").exists()


def test_spoilt_member_outputs_are_predicted_again(search, tmp_path):
    """A member's cached outputs that do not read (a file cut short) count as absent, not as an error."""
    from search.ensemble import MEMBER_FILE, OUTPUTS_FILE, Member, Outputs, read_outputs, write_outputs

    member = Member("t1", "t1", 1, 0.6, checkpoint=checkpoint_of(search, "t1"))
    folder = tmp_path / "members" / "t1"
    outputs = Outputs({"sts.dev": torch.ones(3)}, {"sts.dev": ["a", "b", "c"]}, {"sts": torch.ones(3)}, {})
    write_outputs(folder, outputs, {"experiment": str(search), "seed": None, "checkpoint": str(member.checkpoint)})
    assert read_outputs(folder, search, member) is not None
    _truncate(folder / OUTPUTS_FILE)
    assert read_outputs(folder, search, member) is None
    (folder / MEMBER_FILE).write_text("{not json")
    assert read_outputs(folder, search, member) is None


# ---- report ------------------------------------------------------------------------------------------


def test_report_says_a_spoilt_summary_instead_of_failing(tmp_path, capsys):
    experiment = tmp_path / "exp"
    Launch("space.yaml", max_t=2).save(experiment, SPACE)
    (experiment / "summary.json").write_text("{not json")
    assert main(["report", str(experiment), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "index.html").read_text()
    assert "summary.json does not read" in page


def test_report_out_below_a_file_exits_2(tmp_path, capsys):
    experiment = tmp_path / "exp"
    Launch("space.yaml", max_t=2).save(experiment, SPACE)
    (tmp_path / "file").write_text("a file")
    assert main(["report", str(experiment), "--out", str(tmp_path / "file" / "report")]) == 2
    err = one_line_error(capsys)
    assert str(tmp_path / "file") in err and "is a file" in err, err


@pytest.mark.parametrize("command", [["export", "--out", "OUT"], ["ensemble", "--out", "OUT"],
                                     ["report", "--out", "OUT"]])  # fmt: skip
def test_commands_on_a_spoilt_search_description_exit_2(tmp_path, capsys, command):
    (tmp_path / "search.json").write_text("{not json")
    (tmp_path / "space.yaml").write_text(SPACE)
    args = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    assert main([args[0], str(tmp_path), *args[1:]]) == 2
    assert "search.json" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


# ---- space files: infinite and NaN values, impossible ranges --------------------------------------------

BASE = "model: {encoder: tiny}\ntrain: {max_steps: 40, eval_every: 10}\n"
DIM = BASE + "search:\n  optim.lr: {loguniform: [1.0e-5, 1.0e-3]}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


NON_FINITE = [  # (file text, --set overrides, key, words)
    (BASE + "search:\n  optim.lr: {uniform: [1.0e-5, .inf]}\n", {}, "search.optim.lr", "finite"),
    (BASE + "search:\n  optim.lr: {loguniform: [1.0e-5, .inf]}\n", {}, "search.optim.lr", "finite"),
    (BASE + "search:\n  optim.lr: {uniform: [1.0e-5, 1.0e+400]}\n", {}, "search.optim.lr", "finite"),
    (BASE + "search:\n  heads.sst.dropout: {uniform: [.nan, 0.5]}\n", {}, "search.heads.sst.dropout", "finite"),
    (BASE + "search:\n  heads.sst.dropout: {uniform: [-.inf, 0.5]}\n", {}, "search.heads.sst.dropout", "finite"),
    (DIM, {"search.optim.lr": "{uniform: [1.0e-5, .inf]}"}, "--set search.optim.lr", "finite"),
    (BASE + "search:\n  heads.sst.dropout: {uniform: [0.1, 0.5], step: .inf}\n", {},
     "search.heads.sst.dropout.step", "finite"),
    (BASE + "search:\n  heads.sst.dropout: {uniform: [0.1, 0.5], step: .nan}\n", {},
     "search.heads.sst.dropout.step", "finite"),
    (BASE + "search:\n  optim.lr: {choice: [1.0e-5, .inf]}\n", {}, "search.optim.lr", "finite"),
    (BASE + "search:\n  heads.sst: {choice: [{dropout: .nan}, {dropout: 0.1}]}\n", {}, "search.heads.sst",
     "finite"),
    (BASE + "search:\n  optim.lr: {uniform: [-1.0e+308, 1.0e+308]}\n", {}, "search.optim.lr", "too wide"),
    (BASE + "optim: {lr: .inf}\n", {}, "optim.lr", "finite"),
    (BASE + "phases: [{kind: multitask, set: {optim.lr: .inf}}]\n", {}, "phases.0.set.optim.lr", "finite"),
    (DIM, {"optim.head_lr": ".inf"}, "--set optim.head_lr", "finite"),
    (DIM + "tune: {reduction_factor: .inf}\n", {}, "tune.reduction_factor", "finite"),
    (DIM + "tune: {cpus_per_trial: .inf}\n", {}, "tune.cpus_per_trial", "finite"),
    (DIM + "tune: {time_budget_s: .inf}\n", {}, "tune.time_budget_s", "finite"),
    (DIM + "tune: {gpus_per_trial: .nan}\n", {}, "tune.gpus_per_trial", "finite"),
    (DIM, {"tune.reduction_factor": ".inf"}, "--set tune.reduction_factor", "finite"),
    (DIM + "tune: {profiles: {cpu: {cpus_per_trial: .inf}}}\n", {}, "tune.profiles.cpu.cpus_per_trial", "finite"),
    (DIM + "tune: {profiles: {cpu: {set: {optim.lr: .inf}}}}\n", {}, "tune.profiles.cpu.set.optim.lr", "finite"),
]  # fmt: skip


@pytest.mark.parametrize("text, overrides, key, words", NON_FINITE)
def test_infinite_and_nan_values_are_refused_by_key(tmp_path, text, overrides, key, words):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as e:
        load_space(path, overrides, profile="cpu")
    assert e.value.path == str(path) and e.value.key == key, str(e.value)
    assert words in e.value.message, str(e.value)


def test_infinite_bound_from_the_command_line_exits_2_before_ray(tmp_path, capsys):
    import ray

    path = write(tmp_path, SPACE.replace("tune: {", f"tune: {{storage_path: {tmp_path / 'results'}, "))
    assert main([str(path), "--set", "search.optim.lr={uniform: [1.0e-5, .inf]}"]) == 2
    err = one_line_error(capsys)
    assert f"{path}: --set search.optim.lr: " in err and "finite" in err and "inf" in err, err
    assert not (tmp_path / "results").exists() and not ray.is_initialized()


# ---- space files: nothing to search ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_space_file_exits_2(tmp_path, capsys, text):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as e:
        load_space(path, profile="cpu")
    assert e.value.key == "file" and "is empty" in e.value.message and "search:" in e.value.message
    assert main([str(path)]) == 2
    assert f"{path}: file: is empty" in one_line_error(capsys)


@pytest.mark.parametrize("text, overrides, source", [
    (BASE + "tune: {num_samples: 4}\n", {}, "tune.num_samples"),
    (BASE + "tune: {profiles: {cpu: {num_samples: 3}}}\n", {}, "tune.profiles.cpu.num_samples"),
    (BASE, {"tune.num_samples": "5"}, "--set tune.num_samples"),
    (DIM + "tune: {num_samples: 4}\n", {"optim.lr": "1.0e-4"}, "tune.num_samples"),  # its one dimension pinned
])  # fmt: skip
def test_no_dimensions_and_several_trials_are_refused(tmp_path, text, overrides, source):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as e:
        load_space(path, overrides, profile="cpu")
    assert e.value.key == "search" and "has no dimensions" in e.value.message, str(e.value)
    assert source in e.value.message and "tune.num_samples: 1" in e.value.message, str(e.value)
    if overrides.get("optim.lr"):
        assert "optim.lr" in e.value.message  # says which dimension --set fixed


def test_no_dimensions_runs_one_trial_unless_more_were_asked_for(tmp_path):
    path = write(tmp_path, BASE)
    space = load_space(path, profile="cpu")  # the default num_samples (16) asks for nothing
    assert space.tune.num_samples == 1 and "1 trial of 40 steps" in space.notes[0]
    assert "a fixed point: no search dimensions, so 1 trial, not 16: every trial would be the same run" in space.notes
    smoke = load_space(path, profile="cpu", smoke=True)  # the smoke test's 4 trials neither
    assert smoke.tune.num_samples == 1
    fixed = load_space(write(tmp_path, BASE + "tune: {num_samples: 1}\n"), profile="cpu")
    assert fixed.tune.num_samples == 1 and "a fixed point: no search dimensions" in fixed.notes
    searched = load_space(write(tmp_path, DIM), profile="cpu")
    assert searched.tune.num_samples == 16
