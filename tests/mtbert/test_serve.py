"""``mtbert-train predict``: a checkpoint and an ensemble folder on new input reproduce, row for row,
the prediction files the final evaluation and ``mtbert-search ensemble`` wrote; every input format;
bad input and bad model folders exit 2 with one line naming the file and what is expected.

Everything runs on random tiny-encoder checkpoints and the fixture course files (with their
malformed rows), in seconds."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
import torch
from helpers import fixture_data, tiny_checkpoint, tiny_ensemble

from mtbert.cli import main
from mtbert.evaluate import prediction_filename, read_predictions

DEV = {"sst": "ids-sst-dev.csv", "para": "quora-dev.csv", "sts": "sts-dev.csv"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fixture_data(tmp_path_factory.mktemp("serve") / "data")


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "best", data, seed=3)


def predict(capsys, *args: str) -> list[dict]:
    assert main(["predict", *map(str, args), "--no-progress"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    if "--format" in args and "jsonl" in args:
        return [json.loads(line) for line in out.splitlines()]
    return list(csv.DictReader(io.StringIO(out)))


def value(task: str, row: dict) -> float:
    return float(row["score"]) if task == "sts" else int(row["label"])


@pytest.mark.parametrize("task, split", [("sst", "dev"), ("para", "dev"), ("sts", "dev"), ("sst", "test"),
                                         ("sts", "test")])  # fmt: skip
def test_predict_reproduces_the_final_evaluation_files(checkpoint, data, capsys, task, split):
    from mtbert.data.course import TASK_FILES
    from mtbert.tasks import DATA_TASK

    written = read_predictions(checkpoint / "predictions" / prediction_filename(task, split), task)
    rows = predict(capsys, checkpoint, "--task", task, "--input", data / TASK_FILES[DATA_TASK[task]][split])
    assert [r["id"] for r in rows] == written.ids  # the same rows (malformed ones left out alike), in file order
    assert [value(task, r) for r in rows] == list(written.values)  # exactly: the same batches, the same kernels
    if task != "sts":
        probs = [[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows]
        assert all(len(p) == (5 if task == "sst" else 1) and all(0 <= x <= 1 for x in p) for p in probs)
    if task == "sst":  # the label is the most probable class (probabilities are written to 6 decimals)
        assert all(int(r["label"]) == max(range(5), key=lambda k: float(r[f"prob_{k}"])) for r in rows)


def test_every_input_format_gives_the_same_predictions(checkpoint, data, tmp_path, capsys, monkeypatch):
    from mtbert.data.course import read_task

    examples = read_task(data, "sts", "dev").examples
    expected = predict(capsys, checkpoint, "--task", "sts", "--input", data / DEV["sts"])
    plain = tmp_path / "pairs.csv"  # comma-separated, sentences holding commas and quotes, no ids
    with plain.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "note"])
        writer.writerows([*ex.sentences, "x, y"] for ex in examples)
    lines = tmp_path / "pairs.jsonl"
    lines.write_text("".join(json.dumps({"id": ex.id, "sentence1": ex.sentences[0], "sentence2": ex.sentences[1]})
                             + "\n\n" for ex in examples))  # fmt: skip
    rows = predict(capsys, checkpoint, "--task", "sts", "--input", plain)
    assert [r["score"] for r in rows] == [r["score"] for r in expected] and "id" not in rows[0]
    rows = predict(capsys, checkpoint, "--task", "sts", "--input", lines, "--format", "jsonl")
    assert [(r["id"], repr(r["score"])) for r in rows] == [(r["id"], r["score"]) for r in expected]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(lines.read_bytes())))
    rows = predict(capsys, checkpoint, "--task", "sts", "--input", "-", "--format", "jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    first = examples[0].sentences
    rows = predict(capsys, checkpoint, "--task", "sts", "--text", first[0], "--text2", first[1])
    assert rows == [{"score": expected[0]["score"]}]
    out = tmp_path / "out.jsonl"  # --out: the format follows the suffix; the rows are the same
    assert main(["predict", str(checkpoint), "--task", "sts", "--input", str(plain), "--out", str(out)]) == 0
    assert [repr(json.loads(line)["score"]) for line in out.read_text().splitlines()] == [r["score"] for r in expected]


def test_an_export_rank_predicts_like_its_checkpoint(checkpoint, data, tmp_path, capsys):
    rank = tmp_path / "rank-1"
    shutil.copytree(checkpoint, rank, ignore=shutil.ignore_patterns("predictions"))
    (rank / "trial.json").write_text(json.dumps({"rank": 1, "trial_id": "t0"}))
    (rank / "README.md").write_text("---\ntags: [mtbert-search]\n---\n")
    args = ("--task", "para", "--input", data / DEV["para"])
    assert predict(capsys, rank, *args) == predict(capsys, checkpoint, *args)


# ---- an ensemble folder ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ensemble(data, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return tiny_ensemble(tmp_path_factory.mktemp("serve-ens"), data, monkeypatch)


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_predict_on_an_ensemble_reproduces_its_prediction_files(ensemble, data, capsys, task):
    counts = json.loads((ensemble / "report.json").read_text())["ensemble"]["counts"]
    assert list(counts["sts"].values()) == [2, 1]  # a real combination, not one member alone
    written = read_predictions(ensemble / prediction_filename(task, "dev"), task)
    rows = predict(capsys, ensemble, "--task", task, "--input", data / DEV[task])
    assert [r["id"] for r in rows] == written.ids
    assert [value(task, r) for r in rows] == list(written.values)


def test_an_ensemble_applies_its_weights(ensemble, data, tmp_path, capsys):
    """Both members at weight 1/2: sts scores are the mean of the members' own; sst labels the
    argmax of their mean probabilities."""
    report = json.loads((ensemble / "report.json").read_text())
    members = [m["checkpoint"] for m in report["members"]]
    assert len(members) == 2
    folder = tmp_path / "even"
    folder.mkdir()
    report["ensemble"]["counts"] = {t: {m["name"]: 1 for m in report["members"]} for t in ("sst", "para", "sts")}
    (folder / "report.json").write_text(json.dumps(report))
    own = [predict(capsys, m, "--task", "sts", "--input", data / DEV["sts"]) for m in members]
    even = predict(capsys, folder, "--task", "sts", "--input", data / DEV["sts"])
    assert [float(r["score"]) for r in even] == [(float(a["score"]) + float(b["score"])) / 2 for a, b in zip(*own)]
    own = [predict(capsys, m, "--task", "sst", "--input", data / DEV["sst"], "--format", "jsonl") for m in members]
    even = predict(capsys, folder, "--task", "sst", "--input", data / DEV["sst"], "--format", "jsonl")
    for row, a, b in zip(even, *own):
        mean = (torch.tensor(a["probs"]) + torch.tensor(b["probs"])) / 2
        # probabilities are written to 6 decimals: within rounding of the exact mean
        assert torch.allclose(torch.tensor(row["probs"]), mean, atol=2e-6)
        assert row["label"] == int(torch.tensor(row["probs"]).argmax())


# ---- bad input: exit 2, one line naming the file and what is expected ----------------------------


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


CASES = {
    "missing column": ("sst", "a.csv", "text,id\nhello,1\n", ["a.csv", "lacks sentence", "expected for --task sst"]),
    "empty file": ("sst", "empty.csv", "", ["empty.csv is empty", "expected"]),
    "header only": ("sst", "head.csv", "sentence\n", ["head.csv has a header but no rows"]),
    "single sentences for a pair task": ("sts", "one.tsv", "id\tsentence\n1\thi\n",
                                         ["one.tsv", "holds single sentences", "reads sentence pairs"]),
    "pairs for sst": ("sst", "two.csv", "sentence1,sentence2\na,b\n", ["two.csv", "holds sentence pairs"]),
    "json lines without the pair": ("para", "x.jsonl", '{"sentence1": "a"}\n', ["x.jsonl: line 1", "sentence2"]),
    "json line not an object": ("sst", "y.jsonl", '{"sentence": "a"}\n[1]\n', ["y.jsonl:2", "must be an object"]),
    "a row with too many fields": ("sst", "z.csv", "sentence\nok\na,b\n", ["z.csv:3", "2 fields", "quoted"]),
    "an empty sentence": ("para", "e.csv", "sentence1,sentence2\na,\n", ["e.csv:2", "empty sentence2"]),
    "not UTF-8": ("sst", "latin.csv", b"sentence\ncaf\xe9\n", ["latin.csv:2", "not UTF-8"]),
    "repeated ids": ("sst", "ids.csv", "id,sentence\n1,a\n1,b\n", ["ids.csv", "id '1'", "rows 1 and 2"]),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_naming_the_file(checkpoint, tmp_path, capsys, case):
    task, name, text, words = CASES[case]
    path = write(tmp_path, name, text)
    assert main(["predict", str(checkpoint), "--task", task, "--input", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and captured.out == "", err
    assert err.startswith("mtbert-train predict: error: ") and all(w in err for w in words), err


@pytest.mark.parametrize("args, words", [
    (["--task", "para", "--text", "one sentence"], ["reads sentence pairs", "--text2"]),
    (["--task", "sst", "--text", "a", "--text2", "b"], ["single sentences", "drop --text2"]),
    (["--task", "sst"], ["give --input FILE", "or --text"]),
    (["--task", "sst", "--text", "a", "--input", "x.csv"], ["one of the two"]),
    (["--task", "sst", "--input", "NOWHERE/x.csv"], ["NOWHERE/x.csv does not exist", "expected for --task sst"]),
    (["--task", "sst", "--input", "."], ["is a folder"]),
])  # fmt: skip
def test_bad_arguments_exit_2(checkpoint, capsys, args, words):
    assert main(["predict", str(checkpoint), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(w in err for w in words), err


def test_a_folder_that_is_no_model_exits_2(checkpoint, ensemble, tmp_path, capsys):
    def refused(folder, *words):
        assert main(["predict", str(folder), "--task", "sst", "--text", "fine"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(folder) in err and all(w in err for w in words), err

    refused(tmp_path / "missing", "does not exist", "an export rank", "an ensemble folder")
    refused(tmp_path, "is none of the model folders", "a checkpoint (config.yaml")
    (tmp_path / "search.json").write_text("{}")
    refused(tmp_path, "it is a search folder", "mtbert-search export")
    runs = tmp_path / "runs"
    shutil.copytree(checkpoint, runs / "best")
    refused(runs, f"did you mean {runs / 'best'}")
    (runs / "best" / "heads.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    refused(runs / "best", "heads.safetensors")
    spoilt = tmp_path / "ens"
    spoilt.mkdir()
    (spoilt / "report.json").write_text('{"members": []')
    refused(spoilt, "report.json does not read")
    report = json.loads((ensemble / "report.json").read_text())
    report["members"][0]["checkpoint"] = str(tmp_path / "gone")
    report["ensemble"]["counts"]["sst"] = {report["members"][0]["name"]: 1}
    (spoilt / "report.json").write_text(json.dumps(report))
    refused(spoilt, f"names member {report['members'][0]['name']}", "gone does not exist")
