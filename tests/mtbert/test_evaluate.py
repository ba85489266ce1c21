import math

import numpy as np
import pytest
import torch

from mtbert.evaluate import (
    Scores,
    accuracy,
    binary_f1,
    confusion_matrix,
    overall_score,
    pearson,
    prediction_filename,
    read_predictions,
    spearman,
    write_predictions,
    write_submission,
)


def test_accuracy_by_hand():
    assert accuracy([0, 1, 2, 3, 4], [0, 1, 2, 4, 3]) == pytest.approx(3 / 5)
    assert accuracy(torch.tensor([1, 0]), np.array([1.0, 0.0])) == 1.0  # paraphrase labels written as floats
    assert accuracy([1, 1, 1, 1], [0, 0, 0, 1]) == 0.25  # CFIMDB-sized binary case


def test_binary_f1_by_hand():
    # TP = 2 (positions 0, 4), FP = 1 (position 1), FN = 1 (position 3): F1 = 2*2 / (2*2 + 1 + 1)
    assert binary_f1([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(2 / 3)
    assert binary_f1([0, 0, 0], [1, 1, 0]) == 0.0  # no true positive
    assert binary_f1([0, 0], [0, 0]) == 0.0  # nothing positive anywhere: documented as 0.0
    assert binary_f1([1, 0], [1, 0]) == 1.0


def test_pearson_by_hand():
    # dx = (-1.5, -.5, .5, 1.5), dy = (-3, -1, 0, 4): Sxy = 11, Sxx = 5, Syy = 26
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130), abs=1e-15)
    assert pearson([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)
    assert pearson(torch.tensor([0.5, 1.5, 2.5], dtype=torch.float32), [0.0, 1.0, 2.0]) == pytest.approx(1.0)


def test_spearman_by_hand_with_ties():
    # ranks of x: (1, 2.5, 2.5, 4); of y: (1, 2, 3, 4) -> Sxy = 4.5, Sxx = 4.5, Syy = 5
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(math.sqrt(0.9), abs=1e-15)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone, not linear
    assert pearson([1, 2, 3, 4], [1, 8, 27, 64]) < 0.99
    assert spearman([3.0, 1.0, 2.0], [0.1, 0.9, 0.5]) == pytest.approx(-1.0)


@pytest.mark.parametrize("metric", [pearson, spearman])
def test_correlation_is_nan_for_constant_or_nan_input(metric):
    assert math.isnan(metric([3.0, 3.0, 3.0], [1.0, 2.0, 4.0]))
    assert math.isnan(metric([1.0, 2.0, 4.0], [2.5, 2.5, 2.5]))
    assert math.isnan(metric([0.1] * 3, [1.0, 2.0, 4.0]))  # float mean of 0.1s is not exactly 0.1
    assert math.isnan(metric([1.0, float("nan"), 4.0], [1.0, 2.0, 4.0]))


def test_confusion_matrix_by_hand():
    m = confusion_matrix(pred=[0, 2, 2, 1, 4, 4], gold=[0, 1, 2, 2, 4, 3])
    expected = torch.zeros(5, 5, dtype=torch.long)
    for gold, pred in [(0, 0), (1, 2), (2, 2), (2, 1), (4, 4), (3, 4)]:
        expected[gold, pred] += 1
    assert torch.equal(m, expected)
    assert m[1, 2] == 1 and m[2, 1] == 1  # rows gold, columns predicted
    assert m.trace() / m.sum() == pytest.approx(accuracy([0, 2, 2, 1, 4, 4], [0, 1, 2, 2, 4, 3]))


def test_overall_by_hand():
    assert overall_score(0.5, 0.8, 0.6) == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert overall_score(0.531, 0.903, 0.886) == pytest.approx(0.792, abs=5e-4)  # a report's test row
    assert overall_score(0.5, 0.8, math.nan) == pytest.approx((0.5 + 0.8 + 0.5) / 3)  # NaN counts as 0


def test_scores_from_predictions():
    s = Scores.compute(
        sst=([0, 1, 2, 3], [0, 1, 2, 4]),
        para=([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]),
        sts=([1, 2, 3, 4], [2, 4, 5, 9]),
    )
    r = 11 / math.sqrt(130)
    assert s.as_dict() == pytest.approx({
        "sst_acc": 0.75, "para_acc": 0.6, "para_f1": 2 / 3, "sts_pearson": r, "sts_spearman": 1.0,
        "overall": (0.75 + 0.6 + (1 + r) / 2) / 3,
    })


@pytest.mark.parametrize("call, message", [
    (lambda: accuracy([1, 2], [1]), r"pred has 2 entries, but gold has 1; they must match"),
    (lambda: pearson([], []), r"pred and gold are empty"),
    (lambda: accuracy([[1, 2]], [[1, 2]]), r"pred has shape \(1, 2\), but must be 1-D"),
    (lambda: binary_f1([0, 2], [0, 1]), r"pred holds 2.0, but labels must be one of: 0, 1"),
    (lambda: confusion_matrix([0, 5], [0, 1]), r"pred holds 5.0, but labels must be one of: 0, 1, 2, 3, 4"),
])
def test_bad_metric_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_prediction_files_have_the_starter_codes_exact_format(tmp_path):
    write_predictions(tmp_path / "sst.csv", "sst", ["a1", "b2"], torch.tensor([3, 0]))
    write_predictions(tmp_path / "para.csv", "para", ["c3", "d4"], np.array([1.0, 0.0], dtype=np.float32))
    write_predictions(tmp_path / "sts.csv", "sts", ["e5", "f6"], torch.tensor([0.25, 4.5], dtype=torch.float64))
    write_predictions(tmp_path / "cfimdb.csv", "cfimdb", ["g7"], [1])
    assert (tmp_path / "sst.csv").read_bytes() == b"id \t Predicted_Sentiment \na1 , 3 \nb2 , 0 \n"
    assert (tmp_path / "para.csv").read_bytes() == b"id \t Predicted_Is_Paraphrase \nc3 , 1.0 \nd4 , 0.0 \n"
    assert (tmp_path / "sts.csv").read_bytes() == b"id \t Predicted_Similiary \ne5 , 0.25 \nf6 , 4.5 \n"
    assert (tmp_path / "cfimdb.csv").read_bytes() == b"id \t Predicted_Sentiment \ng7 , 1 \n"


def test_prediction_file_round_trip(tmp_path):
    ids = ["876d0172eef5db7776e39c5de", "e8336dc096adaf2de4e8e9425", "6b73f3755d3f2a1906e25bcc2"]
    sts = torch.tensor([0.46074217557907104, 4.999, -0.1], dtype=torch.float32)  # a model's float32 output
    back = read_predictions(write_predictions(tmp_path / "sts.csv", "sts", ids, sts), "sts")
    assert back.task == "sts" and back.ids == ids
    assert back.values == sts.double().tolist()  # every float32 value comes back exactly
    sst = read_predictions(write_predictions(tmp_path / "sst.csv", "sst", ids, [4, 2, 0]), "sst")
    assert sst.values == [4, 2, 0] and all(type(v) is int for v in sst.values)
    para = read_predictions(write_predictions(tmp_path / "para.csv", "para", ids, [0.0, 1.0, 1.0]), "para")
    assert para.as_dict() == dict(zip(ids, [0, 1, 1]))


def test_reader_takes_the_comma_without_leading_space(tmp_path):
    # the starter's single-task classifier writes f"{p}, {s} \n"
    (tmp_path / "f.csv").write_text("id \t Predicted_Sentiment \nab, 3 \ncd, 1 \n")
    assert read_predictions(tmp_path / "f.csv", "sst").values == [3, 1]


def test_write_submission_uses_the_starter_code_file_names(tmp_path):
    predictions = {"sst": (["a"], [1]), "para": (["b"], [0]), "sts": (["c"], [2.5])}
    paths = write_submission(tmp_path / "out", "dev", predictions)
    assert {t: p.name for t, p in paths.items()} == {
        "sst": "sst-dev-output.csv", "para": "para-dev-output.csv", "sts": "sts-dev-output.csv"}
    assert prediction_filename("cfimdb", "test") == "cfimdb-test-output.csv"
    assert read_predictions(paths["sts"], "sts").values == [2.5]


@pytest.mark.parametrize("text, task, message", [
    ("id \t Predicted_Sentiment \na , 1 \n", "sts", r"header is 'id \\t Predicted_Sentiment ', but a sts prediction "
                                                    r"file starts with 'id \\t Predicted_Similiary '"),
    ("id \t Predicted_Sentiment \na 1 \n", "sst", r":2: line is 'a 1 ', but must read '<id> , <prediction> '"),
    ("id \t Predicted_Sentiment \na , 7 \n", "sst", r":2: prediction is '7', but must be one of: 0, 1, 2, 3, 4"),
    ("id \t Predicted_Is_Paraphrase \na , 0.5 \n", "para", r":2: prediction is '0.5', but must be one of: 0, 1"),
    ("id \t Predicted_Similiary \na , x \n", "sts", r":2: prediction is 'x', but must be a number"),
    ("id \t Predicted_Similiary \na , 1 \na , 2 \n", "sts", r"ids appear more than once: a"),
])
def test_reader_rejects_malformed_files(tmp_path, text, task, message):
    (tmp_path / "f.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_predictions(tmp_path / "f.csv", task)


@pytest.mark.parametrize("call, message", [
    (lambda p: write_predictions(p, "quora", ["a"], [1]),
     r"task is 'quora', but must be one of: sst, cfimdb, para, sts"),
    (lambda p: write_predictions(p, "sst", ["a", "b"], [1]), r"ids has 2 entries, but predictions has 1"),
    (lambda p: write_predictions(p, "sst", ["a"], [5]),
     r"predictions holds 5.0, but labels must be one of: 0, 1, 2, 3, 4"),
    (lambda p: write_predictions(p, "para", ["a"], [0.7]), r"predictions holds 0.7, but labels must be one of: 0, 1"),
    (lambda p: write_predictions(p, "sts", ["a b"], [1.0]), r"id 'a b' holds a space, tab, comma or newline"),
    (lambda p: prediction_filename("sst", "train"), r"split is 'train', but must be one of: dev, test"),
])
def test_writer_rejects_what_the_format_cannot_hold(tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(tmp_path / "f.csv")
