"""``tune.warm_start`` as a space file states it: points (base, mappings, files) read into Optuna's
parameters and checked against the dimensions, search folders checked; ``Space.params_for`` is the
inverse of ``Space.decode``; every bad entry is one ``SpaceError`` naming the file, the entry and
the key. (What the study does with them: tests/search/engine/test_warm_start.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import optuna
import pytest

from search.errors import SpaceError
from search.space.file import load_space
from search.space.warm_start import EarlierSearch, WarmPoint

optuna.logging.set_verbosity(optuna.logging.WARNING)
SHIPPED = [p for p in sorted((helpers.REPO / "spaces").glob("*.yaml")) if "warm_start" in p.read_text()]

# A conditional dimension, alternatives on one key (heads.sts.kind#0/#1), a list-valued choice (JSON
# text in Optuna) and a stepped float range.
SPACE = """\
model: {encoder: tiny}
train: {max_steps: 40, eval_every: 10}
optim: {lr: 3.0e-5}
grad: {method: pcgrad_weighted, weights: {sst: 1.5}}
heads: {sst: {hidden: [64]}}
search:
  optim.lr: {loguniform: [1.0e-5, 1.0e-3]}
  grad.method: {choice: [sum, pcgrad_weighted]}
  grad.weights.sst: {uniform: [0.5, 2.0], step: 0.25, when: {grad.method: [pcgrad_weighted]}}
  heads.sst.hidden: {choice: [[64], [128, 64]]}
  heads.sts.pooling: {choice: [cls, mean]}
  heads.sts.kind:
    - {choice: [regression], when: {heads.sts.pooling: [cls]}}
    - {choice: [regression, cosine], when: {heads.sts.pooling: [mean]}}
