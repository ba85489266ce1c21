"""``tune.sampler``: the options each kind takes (from Optuna's signatures) and their checks; the default
rule; the sampler a searcher is built with and how it labels each trial; TPE as configured against
random search on a cheap synthetic objective run through the same searcher and define-by-run space;
every kind on a conditional space; and a real smoke search of a shipped space whose saved study
carries the sampler settings it was given."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import optuna
import pytest
from helpers import REPO, cli, play_trials

from search.engine import samplers
from search.engine.searcher import new_searcher
from search.errors import SpaceError
from search.space.file import load_space
from search.space.sampler import KINDS, sampler_options, startup_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A conditional space (grad.weights.sst exists only with pcgrad_weighted) with a peak the sampler must find:
# the learning rates are searched over 5 decades, and the best run is narrow in each of them.
SPACE = """\
model: {encoder: tiny}
train: {max_steps: 40, eval_every: 10}
search:
  optim.lr: {loguniform: [1.0e-6, 1.0e-1]}
  optim.head_lr: {loguniform: [1.0e-6, 1.0e-1]}
  heads.sst.dropout: {uniform: [0.0, 0.6]}
  grad.method: {choice: [sum, pcgrad, pcgrad_weighted]}
  grad.weights.sst: {uniform: [0.5, 2.0], when: {grad.method: [pcgrad_weighted]}}
tune:
  num_samples: 30
