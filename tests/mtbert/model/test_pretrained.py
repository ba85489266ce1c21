"""load_encoder: the packaged MiniLM, local HF directories, hub names, tiny, and load errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import TINY, other_kernels_env
from safetensors.torch import load_file, save_file

from mtbert import BertModel, EncoderLoadError, load_encoder
from mtbert.model.bert import BertConfig

SENTENCES = [
    "The movie was surprisingly good.",
    "A gripping, funny and at times heartbreaking story about two brothers who never learned to talk.",
    "How do I learn Python?",
    "What is the best way to learn Python quickly?",
    "Ok.",
]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    encoder, tokenizer = load_encoder("all-MiniLM-L6-v2")
    hf = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="sdpa")
    return encoder.eval(), tokenizer, hf.eval()


# Our encoder against transformers.BertModel (SDPA) on MiniLM. The two run the same maths with
# other kernels and summation orders, so they agree to rounding, not to the bit. Hidden states reach
# |6| (an fp32 ulp of 4.8e-7 there); measured gaps are under 3e-6 (AVX2 and the default kernels)
# and stayed under 1e-5 on AVX-512. ATOL = 1e-5 is about 20 ulps at the largest value, while a
# perturbation of 1e-4 in one bias moves the outputs far past it (checked below, so the tolerance
# stays able to fail). Padded positions are not compared: they carry no meaning, no head reads them,
# and there the two implementations differ by up to 7e-5 on some processors.
ATOL = 1e-5


def assert_parity(got, want, mask: torch.Tensor) -> None:
    keep = mask.bool()
    torch.testing.assert_close(got.last_hidden_state[keep], want.last_hidden_state[keep], rtol=0, atol=ATOL)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=0, atol=ATOL)


def batches(tokenizer) -> list[dict]:
    singles = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    pairs = tokenizer(SENTENCES[:-1], SENTENCES[1:], padding=True, return_tensors="pt")
    assert singles["attention_mask"].min() == 0 and pairs["token_type_ids"].max() == 1  # padding, segments
    return [singles, pairs]


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_minilm_matches_transformers_on_real_sentences(minilm, grad):
    encoder, tokenizer, hf = minilm
    for batch in batches(tokenizer):
        with torch.set_grad_enabled(grad):
            want = hf(**batch)
            got = encoder(**batch)
        assert_parity(got, want, batch["attention_mask"])


def test_padding_leaves_each_sentence_unchanged(minilm):
    """What padding must not do: change a sentence's real tokens (a mask applied wrongly would)."""
    encoder, tokenizer, _ = minilm
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        padded = encoder(**batch)
        for i, sentence in enumerate(SENTENCES):
            alone = encoder(**tokenizer([sentence], return_tensors="pt"))
            n = alone.last_hidden_state.shape[1]
            assert n < batch["input_ids"].shape[1] or i == 1  # all but the longest were padded
            torch.testing.assert_close(padded.last_hidden_state[i, :n], alone.last_hidden_state[0], rtol=0, atol=ATOL)
            torch.testing.assert_close(padded.pooler_output[i], alone.pooler_output[0], rtol=0, atol=ATOL)


def test_parity_tolerance_catches_a_small_weight_error(minilm_dir):
    encoder, tokenizer = load_encoder("all-MiniLM-L6-v2")
    hf = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="sdpa").eval()
    batch = batches(tokenizer)[0]
    with torch.no_grad():
        encoder.eval().encoder.layer[3].output.dense.bias[7] += 1e-4
        got, want = encoder(**batch), hf(**batch)
    with pytest.raises(AssertionError):
        assert_parity(got, want, batch["attention_mask"])


# The reference computed in a child process whose PyTorch is forced onto another CPU kernel set
# (ATEN_CPU_CAPABILITY), so every run checks the tolerance across kernel sets, not only across the
# two implementations on this processor's own kernels.
REFERENCE = """
import sys, torch, transformers
from safetensors.torch import load_file, save_file
model = transformers.BertModel.from_pretrained(sys.argv[1], attn_implementation="sdpa").eval()
inputs = load_file(sys.argv[2])
out = {"capability": torch.tensor([ord(c) for c in torch.backends.cpu.get_cpu_capability()])}
with torch.no_grad():
    for name in ("singles", "pairs"):
        batch = {k.split("/")[1]: v for k, v in inputs.items() if k.startswith(name + "/")}
        result = model(**batch)
        out[name + "/hidden"], out[name + "/pooler"] = result.last_hidden_state, result.pooler_output
save_file(out, sys.argv[3])
"""


