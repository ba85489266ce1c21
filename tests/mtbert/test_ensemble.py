"""Ensembles: the combiners and greedy selection on hand-made predictions (``mtbert.ensemble``), the
prediction files and bad input of ``mtbert-search ensemble`` (``search.ensemble``), and the command
on a real small search, with and without retraining."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from mtbert.ensemble import RULES, combine, greedy_select, labels, task_score

COMBOS = [(task, name) for task in RULES for name in RULES[task]]


def random_outputs(task: str, m: int, n: int, g: torch.Generator) -> torch.Tensor:
    """(M, N, ...) member outputs of ``task``'s shape."""
    if task == "sst":
        return torch.randn(m, n, 5, generator=g).softmax(dim=-1)
    if task == "para":
        return torch.rand(m, n, generator=g)
    return 5 * torch.rand(m, n, generator=g)


def random_gold(task: str, n: int, g: torch.Generator) -> torch.Tensor:
    if task == "sst":
        return torch.randint(0, 5, (n,), generator=g)
    if task == "para":
        return torch.randint(0, 2, (n,), generator=g)
    return 5 * torch.rand(n, generator=g)


# ---- combiners -----------------------------------------------------------------------------------


@pytest.mark.parametrize("task, name", COMBOS)
def test_an_ensemble_of_identical_members_equals_the_member(task, name):
    g = torch.Generator().manual_seed(0)
    one = random_outputs(task, 1, 50, g)[0]
    copies = torch.stack([one, one, one])
    for weights in ([1, 1, 1], [3, 0, 1], [0.2, 0.5, 0.3]):
        got = combine(task, name, copies, torch.tensor(weights, dtype=torch.float64))
        if task == "sts":
            torch.testing.assert_close(got, one.double())
        else:
            assert torch.equal(got, labels(task, one)), weights
    gold = random_gold(task, 50, g)
    selection = greedy_select(task, copies, gold, name)
    assert selection.score == task_score(task, labels(task, one), gold)
    assert selection.counts == (1, 0, 0)  # a copy adds nothing, so selection stops at once


PARA = torch.tensor([
    [0.9, 0.2, 0.6, 0.4],    # labels 1 0 1 0
    [0.6, 0.4, 0.3, 0.45],   #        1 0 0 0
    [0.1, 0.45, 0.8, 0.9],   #        0 0 1 1
])  # fmt: skip


def test_para_majority_vote_by_hand():
    assert combine("para", "vote", PARA, torch.ones(3)).tolist() == [1, 0, 1, 0]
    # weights 1, 1, 2: example 1 is a tie (1 + 1 against 2), broken by the weighted mean probability
    # (0.9 + 0.6 + 2 * 0.1) / 4 = 0.425 -> 0; example 4 ties too: (0.4 + 0.45 + 1.8) / 4 = 0.6625 -> 1
    assert combine("para", "vote", PARA, torch.tensor([1.0, 1.0, 2.0])).tolist() == [0, 0, 1, 1]


def test_para_mean_probability_by_hand():
    # means 0.5333, 0.35, 0.5667, 0.5833: example 4 is a paraphrase by mean, not by vote
    assert combine("para", "mean", PARA, torch.ones(3)).tolist() == [1, 0, 1, 1]
    # (0.4 + 0.45 + 0.9 * 0) / 2 = 0.425 -> 0 with the third member weighted 0
    assert combine("para", "mean", PARA, torch.tensor([1.0, 1.0, 0.0])).tolist() == [1, 0, 0, 0]


SST = torch.tensor([
    [[0.5, 0.1, 0.1, 0.1, 0.2], [0.0, 0.0, 0.4, 0.6, 0.0]],     # classes 0, 3
    [[0.0, 0.0, 0.1, 0.3, 0.6], [0.0, 0.0, 0.55, 0.45, 0.0]],   # classes 4, 2
])  # fmt: skip