"""
MAX_T = 4


def objective(v: dict) -> float:
    """Best at lr 1e-4, head_lr ~3e-3, dropout 0.2, pcgrad_weighted with weight 1.5 (score 0.5)."""
    s = -((math.log10(v["optim.lr"]) + 4.0) ** 2) - (math.log10(v["optim.head_lr"]) + 2.5) ** 2
    s -= 4 * (v["heads.sst.dropout"] - 0.2) ** 2
    s += {"sum": 0.0, "pcgrad": -0.5, "pcgrad_weighted": 0.5}[v["grad.method"]]
    if v["grad.method"] == "pcgrad_weighted":
        s -= (v["grad.weights.sst"] - 1.5) ** 2
    return s


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def searcher_for(path: Path, **sets: str):
    space = load_space(path, {f"tune.{k}": v for k, v in sets.items()}, profile="cpu")
    return space, new_searcher(space, "overall", "max", MAX_T, log=lambda line: None)


# ---- the default rule and the options a search uses ---------------------------------------------------


@pytest.mark.parametrize("num_samples,startup", [(1, 2), (4, 2), (8, 2), (11, 2), (12, 3), (16, 4), (48, 12)])
def test_startup_trials_are_a_quarter_of_the_budget_at_least_2(num_samples, startup):
    assert startup_trials(num_samples) == startup


def test_the_default_is_group_tpe_with_the_budget_rule_and_tune_seed():
    assert sampler_options(None, 48, 7) == ("tpe", {"seed": 7, "n_startup_trials": 12, "multivariate": True,
                                                    "group": True})  # fmt: skip
    # what the file gives wins; the rest stays the default
    assert sampler_options({"kind": "tpe", "n_startup_trials": 5, "seed": 1}, 48, 7)[1] == {
        "seed": 1, "n_startup_trials": 5, "multivariate": True, "group": True}  # fmt: skip
    assert sampler_options({"kind": "random"}, 48, 7) == ("random", {"seed": 7})
    assert sampler_options({"kind": "gp"}, 8, 0) == ("gp", {"seed": 0, "n_startup_trials": 2})


def test_warm_start_points_count_towards_the_startup(space_file):
    # 12 trials: 3 startup trials, the 2 warm-start points among them, so one random trial before TPE
    space, s = searcher_for(space_file, num_samples="12", warm_start="[base, {optim.lr: 1.0e-4}]")
    labels = [t["proposed_by"] for t in play_trials(s, space, objective, 6)]
    assert labels == ["warm start", "warm start", "startup (random)", "tpe", "tpe", "tpe"]
    sampler = s.study().sampler
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._n_startup_trials == 3


def test_trials_asked_before_the_startup_trials_finish_are_random(space_file):
    # two at a time: the second is asked while the first runs, so it is random although one warm point is queued
    _, s = searcher_for(space_file, num_samples="8", warm_start="[base]")
    assert s.suggest("a") and s.suggest("b")
    assert [s.optuna_trial(t).user_attrs["proposed_by"] for t in "ab"] == ["warm start", "startup (random)"]


def test_the_searcher_is_built_with_the_options_given(space_file):
    sampler = "{kind: tpe, n_startup_trials: 5, n_ei_candidates: 7, constant_liar: false, seed: 3}"
    _, s = searcher_for(space_file, sampler=sampler)
    built = s.study().sampler
    assert isinstance(built, optuna.samplers.TPESampler)
    assert (built._n_startup_trials, built._n_ei_candidates, built._constant_liar) == (5, 7, False)
    assert (built._multivariate, built._group) == (True, True)  # the defaults the file left alone
    assert s._sampler_options["seed"] == 3  # the seed reaches the constructor (Optuna keeps only its RNG)


# ---- the options each kind takes, and their checks --------------------------------------------------------


def test_the_options_come_from_the_samplers_signatures():
    allowed, objects = samplers.options_of("tpe")
    assert {"n_startup_trials", "multivariate", "group", "constant_liar", "seed", "n_ei_candidates"} <= set(allowed)
    assert {"gamma", "weights", "constraints_func"} <= set(objects)
    assert set(samplers.options_of("random")[0]) == {"seed"}
    assert "independent_sampler" in samplers.options_of("qmc")[1] and "qmc_type" in samplers.options_of("qmc")[0]
    assert {"x0", "source_trials", "independent_sampler"} <= set(samplers.options_of("cmaes")[1])
    assert set(samplers.CLASSES) == set(KINDS)


BAD = [
    (
        "tpee",
        "tune.sampler",
        ("unknown sampler kind 'tpee' (did you mean 'tpe'?); choose from: tpe, random, qmc, gp, cmaes"),
    ),
    ("{kind: randm}", "tune.sampler.kind", "unknown sampler kind 'randm' (did you mean 'random'?)"),
    ("[tpe]", "tune.sampler", "must be a sampler kind (tpe, random, qmc, gp, cmaes) or a mapping"),
    (
        "{kind: tpe, n_startup: 3}",
        "tune.sampler.n_startup",
        "unknown option 'n_startup' (did you mean 'n_startup_trials'?); tpe (TPESampler) takes: consider_prior, ",
    ),
    ("{kind: random, n_startup_trials: 3}", "tune.sampler.n_startup_trials", "random (RandomSampler) takes: seed"),
    (
        "{gamma: 0.1}",
        "tune.sampler.gamma",
        ("TPESampler's gamma takes a Python object (Callable[[int], int] | None), which a space file cannot hold"),
    ),
    ("{kind: qmc, independent_sampler: random}", "tune.sampler.independent_sampler", "takes a Python object"),
    ("{n_startup_trials: -1}", "tune.sampler.n_startup_trials", "n_startup_trials is -1, but must be an integer >= 0"),
    ("{n_ei_candidates: 0}", "tune.sampler.n_ei_candidates", "must be an integer >= 1"),
    ("{n_startup_trials: 2.5}", "tune.sampler.n_startup_trials", "must be an integer"),
    ("{group: 1}", "tune.sampler.group", "group is 1, but must be true or false"),
    ("{kind: gp, deterministic_objective: 'yes'}", "tune.sampler.deterministic_objective", "must be true or false"),
    ("{kind: cmaes, sigma0: 0}", "tune.sampler.sigma0", "must be a finite number > 0"),
    (
        "{multivariate: false, group: true}",
        "tune.sampler",
        "Optuna's TPESampler refuses these options: ``group`` option can only be enabled when ``multivariate``",
    ),
    ("{kind: qmc, qmc_type: lattice}", "tune.sampler", "Optuna's QMCSampler refuses these options"),
]


@pytest.mark.parametrize("value,key,message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_sampler_names_the_file_the_key_and_what_is_allowed(space_file, value, key, message):
    space_file.write_text(SPACE.replace("num_samples: 30", f"num_samples: 30\n  sampler: {value}"))
    with pytest.raises(SpaceError) as e:
        load_space(space_file, profile="cpu")
    assert (e.value.path, e.value.key) == (str(space_file), key), str(e.value)
    assert message in e.value.message, e.value.message


def test_a_profile_or_set_sampler_replaces_the_files_and_is_checked_where_written(space_file):
    space_file.write_text(SPACE.replace("num_samples: 30", "num_samples: 30\n  sampler: {kind: gp, seed: 4}\n"
                                        "  profiles: {cpu: {sampler: {kind: tpe, n_startup_trial: 4}}}"))  # fmt: skip
    with pytest.raises(SpaceError) as e:
        load_space(space_file, profile="cpu")
    assert e.value.key == "tune.profiles.cpu.sampler.n_startup_trial"
    assert load_space(space_file, profile="gpu").tune.sampler == {"kind": "gp", "seed": 4}
    space = load_space(space_file, {"tune.sampler": "random"}, profile="gpu")
    assert space.tune.sampler == {"kind": "random"}
    assert "sampler: random sampling, seed 0" in space.notes


# ---- what the samplers do ------------------------------------------------------------------------------


SEEDS = range(5)


def test_tpe_as_configured_beats_random_search_at_equal_trials(space_file):
    """30 trials, ASHA's stops simulated (a trial below the median at its first or second evaluation
    is stopped there and PRUNED): the default TPE (7 startup trials, multivariate with group) against
    random sampling, each seeded 0-4. The measure is the best score among the trials proposed."""
    best = {}
    for kind in ("tpe", "random"):
        best[kind] = []
        for seed in SEEDS:
            space, s = searcher_for(space_file, sampler=kind, seed=str(seed))
            trials = play_trials(s, space, objective, 30)
            best[kind].append(max(t["score"] for t in trials))
            if kind == "tpe":  # TPE proposed, not random, once 7 trials had finished
                assert [t["proposed_by"] for t in trials] == ["startup (random)"] * 7 + ["tpe"] * 23
    # Everything here is seeded, so the numbers are the same on every run; the margin keeps the test about a
    # clear win (measured: TPE -0.01 mean best, random -0.23; TPE ahead on 3 of the 5 seeds, by 0.22 on average
    # over these 5, and on every 5-seed group of 30 seeds tried, by 0.12 to 0.47).
    assert statistics.mean(best["tpe"]) > statistics.mean(best["random"]) + 0.1, best
    assert sum(t > r for t, r in zip(best["tpe"], best["random"])) >= 3, best


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_proposes_valid_configs_on_a_conditional_space(space_file, kind):
    startup = ", n_startup_trials: 2" if kind in ("tpe", "gp", "cmaes") else ""
    space, s = searcher_for(space_file, sampler=f"{{kind: {kind}{startup}}}", num_samples="8")
    trials = play_trials(s, space, objective, 8, stop_below_median=False)  # each runs to the end: COMPLETE
    assert isinstance(s.study().sampler, samplers.CLASSES[kind])
    for t in trials:
        space.config_for(t["params"])  # a valid run config
        weighted = t["values"]["grad.method"] == "pcgrad_weighted"
        assert ("grad.weights.sst" in t["values"]) == weighted, t["values"]  # the condition holds, and only then
    labels = [t["proposed_by"] for t in trials]
    assert labels == (["startup (random)"] * 2 + [kind] * 6 if startup else [kind] * 8)


def test_gp_counts_only_complete_trials_towards_its_startup(space_file):
    # with ASHA most trials are PRUNED: GP (and CMA-ES unless consider_pruned_trials) ignore them, so its
    # startup lasts until 2 trials ran their whole budget, and proposed_by says so
    space, s = searcher_for(space_file, sampler="{kind: gp, n_startup_trials: 2}", num_samples="8")
    trials = play_trials(s, space, lambda v: -abs(math.log10(v["optim.lr"]) + 4), 8)
    states = [s.optuna_trial(f"t{i}").state.name for i in range(8)]
    for i, t in enumerate(trials):
        complete_before = states[:i].count("COMPLETE")
        assert t["proposed_by"] == ("startup (random)" if complete_before < 2 else "gp"), (states, trials)


# ---- a real search: the study it saved carries the sampler it was given -----------------------------------


@pytest.fixture(scope="module")
def shipped_smoke(data_dir, token_cache, tmp_path_factory):
    """``spaces/pcgrad.yaml --smoke`` (its ``warm_start: [base]``) with 3 trials and TPE options set."""
    tmp = tmp_path_factory.mktemp("sampled")
    out = cli(str(REPO / "spaces" / "pcgrad.yaml"), "--smoke", "--json", "--set", "tune.num_samples=3",
              "--set", "tune.sampler={n_startup_trials: 1, n_ei_candidates: 5}", "--set", f"data.dir={data_dir}",
              "--set", f"data.cache_dir={token_cache}", "--set", f"tune.storage_path={tmp / 'results'}",
              cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return {"experiment": tmp / "results" / "pcgrad-smoke", "stdout": out.stdout, "stderr": out.stderr}


@pytest.mark.slow
def test_the_running_study_carries_the_samplers_settings_and_starts_from_the_base(shipped_smoke):
    from search.engine.searcher import load_searcher, proposals

    experiment = shipped_smoke["experiment"]
    searcher = load_searcher(experiment)
    sampler = searcher.study().sampler
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert (sampler._n_startup_trials, sampler._n_ei_candidates, sampler._group, sampler._multivariate) == (
        1,
        5,
        True,
        True,
    )
    assert searcher._sampler_options["seed"] == 0  # tune.seed
    trials = searcher.study().trials
    space = load_space(REPO / "spaces" / "pcgrad.yaml", profile="cpu", smoke=True)
    assert trials[0].params == space.warm_start()[0].params  # the first trial is the base point
    labels = proposals(experiment)
    # two at a time: trial 1 is asked while the base runs, trial 2 once a trial finished (the startup of 1)
    assert sorted(labels.values()) == ["startup (random)", "tpe", "warm start"], labels
    by_number = {searcher.optuna_trial(t).number: label for t, label in labels.items()}
    assert [by_number[i] for i in range(3)] == ["warm start", "startup (random)", "tpe"]
    assert "sampler: TPE (multivariate, group), random until 1 trial finished" in shipped_smoke["stdout"]


@pytest.mark.slow
def test_status_shows_how_each_trial_was_proposed(shipped_smoke):
    import io

    import pandas as pd

    out = cli("status", str(shipped_smoke["experiment"]), "--format", "csv")
    assert out.returncode == 0, out.stderr[-3000:]
    df = pd.read_csv(io.StringIO(out.stdout))
    assert sorted(df["proposed_by"]) == ["startup (random)", "tpe", "warm start"]
