import json
import math

import pytest

from mtbert.data.sampling import SCHEDULES, build_schedule

# The course's training set sizes (the full Quora file): the spread the schedules exist for.
COURSE = {"sst": 8544, "quora": 141506, "sts": 6040}


def plans(schedule, start, stop):
    return [schedule.plan(step) for step in range(start, stop)]


def within_4_sigma(hits: int, n: int, p: float) -> bool:
    """|hits/n - p| within 4 binomial standard deviations: a false alarm about once in 16,000 checks."""
    return abs(hits / n - p) <= 4 * math.sqrt(p * (1 - p) / n)


def formula(sizes, alpha):
    weights = {task: n**alpha for task, n in sizes.items()}
    return {task: w / sum(weights.values()) for task, w in weights.items()}


def test_sequential_is_each_task_in_turn_remainder_last():
    s = build_schedule("sequential", {"sst": 10, "quora": 7, "sts": 3}, batch_size=4)
    epoch = [{"sst": 4}, {"sst": 4}, {"sst": 2}, {"quora": 4}, {"quora": 3}, {"sts": 3}]
    assert s.steps_per_epoch == 6
    assert plans(s, 0, 12) == epoch + epoch
    assert [s.epoch_of(step) for step in (0, 5, 6, 11, 12)] == [0, 0, 1, 1, 2]


def test_sequential_follows_the_given_order():
    s = build_schedule("sequential", {"sst": 10, "quora": 7, "sts": 3}, batch_size=4, order=["sts", "sst", "quora"])
    assert plans(s, 0, 6) == [{"sts": 3}, {"sst": 4}, {"sst": 4}, {"sst": 2}, {"quora": 4}, {"quora": 3}]


def test_round_robin_gives_every_task_a_batch_every_step():
    s = build_schedule("round_robin", {"sst": 10, "quora": 3}, batch_size=4)
    assert s.steps_per_epoch == 3  # ceil(10 / 4): the largest task seen once
    assert plans(s, 0, 7) == [{"sst": 4, "quora": 4}] * 7


def test_round_robin_proportional_spreads_each_dataset_over_the_epoch():
    s = build_schedule("round_robin", {"quora": 10, "sst": 5, "sts": 2}, batch_size=4, per_step="proportional")
    # task i's count at step k: floor((k+1) N_i / 3) - floor(k N_i / 3)
    epoch = [{"quora": 3, "sst": 1}, {"quora": 3, "sst": 2, "sts": 1}, {"quora": 4, "sst": 2, "sts": 1}]
    assert plans(s, 0, 6) == epoch + epoch


def test_round_robin_proportional_sees_every_example_once_per_epoch():
    s = build_schedule("round_robin", COURSE, batch_size=32, per_step="proportional")
    seen = {task: 0 for task in COURSE}
    for plan in plans(s, 0, s.steps_per_epoch):
        assert plan["quora"] <= 32
        for task, n in plan.items():
            seen[task] += n
    assert seen == COURSE


def test_ratios_are_exact_and_zero_leaves_a_task_out():
    s = build_schedule("ratios", {"sst": 100, "quora": 1000, "sts": 60}, batch_size=8,
                       ratios={"sst": 0, "quora": 3, "sts": 1})
    assert plans(s, 0, 100) == [{"quora": 24, "sts": 8}] * 100
    assert s.steps_per_epoch == 42  # ceil(max(1000 / 24, 60 / 8))


def test_samples_per_epoch_draws_that_many_of_each_task_interleaved():
    s = build_schedule("samples_per_epoch", COURSE, batch_size=8, samples_per_epoch={"sst": 20, "quora": 40, "sts": 10})
    assert s.steps_per_epoch == 5
    assert plans(s, 0, 10) == [{"sst": 4, "quora": 8, "sts": 2}] * 10
    uneven = build_schedule("samples_per_epoch", COURSE, batch_size=8,
                            samples_per_epoch={"sst": 7, "quora": 20, "sts": 0})
    epoch = plans(uneven, 0, uneven.steps_per_epoch)
    assert epoch == [{"sst": 2, "quora": 6}, {"sst": 2, "quora": 7}, {"sst": 3, "quora": 7}]


def test_samples_per_epoch_one_number_for_all_tasks():
    s = build_schedule("samples_per_epoch", COURSE, batch_size=32, samples_per_epoch=20000)
    assert s.steps_per_epoch == 625 and plans(s, 0, 625) == [{"sst": 32, "quora": 32, "sts": 32}] * 625