def test_sst_probability_averaging_by_hand():
    # means [0.25, 0.05, 0.1, 0.2, 0.4] -> 4 and [0, 0, 0.475, 0.525, 0] -> 3
    assert combine("sst", "mean_probs", SST, torch.ones(2)).tolist() == [4, 3]
    # weights 3, 1: [0.375, 0.075, 0.1, 0.15, 0.3] -> 0 and [0, 0, 0.4375, 0.5625, 0] -> 3
    assert combine("sst", "mean_probs", SST, torch.tensor([3.0, 1.0])).tolist() == [0, 3]


def test_sst_round_mean_by_hand():
    # mean classes (0 + 4) / 2 = 2 -> 2 and (3 + 2) / 2 = 2.5 -> 2 (halves go to the even class)
    assert combine("sst", "round_mean", SST, torch.ones(2)).tolist() == [2, 2]
    # weights 2, 1: 4 / 3 -> 1 and 8 / 3 -> 3
    assert combine("sst", "round_mean", SST, torch.tensor([2.0, 1.0])).tolist() == [1, 3]


def test_sts_mean_by_hand():
    outputs = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    assert combine("sts", "mean", outputs, torch.tensor([1.0, 3.0])).tolist() == [2.5, 4.25]


@pytest.mark.parametrize("weights", [[1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0]])
def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError, match="non-negative numbers, not all 0"):
        combine("para", "mean", PARA, torch.tensor(weights))


def test_unknown_combiner_names_the_choices():
    with pytest.raises(ValueError, match="unknown para combiner 'avg'; choose from: mean, vote"):
        greedy_select("para", PARA, torch.tensor([1, 0, 1, 1]), "avg")
    with pytest.raises(ValueError, match="max_rounds is 0, but must be >= 1"):
        greedy_select("para", PARA, torch.tensor([1, 0, 1, 1]), max_rounds=0)


# ---- greedy selection ----------------------------------------------------------------------------


def noisy_members(task: str, gold: torch.Tensor, scales: list[float], g: torch.Generator) -> torch.Tensor:
    """Members that are the gold labels plus noise of each scale, in ``task``'s output shape."""
    out = []
    for s in scales:
        if task == "sst":
            logits = 3 * torch.nn.functional.one_hot(gold, 5).double() + s * torch.randn(len(gold), 5, generator=g)
            out.append(logits.softmax(dim=-1))
        elif task == "para":
            out.append(torch.sigmoid(4 * (gold.double() - 0.5) + s * torch.randn(len(gold), generator=g)))
        else:
            out.append(gold + s * torch.randn(len(gold), generator=g))
    return torch.stack(out)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("task, name", COMBOS)
def test_greedy_selection_is_never_below_the_best_member(task, name, seed):
    g = torch.Generator().manual_seed(seed)
    gold = random_gold(task, 300, g).double() if task == "sts" else random_gold(task, 300, g)
    scales = (0.5 + 4 * torch.rand(6, generator=g)).tolist()
    outputs = noisy_members(task, gold, scales, g)
    singles = [task_score(task, labels(task, o), gold) for o in outputs]
    selection = greedy_select(task, outputs, gold, name, max_rounds=10)
    assert selection.score >= max(singles)
    assert selection.history[0] == max(singles)
    assert all(b > a for a, b in zip(selection.history, selection.history[1:]))  # each pick improved
    assert sum(selection.counts) == len(selection.history) <= 10
    counts = torch.tensor(selection.counts, dtype=torch.float64)
    assert selection.score == task_score(task, combine(task, name, outputs, counts), gold)


def test_greedy_selection_uses_replacement():
    # gold plus noise e1 (member A) or 1.5 e2 (member B), with gold, e1 and e2 centred, orthogonal and
    # of equal length: a blend's squared noise relative to gold is (a^2 + 2.25 b^2) / (a + b)^2 for
    # weights a, b: A alone 1, A + B 0.8125, 2A + B 0.694, 3A + B 0.703. Greedy picks A, B, A again.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(dim=0))  # orthonormal columns, each centred
    gold, e1, e2 = q.T
    outputs = torch.stack([gold + e1, gold + 1.5 * e2])
    selection = greedy_select("sts", outputs, gold)
    assert selection.counts == (2, 1)
    without = max(task_score("sts", combine("sts", "mean", outputs, torch.tensor(c, dtype=torch.float64)), gold)
                  for c in itertools.product((0, 1), repeat=2) if any(c))  # fmt: skip
    assert selection.score > without
    assert selection.score == pytest.approx((1 + 0.694444) ** -0.5, abs=1e-5)


