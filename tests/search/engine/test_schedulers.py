"""The schedulers of tune.scheduler: what build_scheduler makes of the settings, PBT's mutations kept
inside their dimensions and its lineage file (no Ray cluster), then one --smoke search per scheduler
through the CLI (ASHA's is the shared smoke_search): FIFO stops nothing, HyperBand stops by its
brackets, PBT exploits and records it, and the exploiting trial goes on from the donor's step with
the mutated values and the learning-rate schedule at that step."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest
from helpers import cli, searcher, trial_dirs, write_space
from ray.tune.schedulers import FIFOScheduler, HyperBandScheduler, PopulationBasedTraining
from ray.tune.search import SearchGenerator

from mtbert.train.optim import lr_multiplier
from search.engine.rungs import ResumableASHA
from search.engine.schedulers import CLONE_PREFIX, LineagePBT, build_scheduler, inside
from search.lineage import LINEAGE_FILE, read_lineage
from search.space.file import load_space

SPACE = """\
model: {encoder: tiny}
train: {max_steps: 40, eval_every: 10}
search:
  optim.lr: {loguniform: [1.0e-5, 1.0e-3]}
  grad.weights.sst: {uniform: [0.5, 2.0], step: 0.25}
  sampling.ratios.sst: {int: [1, 3], when: {sampling.schedule: [ratios]}}
  sampling.schedule: {choice: [ratios, proportional]}