def test_samples_per_epoch_none_is_the_whole_dataset():
    sizes = {"quora": 10, "sst": 5, "sts": 2}
    s = build_schedule("samples_per_epoch", sizes, batch_size=4,
                       samples_per_epoch={"quora": None, "sst": 5, "sts": None})
    whole = build_schedule("round_robin", sizes, batch_size=4, per_step="proportional")
    assert plans(s, 0, 6) == plans(whole, 0, 6)


def test_fractional_ratios_that_make_whole_counts():
    s = build_schedule("ratios", COURSE, batch_size=8, ratios={"sst": 0.5, "quora": 1.0, "sts": 0.25})
    assert s.plan(0) == {"sst": 4, "quora": 8, "sts": 2}


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_proportional_one_task_per_step_matches_the_formula(alpha):
    s = build_schedule("proportional", COURSE, batch_size=16, alpha=alpha, seed=1)
    n = 20000  # about two epochs of 9756 steps
    steps = plans(s, 0, n)
    assert all(len(plan) == 1 and list(plan.values()) == [16] for plan in steps)
    p = formula(COURSE, alpha)
    for task in COURSE:
        hits = sum(task in plan for plan in steps)
        assert within_4_sigma(hits, n, p[task]), (task, hits / n, p[task])


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_proportional_mixed_batches_match_the_formula_per_example(alpha):
    s = build_schedule("proportional", COURSE, batch_size=16, alpha=alpha, mixed=True, seed=2)
    steps = plans(s, 0, 5000)
    assert all(sum(plan.values()) == 16 for plan in steps)
    p = formula(COURSE, alpha)
    # batches really are mixed: a batch is single-task with probability sum_i p_i^16
    single = sum(len(plan) == 1 for plan in steps)
    assert within_4_sigma(single, 5000, sum(q**16 for q in p.values()))
    n = 5000 * 16
    for task in COURSE:
        hits = sum(plan.get(task, 0) for plan in steps)
        assert within_4_sigma(hits, n, p[task]), (task, hits / n, p[task])


def test_annealed_alpha_follows_min_anneal():
    s = build_schedule("annealed", COURSE, batch_size=32, max_epochs=10)
    for epoch in (0, 3, 5, 6, 7, 9):
        assert s.alpha_at(epoch) == pytest.approx(min(0.5, 1 - 0.9 * epoch / 10))
    assert s.alpha_at(6) == pytest.approx(0.46) and s.alpha_at(9) == pytest.approx(0.19)
    assert s.alpha_at(10) == s.alpha_at(25) == pytest.approx(0.1)  # held at anneal_end past max_epochs
    other = build_schedule("annealed", COURSE, batch_size=32, max_epochs=4, anneal_start=0.8, anneal_end=0.2)
    assert [other.alpha_at(e) for e in range(5)] == pytest.approx([0.8, 0.8, 0.6, 0.4, 0.2])


@pytest.mark.parametrize("epoch", [0, 6, 9])
def test_annealed_frequencies_within_an_epoch_match_that_epochs_alpha(epoch):
    sizes = {"quora": 40000, "sst": 4000, "sts": 1000}
    s = build_schedule("annealed", sizes, batch_size=4, max_epochs=10, seed=3)
    n = s.steps_per_epoch  # 11250
    steps = plans(s, epoch * n, (epoch + 1) * n)
    p = formula(sizes, min(0.5, 1 - 0.9 * epoch / 10))
    for task in sizes:
        hits = sum(task in plan for plan in steps)
        assert within_4_sigma(hits, n, p[task]), (task, hits / n, p[task])


@pytest.mark.parametrize("name, settings", [("proportional", {"alpha": 0.5, "mixed": True}),
                                            ("annealed", {"max_epochs": 3})])
def test_seed_decides_the_sequence(name, settings):
    def run(seed):
        return plans(build_schedule(name, COURSE, batch_size=8, seed=seed, **settings), 0, 300)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_each_epoch_draws_afresh():
    s = build_schedule("proportional", {"sst": 300, "quora": 700, "sts": 200}, batch_size=8, alpha=0.5, seed=4)
    n = s.steps_per_epoch
    assert len({tuple(map(str, plans(s, e * n, (e + 1) * n))) for e in range(3)}) == 3


def test_plan_depends_only_on_the_step_not_on_the_calls_before():
    sizes = {"sst": 300, "quora": 700, "sts": 200}
    forward = build_schedule("annealed", sizes, batch_size=8, max_epochs=3, mixed=True, seed=6)
    backward = build_schedule("annealed", sizes, batch_size=8, max_epochs=3, mixed=True, seed=6)
    n = 4 * forward.steps_per_epoch
    assert [backward.plan(step) for step in reversed(range(n))][::-1] == plans(forward, 0, n)


