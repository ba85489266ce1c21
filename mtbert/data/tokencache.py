"""Token ids for a whole data file, computed once and kept on disk.

A cache entry is keyed by everything that decides the token ids: the file's content hash, the
tokenizer's identity (class + its full normalizer/vocabulary spec), the max length, the pair
encoding and the separator token. It is stored with safetensors as flat arrays plus offsets, so
loading it never unpickles anything.

Pair encodings:
- ``concat``: ``[CLS] A [SEP] B [SEP]``, token types 0 for the A part and 1 for the B part, exactly
  the tokenizer's own pair encoding (longest-first truncation). With ``separator="[unused36]"`` it is
  paper 000's variant ``[CLS] A [SEP] [unused36] B [SEP]``: an unused token marks the start of the
  second sentence, so the model need not tell "[SEP] between sentences" from "[SEP] at the end".
- ``siamese``: each sentence encoded alone (``[CLS] A [SEP]`` and ``[CLS] B [SEP]``), two sequences
  per example.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # transformers is heavy: only its type is needed here
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

PAIR_ENCODINGS = ("concat", "siamese")
# Bumped whenever the layout or the encoding rules change, so old entries are never read back.
CACHE_FORMAT = 1
MIN_MAX_LENGTH = 8  # room for [CLS], two [SEP]s, a separator and a few tokens of each sentence


@dataclass(frozen=True)
class TokenArrays:
    """Variable-length sequences back to back: sequence ``i`` is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: np.ndarray  # (total_tokens,) int32
    type_ids: np.ndarray  # (total_tokens,) int8
    offsets: np.ndarray  # (n + 1,) int64

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]]) -> "TokenArrays":
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in ids], out=offsets[1:])
        flat = [t for seq in ids for t in seq]
        flat_types = [t for seq in type_ids for t in seq]
        return cls(np.asarray(flat, dtype=np.int32), np.asarray(flat_types, dtype=np.int8), offsets)

    @classmethod
    def join(cls, a: "TokenArrays", b: "TokenArrays") -> "TokenArrays":
        offsets = np.concatenate([a.offsets, b.offsets[1:] + a.offsets[-1]])
        return cls(np.concatenate([a.ids, b.ids]), np.concatenate([a.type_ids, b.type_ids]), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.ids[start:end], self.type_ids[start:end]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class Encoded:
    """The token ids of one file: one ``TokenArrays`` per model input (two for siamese pairs)."""

    sequences: tuple[TokenArrays, ...]
    pad_id: int

    def __len__(self) -> int:
        return len(self.sequences[0])

    def lengths(self) -> np.ndarray:
        """The longest input of each example: what padding a batch costs."""
        return np.max(np.stack([s.lengths() for s in self.sequences]), axis=0)


def check_encoding(pair: str, separator: str | None, max_length: int) -> None:
    if pair not in PAIR_ENCODINGS:
        raise ValueError(f"unknown data.pair_encoding {pair!r}; choose from: {', '.join(PAIR_ENCODINGS)}")
    if separator is not None and pair != "concat":
        raise ValueError(f"data.pair_separator {separator!r} needs data.pair_encoding 'concat', not {pair!r}")
    if max_length < MIN_MAX_LENGTH:
        raise ValueError(f"data.max_length is {max_length}, but must be >= {MIN_MAX_LENGTH}")


def encode(
    sentences: Sequence[tuple[str, ...]],
    tokenizer: "PreTrainedTokenizerBase",
    *,
    max_length: int,
    pair: str = "concat",
    separator: str | None = None,
) -> Encoded:
    """Token ids for single sentences (1-tuples) or sentence pairs (2-tuples), truncated to ``max_length``."""
    check_encoding(pair, separator, max_length)
    widths = {len(s) for s in sentences}
    if len(widths) > 1 or not widths <= {1, 2}:
        raise ValueError(f"sentences must be all 1-tuples or all 2-tuples, got tuple sizes {sorted(widths)}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if not sentences:
        return Encoded((TokenArrays.from_lists([], []),), pad_id)
    columns = list(zip(*sentences))

    def call(*texts: Sequence[str], length: int = max_length) -> tuple[list[list[int]], list[list[int]]]:
        out = tokenizer(*[list(t) for t in texts], truncation=True, max_length=length, return_attention_mask=False)
        types = out.get("token_type_ids") or [[0] * len(x) for x in out["input_ids"]]
        return out["input_ids"], types

    if len(columns) == 1 or pair == "siamese":
        return Encoded(tuple(TokenArrays.from_lists(*call(c)) for c in columns), pad_id)
    if separator is None:
        return Encoded((TokenArrays.from_lists(*call(*columns)),), pad_id)
    # Paper 000's [unused36] variant: the tokenizer's own pair encoding one token shorter (so its
    # truncation rule is kept exactly), with the separator inserted where sentence B starts.
    sep_id = _token_id(tokenizer, separator)
    ids, types = call(*columns, length=max_length - 1)
    for seq, seq_types in zip(ids, types):
        start = seq_types.index(1)
        seq.insert(start, sep_id)
        seq_types.insert(start, 1)
    return Encoded((TokenArrays.from_lists(ids, types),), pad_id)


def _token_id(tokenizer: "PreTrainedTokenizerBase", token: str) -> int:
    vocab = tokenizer.get_vocab()
    if token not in vocab:
        raise ValueError(f"data.pair_separator {token!r} is not in the tokenizer's vocabulary; use one such as '[unused36]'")
    return vocab[token]


def tokenizer_fingerprint(tokenizer: "PreTrainedTokenizerBase") -> str:
    """A hash of what decides the token ids: the class and the full tokenizer spec (vocab, lowercasing, ...)."""
    h = hashlib.sha256(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # Truncation and padding are per-call settings the tokenizer remembers; they change no token.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        h.update(repr(getattr(tokenizer, "do_lower_case", None)).encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "mtbert" / "tokens"


def cached_encode(
    sentences: Sequence[tuple[str, ...]],
    content_sha256: str,
    tokenizer: "PreTrainedTokenizerBase",
    *,
    max_length: int,
    pair: str = "concat",
    separator: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    name: str = "data",
) -> Encoded:
    """``encode`` once per (file content, tokenizer, max length, pair encoding); later calls read the cache.

    ``content_sha256`` is the hash of the file the sentences were read from; ``name`` only makes the
    cache file recognisable.
    """
    check_encoding(pair, separator, max_length)
    single = all(len(s) == 1 for s in sentences)
    key_fields = {
        "format": CACHE_FORMAT,
        "content": content_sha256,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
        "pair": "single" if single else pair,  # single sentences encode the same under any pair mode
        "separator": None if single else separator,
        "examples": len(sentences),
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{name}-{key[:20]}.safetensors"
    if path.is_file():
        try:
            return _load(path, len(sentences))
        except Exception as e:  # a truncated or foreign file: rebuild it rather than fail the run
            log.warning("token cache %s is unreadable (%s: %s); re-tokenising", path, type(e).__name__, e)
    encoded = encode(sentences, tokenizer, max_length=max_length, pair=pair, separator=separator)
    _save(path, encoded, {k: str(v) for k, v in key_fields.items()})
    return encoded


def _save(path: Path, encoded: Encoded, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    tensors = {"pad_id": np.asarray([encoded.pad_id], dtype=np.int64)}
    for n, seq in enumerate(encoded.sequences):
        tensors |= {f"{n}.ids": seq.ids, f"{n}.type_ids": seq.type_ids, f"{n}.offsets": seq.offsets}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # concurrent trials never see half a file
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _load(path: Path, n_examples: int) -> Encoded:
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    sequences = []
    while f"{len(sequences)}.ids" in tensors:
        n = len(sequences)
        sequences.append(TokenArrays(tensors[f"{n}.ids"], tensors[f"{n}.type_ids"], tensors[f"{n}.offsets"]))
    if not sequences or any(len(s) != n_examples or s.offsets[-1] != len(s.ids) for s in sequences):
        raise ValueError(f"expected {n_examples} sequences per input")
    return Encoded(tuple(sequences), int(tensors["pad_id"][0]))