def test_max_rounds_caps_the_picks():
    g = torch.Generator().manual_seed(1)
    gold = 5 * torch.rand(400, generator=g, dtype=torch.float64)
    outputs = noisy_members("sts", gold, [1.0, 1.1, 1.2, 1.3], g)
    assert sum(greedy_select("sts", outputs, gold).counts) > 2  # uncapped, it goes on
    assert sum(greedy_select("sts", outputs, gold, max_rounds=2).counts) == 2


# ---- prediction files ----------------------------------------------------------------------------


def data_ids(data_dir: Path, task: str, split: str) -> list[str]:
    from mtbert.data.course import read_task
    from mtbert.tasks import DATA_TASK

    return [ex.id for ex in read_task(data_dir, DATA_TASK[task], split).examples]


def check_files(out: Path, data_dir: Path, splits: dict[str, tuple[str, ...]]) -> None:
    """Every file has the course's header and each id of its data file exactly once."""
    from mtbert.evaluate import PREDICTION_FORMATS, prediction_filename, read_predictions

    for split, tasks in splits.items():
        for task in tasks:
            path = out / prediction_filename(task, split)
            header = path.read_text().split("\n", 1)[0]
            assert [c.strip() for c in header.split("\t")] == ["id", PREDICTION_FORMATS[task][0]], header
            written = read_predictions(path, task)  # refuses a repeated id or a value outside the labels
            expected = data_ids(data_dir, task, split)
            assert len(written.ids) == len(expected) and set(written.ids) == set(expected), path


def test_prediction_files_have_the_course_columns_and_every_id_once(data_dir, tmp_path):
    from search.ensemble import Member, Outputs, Plan, combine_members

    g = torch.Generator().manual_seed(0)
    members, outputs = [], []
    for k in range(3):
        o = Outputs({}, {}, {}, {"para.test": "no para test predictions"}, "tiny")
        for task, split in itertools.product(("sst", "para", "sts"), ("dev", "test")):
            if (task, split) == ("para", "test") and not (data_dir / "quora-test-student.csv").exists():
                continue
            ids = data_ids(data_dir, task, split)
            o.ids[f"{task}.{split}"] = ids
            o.values[f"{task}.{split}"] = random_outputs(task, 1, len(ids), g)[0]
            if split == "dev":
                o.gold[task] = random_gold(task, len(ids), g)
        members.append(Member(f"m{k}", f"m{k}", k + 1, 0.5))
        outputs.append(o)
    plan = Plan(tmp_path, tmp_path / "out", [], 0, {"sst": "round_mean", "para": "vote", "sts": "mean"}, 5,
                "overall")  # fmt: skip
    report = combine_members(plan, members, outputs)
    check_files(plan.out, data_dir, {"dev": ("sst", "para", "sts"), "test": tuple(t for t in report["files"]["test"])})
    assert set(report["files"]["test"]) >= {"sst", "sts"}
    assert report["ensemble"]["dev"]["overall"] >= max(m["dev"]["overall"] for m in report["members"])