def test_minilm_matches_transformers_on_another_kernel_set(minilm, minilm_dir, tmp_path):
    encoder, tokenizer, _ = minilm
    inputs = {f"{name}/{k}": v.contiguous() for name, batch in zip(("singles", "pairs"), batches(tokenizer))
              for k, v in batch.items()}
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    own = torch.backends.cpu.get_cpu_capability()
    subprocess.run([sys.executable, "-c", REFERENCE, str(minilm_dir), str(tmp_path / "inputs.safetensors"),
                    str(tmp_path / "out.safetensors")], env=other_kernels_env(), check=True, timeout=300)
    reference = load_file(str(tmp_path / "out.safetensors"))
    other = "".join(map(chr, reference["capability"].tolist()))
    assert other != own or own == "DEFAULT"  # the same set only on a processor with no vector set
    for name, batch in zip(("singles", "pairs"), batches(tokenizer)):
        with torch.no_grad():
            got = encoder(**batch)
        want = transformers.modeling_outputs.BaseModelOutputWithPooling(
            last_hidden_state=reference[name + "/hidden"], pooler_output=reference[name + "/pooler"])
        assert_parity(got, want, batch["attention_mask"])


def test_minilm_shape_and_tokenizer(minilm, minilm_dir):
    encoder, tokenizer, _ = minilm
    assert (encoder.num_layers, encoder.config.hidden_size, encoder.config.num_attention_heads) == (6, 384, 12)
    assert isinstance(tokenizer, transformers.BertTokenizerFast)
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    text = " -LRB- It 's a `` masterpiece '' -RRB- \\/ 10"
    assert tokenizer(text, "second one")["input_ids"] == reference(text, "second one")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("Hello world")["input_ids"]) == ["[CLS]", "hello", "world", "[SEP]"]