SETTINGS = {
    "sequential": {"order": ["sts", "quora", "sst"]},
    "round_robin": {"per_step": "proportional"},
    "proportional": {"alpha": 0.5, "mixed": True},
    "annealed": {"max_epochs": 4, "mixed": False},
    "ratios": {"ratios": {"sst": 1, "quora": 3, "sts": 0}},
    "samples_per_epoch": {"samples_per_epoch": {"sst": 50, "quora": 90, "sts": None}},
}


def test_every_registered_schedule_is_covered():
    assert sorted(SETTINGS) == list(SCHEDULES)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_state_dict_round_trip_continues_the_same_sequence(name):
    sizes = {"sst": 300, "quora": 700, "sts": 200}
    n, m = 137, 250  # the save point falls inside an epoch; the continuation crosses epoch boundaries
    uninterrupted = plans(build_schedule(name, sizes, batch_size=8, seed=5, **SETTINGS[name]), 0, n + m)

    first = build_schedule(name, sizes, batch_size=8, seed=5, **SETTINGS[name])
    plans(first, 0, n)
    state = json.loads(json.dumps(first.state_dict()))  # plain data, as a checkpoint stores it

    resumed = build_schedule(name, sizes, batch_size=8, seed=999, **SETTINGS[name])
    resumed.load_state_dict(state)
    assert plans(resumed, n, n + m) == uninterrupted[n:]
    assert plans(first, n, n + m) == uninterrupted[n:]


def test_resuming_with_other_settings_fails():
    state = build_schedule("proportional", COURSE, batch_size=8, alpha=0.5).state_dict()
    with pytest.raises(ValueError, match=r"cannot resume: the checkpoint's sampling.mixed is False, "
                                         r"but this schedule's is True \(only alpha may change\)"):
        build_schedule("proportional", COURSE, batch_size=8, alpha=0.5, mixed=True).load_state_dict(state, step=3)
    with pytest.raises(ValueError, match=r"cannot resume: the checkpoint's sampling.schedule is 'proportional', "
                                         r"but this one is 'annealed'"):
        build_schedule("annealed", COURSE, batch_size=8, max_epochs=3).load_state_dict(state)
    with pytest.raises(ValueError, match=r"cannot resume: the checkpoint's sampling.batch_size is 8, "
                                         r"but this schedule's is 16"):
        build_schedule("proportional", COURSE, batch_size=16, alpha=0.5).load_state_dict(state)
    with pytest.raises(ValueError, match=r"cannot resume: the checkpoint's sampling.per_step is 'equal', "
                                         r"but this schedule's is 'proportional'$"):
        state = build_schedule("round_robin", COURSE, batch_size=8).state_dict()
        build_schedule("round_robin", COURSE, batch_size=8, per_step="proportional").load_state_dict(state, step=3)


# ---- a resume that changes a schedule's rates or counts (Population Based Training) ----------------

SIZES = {"sst": 300, "quora": 700, "sts": 200}
# schedule -> (settings saved, settings resumed with): the settings of REPLANNABLE, each changed
CHANGES = {
    "proportional": ({"alpha": 0.5}, {"alpha": 1.0}),
    "annealed": ({"max_epochs": 4, "anneal_start": 0.5, "anneal_end": 0.1},
                 {"max_epochs": 6, "anneal_start": 0.9, "anneal_end": 0.0}),
    "ratios": ({"ratios": {"sst": 1, "quora": 3, "sts": 0}}, {"ratios": {"sst": 1, "quora": 1, "sts": 1}}),
    "samples_per_epoch": ({"samples_per_epoch": {"sst": 50, "quora": 90, "sts": None}},
                          {"samples_per_epoch": {"sst": 400, "quora": 90, "sts": 10}}),
}  # fmt: skip