tune:
  num_samples: 6
{warm}"""
PARAMS_OF_BASE = {"optim.lr": 3e-5, "grad.method": "pcgrad_weighted", "grad.weights.sst": 1.5,
                  "heads.sst.hidden": "[64]", "heads.sts.pooling": "cls", "heads.sts.kind#0": "regression"}  # fmt: skip


def write(tmp_path: Path, warm: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(SPACE.replace("{warm}", f"  warm_start: {warm}\n" if warm else ""))
    return path


def points(space) -> list[WarmPoint]:
    return [e for e in space.warm_start() if isinstance(e, WarmPoint)]


# the shipped spaces whose cpu profile starts from a point of its own (configs/example.yaml's
# settings at a short-budget learning rate), the others from their base run
PROFILE_POINTS = {"pcgrad", "baseline", "sampling"}


@pytest.mark.parametrize("smoke", [False, True], ids=["cpu", "smoke"])
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_shipped_space_starts_from_its_base_run_or_its_profiles_point(path, smoke):
    space = load_space(path, profile="cpu", smoke=smoke)
    first = space.warm_start()[0]
    assert isinstance(first, WarmPoint) and space.decode(first.params) == first.values
    if path.stem not in PROFILE_POINTS:
        # the first point's trial config is the base run itself, in the cpu profile and in --smoke
        assert first.source == "base" and first.where == "tune.warm_start[0]"
        assert space.config_for(first.params) == space.base
        assert "warm start: the first trial is base" in space.notes
        return
    assert first.where == "tune.profiles.cpu.warm_start[0]" and first.source != "base"
    # the point's values on the base run, everything else as the base has it
    config = space.config_for(first.params).flat()
    assert all(config[key] == value for key, value in first.values.items() if "#" not in key)
    assert config["train.max_steps"] == space.base.flat()["train.max_steps"]


def test_base_takes_the_base_values_and_only_active_dimensions(tmp_path):
    space = load_space(write(tmp_path, "[base]"), profile="cpu")
    (point,) = points(space)
    assert point.params == PARAMS_OF_BASE
    # heads.sts.kind's alternative for pooling 'mean' (#1) is off at the base; the list choice is JSON text
    assert point.values["heads.sst.hidden"] == [64] and "heads.sts.kind#1" not in point.params


def test_a_mapping_takes_the_other_keys_from_the_base_and_switches_conditions(tmp_path):
    warm = "[{grad.method: sum, heads.sts.pooling: mean, heads.sts.kind: cosine, optim.lr: 1e-4}]"
    (point,) = points(load_space(write(tmp_path, warm), profile="cpu"))
    assert point.params == {"optim.lr": 1e-4, "grad.method": "sum", "heads.sst.hidden": "[64]",
                            "heads.sts.pooling": "mean", "heads.sts.kind#1": "cosine"}  # fmt: skip
    assert point.source == "{grad.method: 'sum', heads.sts.pooling: 'mean', heads.sts.kind: 'cosine', optim.lr: 0.0001}"


def test_params_for_is_the_inverse_of_decode(tmp_path):
    space = load_space(write(tmp_path, ""), profile="cpu")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(20):  # random trials cover both alternatives, both conditions and both list choices
        trial = study.ask()
        space.define_by_run(trial)
        assert space.params_for(space.decode(trial.params)) == trial.params
        study.tell(trial, 0.0)


RUN = "model: {{encoder: tiny}}\noptim: {{lr: {lr}}}\ngrad: {{method: sum}}\nheads: {{sst: {{hidden: {hidden}}}}}\n"


def test_a_run_config_file_gives_its_values_next_to_the_space_file_first(tmp_path, monkeypatch):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "run.yaml").write_text(RUN.format(lr="2.0e-4", hidden="[64]"))
    (tmp_path / "run.yaml").write_text(RUN.format(lr="5.0e-4", hidden="[128, 64]"))
    path = write(tmp_path / "spaces", "[run.yaml, ../run.yaml]")
    monkeypatch.chdir(tmp_path)  # run.yaml is here too: the space file's folder comes first
    first, second = points(load_space(path, profile="cpu"))
    assert first.source == str(tmp_path / "spaces" / "run.yaml")
    # the file's run config, defaults included (heads.sts.pooling cls): not the space's base
    assert first.values == {"optim.lr": 2e-4, "grad.method": "sum", "heads.sst.hidden": [64],
                            "heads.sts.pooling": "cls", "heads.sts.kind": "regression"}  # fmt: skip
    assert second.values["optim.lr"] == 5e-4 and second.values["heads.sst.hidden"] == [128, 64]


def test_a_file_found_only_in_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "point.yaml").write_text(RUN.format(lr="1.0e-4", hidden="[128, 64]"))
    path = write(tmp_path, "[point.yaml]")
    monkeypatch.chdir(tmp_path / "cwd")
    (point,) = points(load_space(path, profile="cpu"))
    assert point.source == str(tmp_path / "cwd" / "point.yaml") and point.values["optim.lr"] == 1e-4


def test_an_earlier_search_folder_is_kept_for_the_engine(tmp_path):
    folder = tmp_path / "results" / "old"
    folder.mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps({"metric": "overall", "mode": "max"}))
    (folder / "searcher-state-2026.pkl").write_bytes(b"")
    space = load_space(write(tmp_path, "[results/old, base]"), profile="cpu")
    entries = space.warm_start()
    assert entries[0] == EarlierSearch("tune.warm_start[0]", folder.resolve()) and entries[1].source == "base"
    assert any(
        n.startswith(f"warm start: the finished trials of {folder.resolve()} join the study") for n in space.notes
    )


def test_points_beyond_num_samples_are_noted(tmp_path):
    space = load_space(write(tmp_path, "[base, base]"), {"tune.num_samples": "1"}, profile="cpu")
    assert "warm start: only the first 1 point(s) run: tune.num_samples is 1" in space.notes


def test_profiles_and_set_give_warm_start_too(tmp_path):
    space = load_space(write(tmp_path, ""), {"tune.warm_start": "[{optim.lr: 2.0e-4}]"}, profile="cpu")
    (point,) = points(space)
    assert point.where == "--set tune.warm_start[0]" and point.values["optim.lr"] == 2e-4
    with pytest.raises(SpaceError) as e:
        load_space(write(tmp_path, ""), {"tune.warm_start": "[{optim.lr: 2.0}]"}, profile="cpu")
    assert e.value.key == "--set tune.warm_start[0].optim.lr"


def test_a_space_loaded_without_reading_warm_start_reads_it_on_first_use(tmp_path):
    # a search folder's saved copy: a relative path may not resolve from there; only a new start reads it
    path = write(tmp_path, "[base, missing.yaml]")
    space = load_space(path, profile="cpu", read_warm_start=False)
    assert space.warm is None
    with pytest.raises(SpaceError, match=r"tune.warm_start\[1\]: 'missing.yaml' is not 'base'"):
        space.warm_start()


BAD = [
    ("base", "tune.warm_start", "must be a list of entries"),
    ("[bsae]", "tune.warm_start[0]", "'bsae' (did you mean 'base'?) is not 'base', and no file or folder is there"),
    ("[3]", "tune.warm_start[0]", "is 3, but each entry must be base, a mapping"),
    ("[base, {optim.lr: 5.0e-3}]", "tune.warm_start[1].optim.lr", "is 0.005, but must be in loguniform [1e-05, 0.001]"),
    (
        "[{grad.method: pcgrad}]",
        "tune.warm_start[0].grad.method",
        "must be one of its choices: 'sum', 'pcgrad_weighted'",
    ),
    (
        "[{heads.sst.hidden: [32]}]",
        "tune.warm_start[0].heads.sst.hidden",
        "must be one of its choices: [64], [128, 64]",
    ),
    (
        "[{grad.weights.sst: 1.1}]",
        "tune.warm_start[0].grad.weights.sst",
        "must be on the grid of uniform [0.5, 2] step",
    ),
    ("[{optim.lrr: 1.0e-4}]", "tune.warm_start[0].optim.lrr", "is not a searched key (did you mean 'optim.lr'?)"),
    (
        "[{grad.method: sum, grad.weights.sst: 1.0}]",
        "tune.warm_start[0].grad.weights.sst",
        (
            "sets grad.weights.sst, but its dimension is off for this point: it applies when grad.method: "
            "'pcgrad_weighted', and the point has grad.method 'sum'"
        ),
    ),
    (
        "[{heads.sts.kind: cosine}]",
        "tune.warm_start[0].heads.sts.kind",
        ("is 'cosine', but must be one of its choices: 'regression'"),
    ),  # the cls alternative
]


@pytest.mark.parametrize("warm,key,message", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_a_bad_entry_names_the_file_the_entry_and_the_key(tmp_path, warm, key, message):
    path = write(tmp_path, warm)
    with pytest.raises(SpaceError) as e:
        load_space(path, profile="cpu")
    assert e.value.path == str(path) and e.value.key == key, str(e.value)
    assert message in e.value.message, e.value.message


def test_a_base_value_outside_a_dimension_is_refused(tmp_path):
    path = write(tmp_path, "[base]")
    path.write_text(path.read_text().replace("optim: {lr: 3.0e-5}", "optim: {lr: 5.0e-3}"))
    with pytest.raises(SpaceError) as e:
        load_space(path, profile="cpu")
    assert e.value.key == "tune.warm_start[0].optim.lr"
    assert e.value.message == ("the base value 0.005 does not fit the dimension (loguniform [1e-05, 0.001]); give the "
                               "point a value for optim.lr")  # fmt: skip


def test_a_file_that_is_no_run_config_or_whose_value_does_not_fit(tmp_path):
    (tmp_path / "bad.yaml").write_text("optim: {lrr: 1.0e-4}\n")
    (tmp_path / "far.yaml").write_text("model: {encoder: tiny}\noptim: {lr: 1.0e-2}\nheads: {sst: {hidden: [64]}}\n")
    with pytest.raises(SpaceError) as e:
        load_space(write(tmp_path, "[bad.yaml]"), profile="cpu")
    assert e.value.key == "tune.warm_start[0]" and e.value.message.startswith(f"{tmp_path / 'bad.yaml'}: optim.lrr:")
    with pytest.raises(SpaceError) as e:
        load_space(write(tmp_path, "[far.yaml]"), profile="cpu")
    assert e.value.key == "tune.warm_start[0].optim.lr"
    assert e.value.message.startswith(f"{tmp_path / 'far.yaml'}'s value 0.01 does not fit the dimension")


def test_a_folder_must_hold_a_search_with_a_saved_study(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(
        SpaceError, match=r"tune.warm_start\[0\]: .*plain is a folder but holds no search \(search.json"
    ):
        load_space(write(tmp_path, "[plain]"), profile="cpu")
    (tmp_path / "plain" / "search.json").write_text("{}")
    with pytest.raises(SpaceError, match=r"holds a search that saved no Optuna study yet"):
        load_space(write(tmp_path, "[plain]"), profile="cpu")


def test_a_point_whose_run_config_is_invalid_is_refused_before_start(tmp_path):
    # every value fits its dimension, but together they make a run that fails a run check (all three ratios 0,
    # which the space's checks of single values and pairs do not reach): found when the space loads
    path = tmp_path / "space.yaml"
    path.write_text("model: {encoder: tiny}\ntrain: {max_steps: 40, eval_every: 10}\nsampling: {schedule: ratios}\n"
                    "search:\n" + "".join(f"  sampling.ratios.{t}: {{choice: [1, 0]}}\n" for t in ("sst", "para", "sts"))
                    + "tune: {warm_start: [base, {sampling.ratios.sst: 0, sampling.ratios.para: 0, "
                    "sampling.ratios.sts: 0}]}\n")  # fmt: skip
    with pytest.raises(SpaceError) as e:
        load_space(path, profile="cpu")
    assert e.value.key == "tune.warm_start[1]" and "sampling.ratios: are all zero" in e.value.message, str(e.value)