tune: {num_samples: 4, max_concurrent: 2, storage_path: results}
"""


def space(tmp_path, monkeypatch, scheduler: str):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.replace("tune: {", f"tune: {{scheduler: {scheduler}, "))
    return load_space(path, profile="cpu")


def test_build_scheduler_makes_each_kind_with_its_options(tmp_path, monkeypatch):
    asha = build_scheduler(space(tmp_path, monkeypatch, "{kind: asha, grace_period: 2, reduction_factor: 3}"), 4)
    assert isinstance(asha, ResumableASHA)
    assert (asha._max_t, asha._reduction_factor, asha._brackets[0]._rungs[-1][0]) == (4, 3, 2)
    hyperband = build_scheduler(space(tmp_path, monkeypatch, "{kind: hyperband, reduction_factor: 4}"), 4)
    assert type(hyperband).__mro__[1] is HyperBandScheduler
    assert (hyperband._max_t_attr, hyperband._eta, hyperband._stop_last_trials) == (4, 4, False)
    assert type(build_scheduler(space(tmp_path, monkeypatch, "fifo"), 4)) is FIFOScheduler
    pbt_space = space(tmp_path, monkeypatch, "{kind: pbt, perturbation_interval: 2, quantile_fraction: 0.5, "
                                             "resample_probability: 0.1}")  # fmt: skip
    pbt = build_scheduler(pbt_space, 4)
    assert isinstance(pbt, LineagePBT)
    assert (pbt._perturbation_interval, pbt._quantile_fraction, pbt._resample_probability) == (2, 0.5, 0.1)
    # keyed by Optuna's parameter names, each within its dimension: a list for ints, a domain for ranges
    mutations = pbt._hyperparam_mutations
    assert set(mutations) == {"optim.lr", "grad.weights.sst", "sampling.ratios.sst"}
    assert mutations["sampling.ratios.sst"] == [1, 2, 3]
    assert (mutations["optim.lr"].lower, mutations["optim.lr"].upper) == (1e-5, 1e-3)


def test_pbt_mutations_stay_inside_their_dimensions_and_skip_inactive_ones(tmp_path, monkeypatch):
    pbt = build_scheduler(space(tmp_path, monkeypatch, "{kind: pbt, resample_probability: 0}"), 4)
    donor = SimpleNamespace(config={"optim.lr": 1e-3, "grad.weights.sst": 2.0, "sampling.schedule": "proportional"})
    random.seed(0)
    seen = set()
    # what LineagePBT._exploit hands Ray's explore: the mutations of the parameters the donor has
    pbt._hyperparam_mutations = {k: v for k, v in pbt._hyperparam_mutations.items() if k in donor.config}
    for _ in range(40):
        new, _ops = pbt._get_new_config(None, donor)
        assert 1e-5 <= new["optim.lr"] <= 1e-3 and 0.5 <= new["grad.weights.sst"] <= 2.0
        assert (new["grad.weights.sst"] - 0.5) / 0.25 == pytest.approx(round((new["grad.weights.sst"] - 0.5) / 0.25))
        assert "sampling.ratios.sst" not in new and new["sampling.schedule"] == "proportional"
        seen.add(new["optim.lr"])
    assert sorted(seen) == pytest.approx([0.8e-3, 1e-3])  # x1.2 is brought back to the high end
    ratio = SimpleNamespace(kind="int", low=1, high=3, step=None)
    assert inside(ratio, 3.6) == 3 and inside(ratio, 0.2) == 1


def test_pbt_accepts_the_searcher_and_fills_nothing(tmp_path, monkeypatch):
    # Ray's PBT refuses any search algorithm; here Optuna proposes the population
    pbt = build_scheduler(space(tmp_path, monkeypatch, "pbt"), 4)
    controller = SimpleNamespace(search_alg=SearchGenerator(searcher()))
    trial = FakeTrial(experiment_tag="0", config={"optim.lr": 1e-4, "sampling.schedule": "proportional"})
    with pytest.raises(ValueError, match="Search algorithms cannot be used"):
        PopulationBasedTraining(metric="overall", mode="max", hyperparam_mutations={"a": [1, 2]}).on_trial_add(
            controller, trial)  # fmt: skip
    pbt.on_trial_add(controller, trial)
    assert trial in pbt._trial_state
    assert trial.config == {"optim.lr": 1e-4, "sampling.schedule": "proportional"}  # no inactive ratio drawn


class FakeTrial(SimpleNamespace):
    __hash__ = object.__hash__  # a scheduler keys its state by trial


def test_each_exploit_is_appended_to_the_recipients_lineage(tmp_path, monkeypatch):
    pbt = build_scheduler(space(tmp_path, monkeypatch, "pbt"), 4)
    fs = pyarrow.fs.LocalFileSystem()

    def trial(trial_id, config):
        folder = tmp_path / f"trial_{trial_id}"
        return SimpleNamespace(trial_id=trial_id, config=config,
                               storage=SimpleNamespace(storage_filesystem=fs, trial_fs_path=str(folder)))  # fmt: skip

    mine = trial("a", {"optim.lr": 1e-5, "grad.weights.sst": 1.0, "sampling.schedule": "ratios",
                       "sampling.ratios.sst": 1})  # fmt: skip
    donor = trial("b", {"optim.lr": 5e-4, "grad.weights.sst": 1.5, "sampling.schedule": "ratios",
                        "sampling.ratios.sst": 2})  # fmt: skip
    for k in (1, 2):
        pbt._operations = {"optim.lr": "* 1.2"}
        new = {**donor.config, "optim.lr": 6e-4}
        pbt._log_config_on_step(SimpleNamespace(last_result={"training_iteration": 2 * k, "step": 20 * k,
                                                             "overall": 0.3}),
                                SimpleNamespace(last_result={"training_iteration": k, "step": 10 * k,
                                                             "overall": 0.5}),
                                mine, donor, new)  # fmt: skip
    entries = read_lineage(tmp_path / "trial_a")
    assert [e["exploit"] for e in entries] == [1, 2]
    e = entries[1]
    assert (e["donor"], e["donor_iteration"], e["donor_step"], e["iteration"], e["step"]) == ("b", 2, 20, 4, 40)
    assert (e["donor_score"], e["score"]) == (0.5, 0.3)
    assert e["mutated"] == ["optim.lr", "grad.weights.sst", "sampling.ratios.sst"]
    assert e["operations"] == {"optim.lr": "* 1.2"}
    assert (e["before"]["optim.lr"], e["donor_values"]["optim.lr"], e["after"]["optim.lr"]) == (1e-5, 5e-4, 6e-4)
    assert e["after"]["sampling.ratios.sst"] == 2
    assert sorted(p.name for p in (tmp_path / "trial_a").iterdir()) == [LINEAGE_FILE]  # no temporary file left


# ---- a --smoke search per scheduler --------------------------------------------------------------


def smoke(data_dir, token_cache, tmp_path_factory, name, *sets):
    tmp = tmp_path_factory.mktemp(name)
    path = write_space(tmp, data_dir, token_cache, name=name, grad="", final_eval="none")
    args = [a for s in sets for a in ("--set", s)]
    out = cli(str(path), "--smoke", "--json", *args)
    assert out.returncode == 0, out.stderr[-4000:]
    experiment = tmp / "results" / f"{name}"
    return {"summary": json.loads(out.stdout), "stderr": out.stderr, "experiment": experiment, "space": path,
            "rows": {d.name.removeprefix("trial_"): progress(d) for d in trial_dirs(experiment)}}  # fmt: skip


def progress(trial_dir: Path) -> list[dict]:
    """A trial's results from progress.csv, in order (Ray's result.json can lose the row a trial
    was paused on: it copies the file over itself when the trial starts again)."""
    with (trial_dir / "progress.csv").open() as f:
        return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@pytest.fixture(scope="module")
def fifo_run(data_dir, token_cache, tmp_path_factory):
    return smoke(data_dir, token_cache, tmp_path_factory, "fifo", "tune.scheduler=fifo", "tune.num_samples=2")


@pytest.fixture(scope="module")
def hyperband_run(data_dir, token_cache, tmp_path_factory):
    # max_t 4 and reduction 4: a bracket of 2 trials that run 4 evaluations, then one of 4 that keeps
    # 1 after 1 evaluation. No concurrency cap: HyperBand pauses trials until their bracket is there.
    return smoke(data_dir, token_cache, tmp_path_factory, "hyperband", "tune.scheduler={kind: hyperband, "
                 "reduction_factor: 4}", "tune.num_samples=6", "tune.max_concurrent=null")  # fmt: skip


@pytest.fixture(scope="module")
def pbt_run(data_dir, token_cache, tmp_path_factory):
    # 2 trials at a time, each the other's quantile: at every evaluation the weaker exploits the stronger
    return smoke(data_dir, token_cache, tmp_path_factory, "pbt", "tune.scheduler={kind: pbt, perturbation_interval: "
                 "1, quantile_fraction: 0.5, mutations: [optim.lr, optim.head_lr]}")  # fmt: skip


@pytest.mark.slow
@pytest.mark.extended
def test_fifo_stops_no_trial(fifo_run):
    summary = fifo_run["summary"]
    assert summary["trials"] == 2 and summary["trial_states"] == {"complete": 2}
    for rows in fifo_run["rows"].values():
        assert [r["training_iteration"] for r in rows] == [1, 2, 3, 4]  # the smoke run's 8 steps, every 2


@pytest.mark.slow
@pytest.mark.extended
def test_hyperband_stops_by_its_brackets(hyperband_run):
    from search.results import load_results

    results = load_results(hyperband_run["experiment"])
    lengths = sorted(t.iterations for t in results.trials)
    assert lengths == [1, 1, 1, 4, 4, 4]
    for t in results.trials:
        assert t.status == "TERMINATED", t.trial_id  # those stopped while paused too
        assert t.state == ("COMPLETE" if t.iterations == 4 else "PRUNED"), t.trial_id
    assert hyperband_run["summary"]["trial_states"] == {"complete": 3, "pruned": 3}


@pytest.mark.slow
def test_pbt_records_lineage_and_the_recipient_goes_on_from_the_donors_step(pbt_run):
    experiment, rows = pbt_run["experiment"], pbt_run["rows"]
    base = load_space(pbt_run["space"], smoke=True).base
    multiplier = lr_multiplier(base.optim, base.train.max_steps)
    every = base.train.eval_every
    lineages = {d.name.removeprefix("trial_"): read_lineage(d) for d in trial_dirs(experiment)}
    exploits = sum(len(v) for v in lineages.values())
    assert exploits >= 1, pbt_run["stderr"][-3000:]
    for trial_id, entries in lineages.items():
        mine, at = rows[trial_id], 0
        for e in entries:
            assert e["donor"] in rows and e["donor"] != trial_id
            # the donor had reached that step at that evaluation
            assert {"training_iteration": e["donor_iteration"], "step": e["donor_step"]}.items() <= next(
                r for r in rows[e["donor"]] if r["step"] == e["donor_step"]).items()  # fmt: skip
            # the recipient's result it exploited on, then its first one after
            at = next(i for i in range(at, len(mine))
                      if (mine[i]["training_iteration"], mine[i]["step"]) == (e["iteration"], e["step"]))  # fmt: skip
            after = mine[at + 1]
            assert after["step"] == e["donor_step"] + every, (trial_id, e)
            assert after["training_iteration"] == e["donor_iteration"] + 1
            assert after["iterations_since_restore"] == 1
            assert e["donor_step"] < base.train.max_steps  # a donor at its end has nothing left to pass on
            # the schedule continues at the step count with the new base rate
            assert after["lr"] == pytest.approx(e["after"]["optim.lr"] * multiplier(after["step"]), rel=1e-6)
            at += 1
        if entries:  # the settings it ended with are the last exploit's
            params = json.loads((experiment / f"trial_{trial_id}" / "params.json").read_text())
            assert {k: params[k] for k in entries[-1]["mutated"]} == pytest.approx(
                {k: entries[-1]["after"][k] for k in entries[-1]["mutated"]})  # fmt: skip
    assert not list(experiment.glob(f"*/{CLONE_PREFIX}*")) and not list(experiment.glob("*/.lineage.json.tmp"))


@pytest.mark.slow
def test_pbt_lineage_in_status_tensorboard_and_the_report(pbt_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from search import plots
    from search.results import decoded, load_results

    experiment = pbt_run["experiment"]
    results = load_results(experiment)
    recipients = [t for t in results.trials if t.lineage]
    assert recipients
    out = cli("status", str(experiment))
    assert out.returncode == 0, out.stderr
    for t in recipients:
        for e in t.lineage:
            assert f"{e['donor']}@{e['donor_step']}" in out.stdout
    # TensorBoard: the values a trial trained with at each step, and each exploit as text
    t = recipients[0]
    events = EventAccumulator(str(t.path), size_guidance={"tensors": 0})
    events.Reload()
    lrs = {e.step: e.value for e in events.Scalars("pbt/optim.lr")}
    last = t.lineage[-1]
    assert lrs[last["donor_step"] + 2] == pytest.approx(last["after"]["optim.lr"], rel=1e-6)
    texts = [e.tensor_proto.string_val[0].decode() for e in events.Tensors("pbt/exploit/text_summary")]
    assert any(f"from trial {last['donor']} at step {last['donor_step']}" in text for text in texts), texts
    # the report's figure, drawn from the lineage
    report = cli("report", str(experiment), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "pbt_lineage.png").is_file()
    assert 'href="pbt_lineage.png"' in (tmp_path / "report" / "index.html").read_text()
    space = load_space(pbt_run["space"], smoke=True)
    values = {r.trial_id: decoded(space, r.params) for r in results.trials}
    data = plots.pbt_schedules(results, values, ["optim.lr"])
    segments = data[t.trial_id]["optim.lr"]
    assert segments[0] == (0, t.lineage[0]["step"], pytest.approx(t.lineage[0]["before"]["optim.lr"]))
    starts = [(s, v) for s, _, v in segments[1:]]
    assert starts == [(e["donor_step"], pytest.approx(e["after"]["optim.lr"])) for e in t.lineage]
    assert segments[-1][1] == t.last["step"]
    figure = plots.pbt_lineage(results, values, ["optim.lr"], {"optim.lr": "loguniform"})
    drawn = [(*line.get_xdata(), line.get_ydata()[0]) for line in figure.axes[0].get_lines()]
    for start, end, value in segments:  # each segment of the lineage is a line of the figure
        assert any((x0, x1) == (start, end) and y == pytest.approx(value) for x0, x1, y in drawn), (start, end)