def write_checkpoint(directory: Path, model: BertModel, minilm_dir: Path, state: dict | None = None) -> Path:
    """A local HF-format directory: config.json, model.safetensors and the vocabulary."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config.to_hf()))
    save_file(state if state is not None else model.state_dict(), str(directory / "model.safetensors"))
    shutil.copy(minilm_dir / "vocab.txt", directory / "vocab.txt")
    return directory


@pytest.fixture
def tiny_model() -> BertModel:
    return BertModel(BertConfig(**{**TINY, "vocab_size": 30522}), generator=torch.Generator().manual_seed(3))


def same_weights(a: BertModel, b: BertModel) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_local_directory_round_trip(tmp_path, tiny_model, minilm_dir):
    loaded, tokenizer = load_encoder(str(write_checkpoint(tmp_path / "ckpt", tiny_model, minilm_dir)))
    assert same_weights(loaded, tiny_model)
    assert tokenizer("hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_directory_saved_by_transformers_loads(tmp_path, minilm_dir):
    hf_config = transformers.BertConfig(**{**TINY, "vocab_size": 30522})
    torch.manual_seed(0)
    hf = transformers.BertModel(hf_config).eval()
    hf.save_pretrained(tmp_path / "hf")
    transformers.AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(tmp_path / "hf")
    encoder, tokenizer = load_encoder(str(tmp_path / "hf"))
    batch = tokenizer(SENTENCES[:3], padding=True, return_tensors="pt")
    torch.testing.assert_close(encoder.eval()(**batch).pooler_output, hf(**batch).pooler_output, rtol=0, atol=1e-5)


def test_bert_prefix_and_ignored_keys(tmp_path, tiny_model, minilm_dir):
    state = {f"bert.{k}": v for k, v in tiny_model.state_dict().items()}
    state["bert.embeddings.position_ids"] = torch.arange(512)[None]
    state["cls.predictions.bias"] = torch.zeros(30522)
    state["cls.predictions.transform.dense.weight"] = torch.zeros(32, 32)
    loaded, _ = load_encoder(str(write_checkpoint(tmp_path / "c", tiny_model, minilm_dir, state)))
    assert same_weights(loaded, tiny_model)


def test_pytorch_bin_is_read_weights_only(tmp_path, tiny_model, minilm_dir):
    directory = write_checkpoint(tmp_path / "bin", tiny_model, minilm_dir)
    (directory / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), directory / "pytorch_model.bin")
    loaded, _ = load_encoder(str(directory))
    assert same_weights(loaded, tiny_model)


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Exploit.marker}",))


def test_pickle_with_code_is_refused(tmp_path, tiny_model, minilm_dir):
    directory = write_checkpoint(tmp_path / "evil", tiny_model, minilm_dir)
    (directory / "model.safetensors").unlink()
    Exploit.marker = tmp_path / "pwned"
    torch.save({"embeddings.word_embeddings.weight": Exploit()}, directory / "pytorch_model.bin")
    with pytest.raises(EncoderLoadError, match=r"pytorch_model\.bin could not be read"):
        load_encoder(str(directory))
    assert not Exploit.marker.exists()


def mutated(state: dict, **changes) -> dict:
    state = dict(state)
    for k, v in changes.items():
        if v is None:
            del state[k.replace("__", ".")]
        else:
            state[k.replace("__", ".")] = v
    return state


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pooler__dense__bias": None}, r"missing keys: pooler\.dense\.bias \[32\]"),
        ({"classifier__weight": torch.zeros(5, 32)}, r"unexpected keys: classifier\.weight \[5, 32\]"),
        (
            {"encoder__layer__1__intermediate__dense__weight": torch.zeros(36, 32)},
            r"shape mismatch: encoder\.layer\.1\.intermediate\.dense\.weight is \[36, 32\], expected \[37, 32\]",
        ),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_bad_weights_are_named(tmp_path, tiny_model, minilm_dir, change, message):
    directory = write_checkpoint(tmp_path / "bad", tiny_model, minilm_dir, mutated(tiny_model.state_dict(), **change))
    with pytest.raises(EncoderLoadError, match=message) as err:
        load_encoder(str(directory))
    assert str(directory) in str(err.value)


def test_missing_directory(tmp_path):
    with pytest.raises(EncoderLoadError, match=r"encoder directory '.*nowhere' does not exist; expected a directory"):
        load_encoder(str(tmp_path / "nowhere"))


def test_missing_config_and_weights(tmp_path, tiny_model, minilm_dir):
    directory = write_checkpoint(tmp_path / "c", tiny_model, minilm_dir)
    (directory / "model.safetensors").unlink()
    with pytest.raises(EncoderLoadError, match=r"has no weights; expected one of: model\.safetensors, pytorch_model\.bin"):
        load_encoder(str(directory))
    (directory / "config.json").unlink()
    with pytest.raises(EncoderLoadError, match=r"config\.json is missing"):
        load_encoder(str(directory))


def test_corrupt_safetensors(tmp_path, tiny_model, minilm_dir):
    directory = write_checkpoint(tmp_path / "c", tiny_model, minilm_dir)
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EncoderLoadError, match=r"model\.safetensors could not be read"):
        load_encoder(str(directory))


def test_unsupported_config(tmp_path, tiny_model, minilm_dir):
    directory = write_checkpoint(tmp_path / "c", tiny_model, minilm_dir)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(EncoderLoadError, match=r"config\.json: hidden_act is 'relu'"):
        load_encoder(str(directory))


def test_hub_name_offline_says_how_to_fix(tmp_path):
    code = (
        "from mtbert import load_encoder, EncoderLoadError\n"
        "try:\n    load_encoder('bert-base-uncased')\n"
        "except EncoderLoadError as e:\n    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "'bert-base-uncased' is not a local directory and could not be fetched" in out.stdout, out.stderr
    assert "huggingface-cli download bert-base-uncased" in out.stdout


def test_tiny_is_seeded(minilm_dir):
    a, tokenizer = load_encoder("tiny", seed=1)
    b, _ = load_encoder("tiny", seed=1)
    c, _ = load_encoder("tiny", seed=2)
    assert a.config.vocab_size == len(tokenizer) == 30522
    assert (a.num_layers, a.config.hidden_size) == (2, 32)
    assert same_weights(a, b) and not same_weights(a, c)


def test_default_weights_are_the_packaged_files(minilm, minilm_dir):
    encoder, _, _ = minilm
    packaged = load_file(str(minilm_dir / "model.safetensors"))
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, packaged[k]), k
