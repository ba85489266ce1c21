"""mtbert.train.mlm: Devlin et al.'s masking statistics, the tied MLM head against transformers', task
sentences, and further pre-training on real sentences (tiny encoder; all-MiniLM-L6-v2 marked slow)."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch
import transformers
from conftest import TINY

from mtbert.config import MlmConfig
from mtbert.data.course import Example, read_task
from mtbert.data.prepare import TaskData, prepare_data
from mtbert.data.sentences import collate, task_sentences, tokenize
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.pretrained import load_encoder
from mtbert.train.mlm import IGNORE, MlmHead, further_pretrain, mask_tokens

CLS, SEP, MASK, VOCAB = 101, 102, 103, 30522


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _tokenizer():
    return load_encoder("tiny")[1]


def real_sentences(data_dir, n_sst: int, n_sts: int) -> list[str]:
    sst = [s for ex in read_task(data_dir, "sst", "train").examples[:n_sst] for s in ex.sentences]
    return sst + [s for ex in read_task(data_dir, "sts", "train").examples[:n_sts] for s in ex.sentences]


def random_batch(rows: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] words [SEP] then padding, lengths 20..width; returns (ids, never-mask)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, VOCAB, (rows, width), generator=g)
    lengths = torch.randint(20, width + 1, (rows,), generator=g)
    pos = torch.arange(width)
    ids[:, 0] = CLS
    ids[torch.arange(rows), lengths - 1] = SEP
    ids[pos >= lengths[:, None]] = 0
    never = (pos == 0) | (pos >= lengths[:, None] - 1)  # [CLS], [SEP] and padding
    return ids, never


def masked(ids, never, seed, mask_prob=0.15):
    g = torch.Generator().manual_seed(seed)
    return mask_tokens(ids, never, mask_prob=mask_prob, mask_token_id=MASK, vocab_size=VOCAB, generator=g)


def test_masking_statistics():
    ids, never = random_batch(1024, 128)
    out = masked(ids, never, seed=0)
    chosen = out.labels != IGNORE
    assert not (chosen & never).any()  # specials and padding are never chosen
    assert torch.equal(out.labels[chosen], ids[chosen])
    assert torch.equal(out.inputs[~chosen], ids[~chosen])
    n = int(chosen.sum())
    assert n / int((~never).sum()) == pytest.approx(0.15, abs=0.006)  # ~100k maskable: 5 sigma
    to_mask = out.inputs[chosen] == MASK
    kept = out.inputs[chosen] == ids[chosen]
    replaced = ~to_mask & ~kept
    assert to_mask.sum() / n == pytest.approx(0.8, abs=0.015)
    assert replaced.sum() / n == pytest.approx(0.1, abs=0.015)
    assert kept.sum() / n == pytest.approx(0.1, abs=0.015)
    assert out.inputs[chosen][replaced].unique().numel() > 0.9 * int(replaced.sum())  # spread over the vocabulary


def test_masking_is_seeded_by_its_generator_only():
    ids, never = random_batch(64, 48)
    torch.manual_seed(1)
    a = masked(ids, never, seed=7)
    torch.manual_seed(2)  # the global generator must not matter
    b = masked(ids, never, seed=7)
    c = masked(ids, never, seed=8)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)


@pytest.mark.parametrize("mask_prob", [0.0, 0.15])
def test_every_row_with_a_maskable_token_gets_one(mask_prob):
    ids = torch.tensor([[CLS, 2000, SEP, 0]] * 200 + [[CLS, SEP, 0, 0]] * 5)
    never = torch.tensor([[True, False, True, True]] * 200 + [[True] * 4] * 5)
    out = masked(ids, never, seed=0, mask_prob=mask_prob)
    chosen = out.labels != IGNORE
    assert chosen[:200, 1].all() and chosen.sum() == 200  # the one word; nothing in all-special rows


@pytest.mark.parametrize(("kwargs", "message"), [({"mask_prob": 1.0}, "mask_prob is 1.0, but must be in"),
                                                 ({"special": torch.zeros(2, 3)}, "special_tokens_mask has shape")])  # fmt: skip
def test_mask_tokens_errors(kwargs, message):
    ids = torch.full((2, 4), 2000)
    special = kwargs.get("special", torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=message):
        mask_tokens(ids, special, mask_prob=kwargs.get("mask_prob", 0.15), mask_token_id=MASK, vocab_size=VOCAB,
                    generator=torch.Generator())  # fmt: skip


def test_collate_never_masks_specials_or_padding():
    ids, special = tokenize(_tokenizer(), ["a film", "a much longer film"], max_length=16)
    input_ids, never, attention = collate(ids, special, pad_id=0)
    assert input_ids.tolist()[0][:4] == [CLS, ids[0][1], ids[0][2], SEP] and input_ids[0, 4:].eq(0).all()
    assert never.tolist() == [[True, False, False, True, True, True], [True, False, False, False, False, True]]
    assert attention.tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]


def test_head_is_tied_and_matches_transformers():
    config = BertConfig(**TINY)
    encoder = BertModel(config, torch.Generator().manual_seed(0))
    rng = torch.get_rng_state()
    head = MlmHead(encoder, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), rng)  # built from its own generator only
    embedding = encoder.embeddings.word_embeddings.weight
    assert head.predictions.decoder.weight is embedding
    assert set(head.state_dict()) == {
        "predictions.transform.dense.weight", "predictions.transform.dense.bias",
        "predictions.transform.LayerNorm.weight", "predictions.transform.LayerNorm.bias",
        "predictions.decoder.weight", "predictions.bias",
    }  # fmt: skip
    with torch.no_grad():
        head.predictions.bias.normal_(generator=torch.Generator().manual_seed(1))
    hf_config = transformers.BertConfig(**config.to_hf())
    hf = transformers.models.bert.modeling_bert.BertOnlyMLMHead(hf_config)
    state = head.state_dict()
    hf.load_state_dict({**state, "predictions.decoder.bias": state["predictions.bias"]})
    hidden = torch.randn(5, 7, config.hidden_size, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(head(hidden), hf(hidden))

    # A step through the decoder alone moves the encoder's input embeddings.
    before = embedding.detach().clone()
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    torch.nn.functional.cross_entropy(head(hidden[0]), torch.arange(7)).backward()
    optimizer.step()
    assert not torch.equal(embedding, before)
    assert head.predictions.decoder.weight.data_ptr() == encoder.embeddings.word_embeddings.weight.data_ptr()


def test_further_pretrain_lowers_the_loss_of_the_tiny_encoder(data_dir):
    sentences = real_sentences(data_dir, 100, 50)  # 200 sentences
    encoder, tokenizer = load_encoder("tiny")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    calls = []
    config = MlmConfig(lr=3e-3, batch_size=16, warmup=0.1)
    result = further_pretrain(encoder, tokenizer, sentences, config, steps=40, max_length=64,
                              on_step=lambda step, loss: calls.append((step, loss)))  # fmt: skip
    assert [s for s, _ in calls] == list(range(1, 41)) and result.steps == 40
    assert result.last_loss < result.first_loss - 1.0, result
    assert result.eval_loss_after < result.eval_loss_before - 0.5, result
    assert (result.sentences, result.held_out) == (180, 20)
    assert result.accuracy_after > result.accuracy_before
    after = encoder.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    # everything but the pooler, which the MLM loss never reaches
    assert sorted(changed) == sorted(k for k in before if not k.startswith("pooler."))


def count_steps(monkeypatch) -> list[int]:
    steps = []
    step = torch.optim.AdamW.step

    def counting(self, *args, **kwargs):
        steps.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting)
    return steps


HAND_WRITTEN = [f"sentence number {i} says the film was {w}" for i in range(100) for w in ("good", "dull")]


@pytest.mark.parametrize(
    ("settings", "steps", "expected"),
    [
        ({"epochs": 0.5, "batch_size": 16}, None, math.ceil(0.5 * 180 / 16)),  # 20 of 200 held out
        ({"epochs": 2.0, "batch_size": 32}, None, math.ceil(2.0 * 180 / 32)),  # more than a pass
        ({"epochs": 1.0, "batch_size": 8, "max_sentences": 50}, None, math.ceil(45 / 8)),  # 5 of 50 held out
        ({"epochs": 3.0, "batch_size": 16}, 7, 7),  # steps overrides epochs
    ],
)
def test_steps_and_epochs(monkeypatch, settings, steps, expected):
    optimizer_steps = count_steps(monkeypatch)
    encoder, tokenizer = load_encoder("tiny")
    result = further_pretrain(encoder, tokenizer, HAND_WRITTEN, MlmConfig(**settings), steps=steps, max_length=16)
    assert len(optimizer_steps) == result.steps == expected


def test_same_seed_same_weights_and_frozen_flags_restored():
    runs = []
    for seed in (0, 0, 1):
        encoder, tokenizer = load_encoder("tiny")
        encoder.freeze(1)
        encoder.eval()
        flags = [p.requires_grad for p in encoder.parameters()]
        first_layer = encoder.encoder.layer[0].output.dense.weight.clone()
        further_pretrain(encoder, tokenizer, HAND_WRITTEN, MlmConfig(lr=1e-3), steps=3, max_length=16, seed=seed)
        assert not torch.equal(encoder.encoder.layer[0].output.dense.weight, first_layer)  # MLM trains frozen layers
        assert [p.requires_grad for p in encoder.parameters()] == flags and encoder.frozen_depth == 1
        assert not encoder.training
        runs.append(encoder.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])  # dropout seeded from seed
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.parametrize(
    ("sentences", "kwargs", "message"),
    [
        ([], {}, "sentences is empty"),
        (["   "], {}, "sentences hold no token to mask"),
        (["a film"], {"steps": 0}, "steps is 0, but must be a positive integer"),
        (["a film"], {"max_length": 2}, "max_length is 2, but must be >= 3"),
        (["a film"], {"held_out": -1}, "held_out is -1, but must be an integer >= 0"),
    ],
)
def test_further_pretrain_errors(sentences, kwargs, message):
    encoder, tokenizer = load_encoder("tiny")
    with pytest.raises(ValueError, match=message):
        further_pretrain(encoder, tokenizer, sentences, MlmConfig(), **kwargs)


def test_task_sentences_by_hand():
    def ds(rows, indices):
        return SimpleNamespace(examples=[Example(str(i), s, 0, i) for i, s in enumerate(rows)], indices=indices)

    sst = ds([("a dull film",), ("left out",), ("a fine film",)], [0, 2])
    para = ds([("how old?", "a fine film"), ("why?", "how old?")], [1, 0])
    data = TaskData(train={"sst": sst, "para": para}, dev={"sst": ds([("dev only",)], [0])})
    assert task_sentences(data) == ["a dull film", "a fine film", "why?", "how old?"]


def test_task_sentences_of_prepared_data(small_run, data_dir):
    config = small_run()
    data = prepare_data(config, _tokenizer())
    sentences = task_sentences(data)
    assert len(sentences) == len(set(sentences))
    # the same sentences, found again by id in the raw files
    files = {"sst": "sst", "para": "quora", "sts": "sts"}
    expected = set()
    for task, dataset in data.train.items():
        by_id = {ex.id: ex.sentences for ex in read_task(data_dir, files[task], "train").examples}
        expected |= {s for i in range(len(dataset)) for s in by_id[dataset[i].id]}
        assert len(by_id[dataset[0].id]) == (1 if task == "sst" else 2)
    assert set(sentences) == expected


@pytest.mark.slow
def test_further_pretrain_minilm(minilm_dir, data_dir):
    encoder, tokenizer = load_encoder("all-MiniLM-L6-v2")
    sentences = real_sentences(data_dir, 300, 100)  # 500 sentences
    config = MlmConfig(lr=1e-4, batch_size=8, warmup=0.1)
    result = further_pretrain(encoder, tokenizer, sentences, config, steps=30, max_length=64, held_out=48)
    # The checkpoint has no MLM head: a fresh transform starts near chance and learns fast.
    assert result.last_loss < result.first_loss - 1.0, result
    assert result.eval_loss_after < result.eval_loss_before - 1.0, result
    assert result.accuracy_after > result.accuracy_before