# ---- the command: bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--top-k", "0"], "--top-k is 0, but must be >= 1"),
    (["--retrain-seeds", "-1"], "--retrain-seeds is -1, but must be >= 0"),
    (["--max-rounds", "0"], "--max-rounds is 0, but must be >= 1"),
    ([], "holds no mtbert search"),
])  # fmt: skip
def test_bad_input_exits_2_before_any_work(tmp_path, capsys, args, message):
    from search.cli import main

    assert main(["ensemble", str(tmp_path), "--out", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_out_folder_holding_an_ensemble_is_refused(tmp_path, capsys):
    from search.cli import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.json").write_text("{}")
    assert main(["ensemble", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "already holds an ensemble" in err and "--out" in err
    assert (tmp_path / "out" / "report.json").read_text() == "{}"


# ---- the command on a real search ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_search(data_dir, token_cache, tmp_path_factory):
    from helpers import cli, write_space

    tmp = tmp_path_factory.mktemp("ensemble")
    space = write_space(tmp, data_dir, token_cache, name="ens", num_samples=3)
    text = space.read_text().replace("max_steps: 16, eval_every: 4", "max_steps: 8, eval_every: 4")
    space.write_text(text.replace("final_eval: best", "final_eval: none"))
    out = cli(str(space), "--json")
    assert out.returncode == 0, out.stderr[-4000:]
    return {"experiment": tmp / "results" / "ens", "tmp": tmp, "cli": cli}


def check_report(report: dict, out: Path, data_dir: Path) -> None:
    members = report["members"]
    best = max(m["dev"]["overall"] for m in members)
    assert report["ensemble"]["dev"]["overall"] >= best
    assert report["best_member"]["dev"]["overall"] == best
    for key in ("sst_acc", "para_acc"):  # selected per task: never below the best member on that task
        assert report["ensemble"]["dev"][key] >= max(m["dev"][key] for m in members)
    assert json.loads((out / "report.json").read_text()) == report
    assert any("never below its best member's" in n and "optimistic" in n for n in report["notes"])
    names = {m["name"] for m in members}
    for task, weights in report["ensemble"]["weights"].items():
        assert set(weights) <= names and sum(weights.values()) == pytest.approx(1.0), task
    check_files(out, data_dir, {split: tuple(files) for split, files in report["files"].items()})
    assert set(report["files"]["dev"]) == {"sst", "para", "sts"} and {"sst", "sts"} <= set(report["files"]["test"])


@pytest.mark.slow
def test_ensemble_of_a_search(small_search, data_dir):
    out = small_search["tmp"] / "plain"
    result = small_search["cli"]("ensemble", str(small_search["experiment"]), "--top-k", "5", "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "--top-k is 5, but" in result.stdout and "using those 3" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert len(report["members"]) == 3 and report["top_k"] == 3
    assert [m["rank"] for m in report["members"]] == [1, 2, 3]
    check_report(report, out, data_dir)
    assert "ensemble " in result.stdout and "sst (mean_probs):" in result.stdout
    # a second run into the same folder is refused; with the report gone it reuses the members' outputs
    again = small_search["cli"]("ensemble", str(small_search["experiment"]), "--out", str(out))
    assert again.returncode == 2 and "already holds an ensemble" in again.stderr
    (out / "report.json").unlink()
    again = small_search["cli"]("ensemble", str(small_search["experiment"]), "--top-k", "5", "--out", str(out),
                                "--sst", "round_mean", "--para", "vote", "--json")  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("outputs read from") == 3 and "predicted" not in again.stderr
    rerun = json.loads(again.stdout)
    assert rerun["combiners"] == {"sst": "round_mean", "para": "vote", "sts": "mean"}
    assert [m["dev"] for m in rerun["members"]] == [m["dev"] for m in report["members"]]
    check_report(rerun, out, data_dir)


@pytest.mark.slow
@pytest.mark.extended
def test_ensemble_with_retrained_seeds(small_search, data_dir):
    from helpers import trial_rows

    from mtbert.validation import load_config

    out = small_search["tmp"] / "retrained"
    experiment = str(small_search["experiment"])
    result = small_search["cli"]("ensemble", experiment, "--top-k", "2", "--retrain-seeds", "1", "--out", str(out),
                                 "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)  # stdout holds the JSON object alone
    names = [m["name"] for m in report["members"]]
    assert len(names) == 4 and sum(n.endswith("-seed1") for n in names) == 2, names
    assert report["failed"] == {}
    for m in report["members"]:
        if m["seed"] is not None:  # the trial's own seed (0) plus 1
            assert Path(m["checkpoint"]).is_relative_to(out / "retrain")
            assert load_config(Path(m["checkpoint"]) / "config.yaml").train.seed == m["seed"] == 1
    trials = [p for p in (out / "retrain").iterdir() if p.name.startswith("trial_")]
    assert len(trials) == 2
    for trial in trials:  # each trained to its full budget, though ASHA may have stopped the original
        assert trial_rows(trial)[-1]["step"] == 8
    check_report(report, out, data_dir)