def resumed_with(name, new, state, step):
    schedule = build_schedule(name, SIZES, batch_size=8, seed=5, **new)
    schedule.load_state_dict(json.loads(json.dumps(state)), step=step)  # plain data, as a checkpoint stores it
    return schedule


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_resume_with_new_rates_or_counts_plans_with_them_from_the_resumed_step(name):
    old, new = CHANGES[name]
    assert set(old) | set(new) <= SCHEDULES.get(name).REPLANNABLE
    n, m = 137, 300  # the resume falls inside an epoch; the continuation crosses epoch boundaries
    first = build_schedule(name, SIZES, batch_size=8, seed=5, **old)
    before = plans(first, 0, n + m)
    resumed = resumed_with(name, new, first.state_dict(), n)
    fresh = build_schedule(name, SIZES, batch_size=8, seed=5, **new)  # new settings from step 0
    after = plans(resumed, n, n + m)
    assert after != before[n:]  # the new settings are used...
    if fresh.steps_per_epoch == first.steps_per_epoch:  # ...as a schedule built with them plans those steps
        assert after == plans(fresh, n, n + m)
        assert [resumed.epoch_of(s) for s in range(n, n + m)] == [first.epoch_of(s) for s in range(n, n + m)]
    else:  # the epoch's table of counts is the new one, read from where the epoch began
        epoch = first.epoch_of(n)
        start = resumed.epoch_start(epoch)
        assert start == epoch * first.steps_per_epoch and resumed.epoch_of(n) == epoch
        rows = fresh.plan_epoch(epoch)[n - start :].tolist()  # the new settings' table of that epoch
        assert after[: len(rows)] == [{t: c for t, c in zip(fresh.tasks, row) if c} for row in rows]
        assert resumed.epoch_of(start + fresh.steps_per_epoch) == epoch + 1
    # deterministic, and a resume of the resumed run (settings unchanged) plans the same steps
    assert plans(resumed_with(name, new, first.state_dict(), n), n, n + m) == after
    k = n + 100
    again = resumed_with(name, new, resumed.state_dict(), None)  # unchanged settings need no step
    assert plans(again, k, n + m) == after[k - n :]
    assert [again.epoch_of(s) for s in range(k, n + m)] == [resumed.epoch_of(s) for s in range(k, n + m)]


def test_new_ratios_set_the_epoch_length_from_the_epoch_in_progress():
    old = {"sst": 1, "quora": 3, "sts": 0}  # counts 8, 24, 0: 38 steps an epoch (sst's 300 examples)
    first = build_schedule("ratios", SIZES, batch_size=8, ratios=old)
    assert first.steps_per_epoch == 38
    # longer epochs (88 steps: quora's 700 at 8 a step): epoch 1 began at step 38 and now ends at 126
    longer = resumed_with("ratios", {"ratios": {"sst": 1, "quora": 1, "sts": 1}}, first.state_dict(), 50)
    assert [longer.epoch_of(s) for s in (37, 38, 50, 125, 126, 213, 214)] == [0, 1, 1, 1, 2, 2, 3]
    assert plans(longer, 50, 53) == [{"sst": 8, "quora": 8, "sts": 8}] * 3
    # shorter epochs (22 steps): epoch 1 is already 37 steps long at step 75, so it ends there
    shorter = resumed_with("ratios", {"ratios": {"sst": 4, "quora": 4, "sts": 4}}, first.state_dict(), 75)
    assert [shorter.epoch_of(s) for s in (74, 75, 96, 97)] == [1, 2, 2, 3]
    assert shorter.state_dict()["anchor"] == {"step": 75, "epoch": 2}
    # a second change counts from the first one's anchor
    back = resumed_with("ratios", {"ratios": old}, shorter.state_dict(), 100)  # epoch 3 began at 97
    assert [back.epoch_of(s) for s in (99, 100, 134, 135)] == [3, 3, 3, 4]
    assert plans(back, 100, 101) == [{"sst": 8, "quora": 24}]


def test_a_changed_setting_needs_the_resumed_step():
    state = build_schedule("proportional", SIZES, batch_size=8, alpha=0.5).state_dict()
    with pytest.raises(ValueError, match=r"sampling.alpha changed, and re-planning needs the step the run resumes at"):
        build_schedule("proportional", SIZES, batch_size=8, alpha=0.2).load_state_dict(state)


def test_what_may_change_at_resume_is_what_the_schedules_re_plan():
    """``mtbert.config.resume`` (which knows no schedule) lets through the config keys whose settings
    the schedules re-plan, and refuses the others before anything loads."""
    from mtbert.config import RunConfig, may_change_at_resume

    config = RunConfig()
    for name in SCHEDULES:
        cls = SCHEDULES.get(name)
        keys = set(build_schedule(name, SIZES, batch_size=8, **SETTINGS[name]).settings())
        assert cls.REPLANNABLE <= keys, name
        for key in keys:
            dotted = "train.max_steps" if key == "max_epochs" else f"sampling.{key}"  # annealed's length
            assert dotted in config.flat() or key == "order" or any(k.startswith(dotted + ".") for k in config.flat())
            assert may_change_at_resume(dotted) == (key in cls.REPLANNABLE), (name, key)


def test_unknown_schedule_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown sampling.schedule 'round_robn' \(did you mean 'round_robin'\?\); "
                                         r"choose from: annealed, proportional, ratios, round_robin, "
                                         r"samples_per_epoch, sequential"):
        build_schedule("round_robn", COURSE, batch_size=8)


