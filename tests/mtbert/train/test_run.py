"""A resume that changes what Population Based Training mutates (``RESUME_CHANGEABLE``): the head
dropout and the task schedule's rates and counts apply from the resumed step on; the task streams go
on where they were. On the tiny encoder and real rows, with SST cut to 40 so the tasks' sizes differ."""

from __future__ import annotations

import shutil

import pytest
import torch

from mtbert.data.course import TaskDataset
from mtbert.data.prepare import prepare_data
from mtbert.data.sampling import build_schedule
from mtbert.data.stream import TaskStream
from mtbert.model.bert import Dropout
from mtbert.model.pretrained import load_encoder
from mtbert.train.checkpoint import CONFIG_FILE, load_checkpoint, read_state
from mtbert.train.run import start, train
from mtbert.validation import load_config


class Interrupted(Exception):
    pass


@pytest.fixture
def quick(small_run):
    """The small runs with 16 dev rows per task: these tests read training steps, not scores."""
    return lambda **overrides: small_run(**{"data.max_eval_per_task": 16, **overrides})


@pytest.fixture
def uneven(quick):
    """The quick runs' data with SST cut to 40 rows (para and sts keep 160), shared by every run of a test."""
    data = prepare_data(quick(), load_encoder("tiny")[1])
    sst = data.train["sst"]
    data.train["sst"] = TaskDataset(sst.examples, sst.encoded, sst.indices[:40])
    return data


def cut_at_4(config, data, folder):
    """Train ``config`` (8 steps, an evaluation every 4) and stop at its first evaluation: ``folder/last`` at step 4."""

    def stop_at_first_eval(step, metrics, save):
        raise Interrupted

    with pytest.raises(Interrupted):
        train(config, data=data, checkpoint_dir=folder, on_eval=stop_at_first_eval)
    return folder / "last"


def dropouts(module):
    return {m.p for m in module.modules() if isinstance(m, Dropout)}


def steps(trainer, n):
    """Take ``n`` training steps; each step's (task -> examples taken, task -> input ids) and losses."""
    taken: dict[str, tuple[int, torch.Tensor]] = {}
    for task, stream in trainer.objective.streams.items():

        def take(k, task=task, take=stream.take):
            batch = take(k)
            taken[task] = (k, batch["input_ids"])
            return batch

        stream.take = take
    out = []
    for _ in range(n):
        taken.clear()
        losses = trainer.train_step()
        out.append(({t: k for t, (k, _) in taken.items()}, {t: ids for t, (_, ids) in taken.items()}, losses))
    return out


def test_a_resume_with_a_new_head_dropout_trains_with_it(quick, uneven, tmp_path):
    sst_only = {"sampling.schedule": "ratios", "sampling.ratios.para": 0, "sampling.ratios.sts": 0}  # quicker steps
    last = cut_at_4(quick(**sst_only), uneven, tmp_path / "cut")  # heads' dropout 0.3
    new = quick(**sst_only, **{"heads.sst.dropout": 0.0})

    resumed = start(new, resume=last, data=uneven)
    model = resumed.objective.model
    assert dropouts(model.head("sst")) == {0.0} and dropouts(model.head("para")) == {0.3}
    assert model.specs["sst"].dropout == 0.0  # a head re-drawn from its spec keeps the new rate
    got = [s[2]["train_loss_sst"] for s in steps(resumed, 2)]

    kept = start(quick(**sst_only), resume=last, data=uneven)  # the old rate
    assert dropouts(kept.objective.model.head("sst")) == {0.3}
    old = [s[2]["train_loss_sst"] for s in steps(kept, 2)]
    assert got[0] != old[0]  # same weights and batches; only the dropout differs

    # the same state, in a model built with the new rate from the start (the checkpoint's config says 0.0)
    built = tmp_path / "built"
    shutil.copytree(last, built)
    config = load_config(built / CONFIG_FILE).with_overrides({"heads.sst.dropout": 0.0})
    (built / CONFIG_FILE).write_text(config.to_yaml())
    rebuilt = start(new, resume=built, data=uneven)
    want = [s[2]["train_loss_sst"] for s in steps(rebuilt, 2)]
    assert got == want  # exact: set_dropout only sets the rate the same layers read; same kernels, same order
    a, b = resumed.objective.model.state_dict(), rebuilt.objective.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # the checkpoints of the resumed run record the new rate, so they resume with it without a conflict
    saved = load_checkpoint(resumed.save(tmp_path / "after"))
    assert saved.config.heads.sst.dropout == 0.0 and dropouts(saved.model.head("sst")) == {0.0}


def sampling(schedule, settings):
    """A schedule's settings as dotted config overrides."""
    out = {"sampling.schedule": schedule}
    for key, value in settings.items():
        out.update({f"sampling.{key}.{t}": v for t, v in value.items()} if isinstance(value, dict)
                   else {f"sampling.{key}": value})  # fmt: skip
    return out


@pytest.mark.parametrize("schedule, old, new", [
    ("proportional", {"alpha": 0.0}, {"alpha": 1.0}),
    ("ratios", {"ratios": {"sst": 1, "para": 1, "sts": 1}}, {"ratios": {"sst": 0.5, "para": 1, "sts": 0}}),
])  # fmt: skip
def test_a_resume_with_new_sampling_settings_plans_with_them_and_the_streams_go_on(quick, uneven, tmp_path,
                                                                                  schedule, old, new):  # fmt: skip
    last = cut_at_4(quick(**sampling(schedule, old)), uneven, tmp_path / "cut")
    resumed = start(quick(**sampling(schedule, new)), resume=last, data=uneven)
    assert resumed.step == 4

    sizes = {t: len(ds) for t, ds in uneven.train.items()}
    assert sizes == {"sst": 40, "para": 160, "sts": 160}
    fresh, before = (build_schedule(schedule, sizes, 8, seed=0, **settings) for settings in (new, old))
    later = range(4, 60)
    planned = [resumed.objective.schedule.plan(s) for s in later]
    assert planned == [fresh.plan(s) for s in later]  # the new settings' plan at those steps...
    assert planned != [before.plan(s) for s in later]  # ...which is not the old one

    state = read_state(last)["streams"]
    references = {t: TaskStream(uneven.train[t], 8, i) for i, t in enumerate(uneven.train)}  # seed 0 + i
    for t, ref in references.items():
        ref.load_state_dict(state[t])
    assert any(s["epoch"] or s["position"] for s in state.values())  # the cut is not at the streams' start
    for step, (counts, ids, _) in zip(range(4, 7), steps(resumed, 3)):
        assert counts == fresh.plan(step)
        for t, k in counts.items():  # each task's next examples: its stream goes on where it was
            assert torch.equal(ids[t], references[t].take(k)["input_ids"]), (step, t)