@pytest.mark.parametrize("name, batch_size, settings, message", [
    ("proportional", 8, {"alpha": 1.5}, r"sampling.alpha is 1.5, but must be in \[0, 1\]"),
    ("proportional", 8, {"alpha": -0.1}, r"sampling.alpha is -0.1, but must be in \[0, 1\]"),
    ("proportional", 8, {"alpha": float("nan")}, r"sampling.alpha is nan, but must be in \[0, 1\]"),
    ("proportional", 8, {"mixed": "yes"}, r"sampling.mixed is 'yes', but must be true or false"),
    ("proportional", 0, {}, r"sampling.batch_size is 0, but must be an integer >= 1"),
    ("proportional", 8, {"seed": -1}, r"sampling.seed is -1, but must be an integer >= 0"),
    ("proportional", 8, {"alpah": 0.5}, r"sampling.alpah is not a setting of sampling.schedule 'proportional'; "
                                        r"its settings: alpha, mixed"),
    ("annealed", 8, {}, r"sampling.max_epochs is missing; sampling.schedule 'annealed' needs it"),
    ("annealed", 8, {"max_epochs": 0}, r"sampling.max_epochs is 0, but must be an integer >= 1"),
    ("annealed", 8, {"max_epochs": 5, "anneal_end": 2}, r"sampling.anneal_end is 2, but must be in \[0, 1\]"),
    ("annealed", 8, {"max_epochs": 5, "anneal_start": 1.1}, r"sampling.anneal_start is 1.1, but must be in \[0, 1\]"),
    ("round_robin", 8, {"per_step": "random"},
     r"sampling.per_step is 'random', but must be one of: equal, proportional"),
    ("sequential", 8, {"order": ["sst", "quora"]},
     r"sampling.order is \['sst', 'quora'\], but must list each task once"),
    ("ratios", 8, {}, r"sampling.ratios is missing"),
    ("ratios", 8, {"ratios": {"sst": 0, "quora": 0, "sts": 0}},
     r"sampling.ratios is \{'sst': 0, 'quora': 0, 'sts': 0\}, but must give at least one task a ratio > 0"),
    ("ratios", 8, {"ratios": {"sst": -1, "quora": 3, "sts": 1}},
     r"sampling.ratios\['sst'\] is -1, but must be a number >= 0"),
    ("ratios", 8, {"ratios": {"sst": 0.3, "quora": 3, "sts": 1}},
     r"sampling.ratios\['sst'\] is 0.3, but ratio \* sampling.batch_size \(2.4\) must be a whole number"),
    ("ratios", 8, {"ratios": {"sst": "1", "quora": 3, "sts": 1}},
     r"sampling.ratios\['sst'\] is '1', but must be a number >= 0"),
    ("ratios", 8, {"ratios": {"quora": 3, "sts": 1}}, r"sampling.ratios has no entry for task 'sst'"),
    ("ratios", 8, {"ratios": {"sst": 0, "qoura": 3, "sts": 1}},
     r"sampling.ratios names unknown task 'qoura'; tasks: sst, quora, sts"),
    ("samples_per_epoch", 8, {"samples_per_epoch": 0}, r"sampling.samples_per_epoch is 0, but must be an integer >= 1"),
    ("samples_per_epoch", 8, {"samples_per_epoch": {"sst": 0, "quora": 0, "sts": 0}},
     r"must give at least one task a count > 0"),
    ("samples_per_epoch", 8, {"samples_per_epoch": {"sst": -5, "quora": None, "sts": 0}},
     r"sampling.samples_per_epoch\['sst'\] is -5, but must be an integer >= 0"),
])
def test_bad_settings_say_what_is_allowed(name, batch_size, settings, message):
    settings = dict(settings)
    seed = settings.pop("seed", 0)
    with pytest.raises(ValueError, match=message):
        build_schedule(name, COURSE, batch_size=batch_size, seed=seed, **settings)


@pytest.mark.parametrize("sizes, message", [
    ({}, r"sampling.sizes is \{\}, but must map at least one task"),
    ({"sst": 0, "sts": 5}, r"sampling.sizes\['sst'\] is 0, but must be an integer >= 1"),
])
def test_bad_sizes(sizes, message):
    with pytest.raises(ValueError, match=message):
        build_schedule("round_robin", sizes, batch_size=8)


def test_negative_step_fails():
    with pytest.raises(ValueError, match="step is -1, but must be an integer >= 0"):
        build_schedule("round_robin", COURSE, batch_size=8).plan(-1)
