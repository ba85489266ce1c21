"""Checkpoints: safetensors for tensors, JSON and YAML for everything else; nothing is pickled.

Layout of a checkpoint directory:

    encoder/            Hugging Face format: config.json, model.safetensors, tokenizer files
                        (``transformers.BertModel.from_pretrained(<ckpt>/encoder)`` loads it)
    heads.safetensors   the task heads
    config.yaml         the full resolved run config (``mtbert-train`` accepts it)
    metrics.json        dev metrics at save time, the step
    state/              only in resumable checkpoints: optimizer, LR schedule, sampler, RNG
                        (state.safetensors + state.json)

A model whose encoder is a ``TaskEncoders`` (``mtbert.model.merge``: per-task branches over a shared,
frozen bottom) has, instead of ``encoder/``:

    encoders/<task>/    each task's whole encoder in Hugging Face format, as ``encoder/`` above
                        (``transformers.BertModel.from_pretrained(<ckpt>/encoders/sst)`` loads it);
                        the shared bottom is repeated in every one
    merged.json         {"shared_depth": k, "tasks": ["sst", "para", "sts"]}

``load_checkpoint`` rebuilds it through ``merge_encoders``, which checks that the embeddings and
the bottom ``k`` layers of every task are bit-identical, and shares them again as one set.

Loading refuses a checkpoint holding any pickle (``heads.pt``, ``pytorch_model.bin``, ``state.pkl``,
or a pickle under a safetensors name), found by name or by its first bytes, and names the file:
unpickling runs whatever code the file names.

``check_checkpoint`` is every check that loading makes before it reads a tensor: the pickles, the
files, ``config.yaml`` and ``metrics.json``, each encoder folder, and every safetensors file's
header (which lists each tensor's name, shape and place in the file, so a truncated file, or a key
or shape that does not fit ``config.yaml``, shows there) against the model ``config.yaml``
describes, its encoder built on the meta device (shapes, no memory). ``load_checkpoint`` runs it
first and returns a ``LoadedCheckpoint`` (model, tokenizer, config, metrics); ``mtbert-search export``
and ``ensemble`` run it on each checkpoint they take, loading none.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtbert.config.fields import ConfigError
from mtbert.config.run import RunConfig
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.merge import TaskEncoders, merge_encoders
from mtbert.model.multitask import build_model, head_specs
from mtbert.model.pretrained import (
    EncoderLoadError,
    check_state_dict,
    load_encoder,
    load_encoder_dir,
    load_tokenizer,
    state_dict_problems,
)
from mtbert.validation import load_config

ENCODER_DIR = "encoder"
ENCODERS_DIR = "encoders"  # merged models: one encoder per task
MERGED_FILE = "merged.json"
HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
STATE_DIR = "state"
WEIGHTS_FILE = "model.safetensors"  # an encoder's weights in a checkpoint

# Files named like pickles (torch.save, pickle, joblib): loading one can run any code it names.
PICKLE_SUFFIXES = frozenset({".bin", ".ckpt", ".joblib", ".pickle", ".pkl", ".pt", ".pth", ".tar"})
READ_ONLY = "a checkpoint is read only as safetensors, JSON and YAML; nothing in it is unpickled"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and what was expected."""


def save_checkpoint(
    directory: str | Path,
    model: Any,
    tokenizer: Any,
    config: RunConfig,
    metrics: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint into ``directory`` atomically (a temporary sibling, then a rename), so an
    interrupted save never leaves a half-written checkpoint where a good one was."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if isinstance(model.encoder, TaskEncoders):
        for task in model.encoder.tasks:
            _save_encoder(tmp / ENCODERS_DIR / task, model.encoder.branch(task), tokenizer)
        merged = {"shared_depth": model.encoder.shared_depth, "tasks": model.encoder.tasks}
        (tmp / MERGED_FILE).write_text(json.dumps(merged, indent=2))
    else:
        _save_encoder(tmp / ENCODER_DIR, model.encoder, tokenizer)
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    save_file(_contiguous(heads), str(tmp / HEADS_FILE))
    (tmp / CONFIG_FILE).write_text(config.to_yaml())
    (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=float))
    if state is not None:
        write_state(tmp / STATE_DIR, state)
    # The old checkpoint is moved aside, not deleted, until the new one stands in its place: a crash
    # between the two renames leaves it whole as ``<name>.old``.
    old = directory.with_name(directory.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        shutil.rmtree(old)
    return directory


def _save_encoder(directory: Path, encoder: Any, tokenizer: Any) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(encoder.config.to_hf(), indent=2))
    save_file(_contiguous(encoder.state_dict()), str(directory / WEIGHTS_FILE))
    tokenizer.save_pretrained(str(directory))


@dataclass
class CheckedCheckpoint:
    """What ``check_checkpoint`` read: the run config, the metrics and where the encoders are."""

    directory: Path
    config: RunConfig
    metrics: dict[str, Any]
    merged: bool
    tasks: list[str]  # a merged model's encoders/<task>/, in merged.json's order; [] otherwise
    shared_depth: int = 0  # a merged model's shared bottom


def check_checkpoint(directory: str | Path) -> CheckedCheckpoint:
    """Check everything about a checkpoint that can be checked without reading its tensors, and
    raise ``CheckpointError`` naming the first file that is wrong and how: a pickle anywhere, a
    missing file, ``config.yaml`` or ``metrics.json`` that does not parse, an encoder folder
    without config.json, weights or tokenizer, or a safetensors file whose header does not parse,
    does not cover the file (truncated), or lists keys and shapes that do not fit ``config.yaml``."""
    directory = Path(directory)
    if directory.is_file():
        problem = _pickle_problem(directory)
        raise CheckpointError(problem or f"{directory} is a file; a checkpoint is a directory ({CONFIG_FILE}, ...)")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    refuse_pickles(directory)
    merged = (directory / MERGED_FILE).exists() or (directory / ENCODERS_DIR).exists()
    needed = [MERGED_FILE] if merged else [ENCODER_DIR, f"{ENCODER_DIR}/{WEIGHTS_FILE}"]
    for name in (CONFIG_FILE, HEADS_FILE, METRICS_FILE, *needed):
        if not (directory / name).exists():
            raise CheckpointError(
                f"{directory / name} is missing; a checkpoint holds {CONFIG_FILE}, {HEADS_FILE}, {METRICS_FILE} "
                f"and {ENCODER_DIR}/ with {WEIGHTS_FILE} (a merged model: {ENCODERS_DIR}/<task>/ and {MERGED_FILE} instead)"
            )
    try:
        config = load_config(directory / CONFIG_FILE)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    except UnicodeDecodeError:
        text = directory / CONFIG_FILE
        raise CheckpointError(f"{text} is not UTF-8 text; it must hold the run config in YAML") from None
    metrics = _read_json(directory / METRICS_FILE)
    if not isinstance(metrics, dict):
        raise CheckpointError(
            f"{directory / METRICS_FILE} holds a {type(metrics).__name__}, but must hold a JSON object of metrics"
        )
    tasks, depth = _read_merged(directory, list(head_specs(config))) if merged else ([], 0)
    folders = [directory / ENCODERS_DIR / t for t in tasks] if merged else [directory / ENCODER_DIR]
    encoder = None
    for folder in folders:
        encoder = _check_encoder_dir(folder)
    _check_heads(directory / HEADS_FILE, config, encoder)
    return CheckedCheckpoint(directory, config, metrics, merged, tasks, depth)


@dataclass
class LoadedCheckpoint:
    """What ``load_checkpoint`` read: the model (on the device asked for), its tokenizer, the run
    config it was trained with and the metrics saved with it."""

    model: Any  # a MultiTaskModel
    tokenizer: Any
    config: RunConfig
    metrics: dict[str, Any]


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """The model, tokenizer, config and metrics of a checkpoint directory, checked first
    (``check_checkpoint``), so that every tensor is read once, into a model it is known to fit."""
    checked = check_checkpoint(directory)
    directory = checked.directory
    try:
        if checked.merged:
            encoder, tokenizer = _load_task_encoders(directory, checked.tasks, checked.shared_depth)
        else:
            encoder, tokenizer = load_encoder(str(directory / ENCODER_DIR))
    except EncoderLoadError as e:
        raise CheckpointError(str(e)) from None
    model = build_model(checked.config, encoder)
    model.load_state_dict({**model.state_dict(), **_read_safetensors(directory / HEADS_FILE)})
    return LoadedCheckpoint(model.to(device), tokenizer, checked.config, checked.metrics)


def saved_evaluation(directory: Path) -> tuple[Any, Any] | None:
    """``(step, overall)`` of a checkpoint's metrics.json, or None if it has none readable."""
    try:
        metrics = json.loads((directory / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return (metrics.get("step"), metrics.get("overall")) if isinstance(metrics, dict) else None


def _load_task_encoders(directory: Path, tasks: list[str], depth: int) -> tuple[TaskEncoders, Any]:
    """The ``TaskEncoders`` of a checked merged checkpoint, its bottom checked bit-identical across tasks."""
    encoders = {task: load_encoder_dir(directory / ENCODERS_DIR / task) for task in tasks}
    try:
        merged = merge_encoders(encoders, depth)
    except ValueError as e:
        raise CheckpointError(f"{directory / ENCODERS_DIR} cannot be merged as {MERGED_FILE} says: {e}") from None
    return merged, load_tokenizer(directory / ENCODERS_DIR / tasks[0])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not valid JSON: it is not UTF-8 text") from None


def _read_merged(directory: Path, needed: list[str]) -> tuple[list[str], int]:
    """The tasks and shared depth in a merged checkpoint's merged.json, checked against the heads
    ``config.yaml`` needs and the encoders/<task>/ folders present."""
    path = directory / MERGED_FILE
    meta = _read_json(path)
    tasks = meta.get("tasks") if isinstance(meta, dict) else None
    depth = meta.get("shared_depth") if isinstance(meta, dict) else None
    if not isinstance(depth, int) or not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise CheckpointError(f'{path} holds {meta!r}, but must hold {{"shared_depth": <int>, "tasks": [<task>, ...]}}')
    if not tasks:
        raise CheckpointError(f"{path} lists no tasks; a merged checkpoint holds one encoder per task")
    missing = [t for t in needed if t not in tasks]
    if missing:
        raise CheckpointError(
            f"{path} lists tasks {tasks}, but the heads in {CONFIG_FILE} also need: {', '.join(missing)}"
        )
    for task in tasks:
        if not (directory / ENCODERS_DIR / task).is_dir():
            raise CheckpointError(f"{directory / ENCODERS_DIR / task} is missing; {MERGED_FILE} lists task {task!r}")
        if not (directory / ENCODERS_DIR / task / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{directory / ENCODERS_DIR / task / WEIGHTS_FILE} is missing; {READ_ONLY}")
    return tasks, depth


def _check_encoder_dir(folder: Path) -> Any:
    """An encoder folder's config.json, tokenizer and weights' header, checked; returns the encoder
    it describes, on the meta device."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file} is missing; an encoder folder needs config.json")
    hf = _read_json(config_file)
    try:
        bert = BertConfig.from_hf(hf)
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{config_file}: {e}") from None
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise CheckpointError(f"{folder} has no tokenizer; expected tokenizer.json or vocab.txt")
    with torch.device("meta"):
        encoder = BertModel(bert)
    try:
        check_state_dict(encoder, _safetensors_shapes(folder / WEIGHTS_FILE), folder)
    except EncoderLoadError as e:
        raise CheckpointError(str(e)) from None
    return encoder


def _check_heads(path: Path, config: RunConfig, encoder: Any) -> None:
    """The keys and shapes in the heads file's header against the heads ``config`` builds on
    ``encoder`` (heads are small and built for real; the encoder stays on the meta device)."""
    try:
        model = build_model(config, encoder)
    except ValueError as e:  # a frozen depth beyond the encoder's layers, say
        raise CheckpointError(f"{path.parent / CONFIG_FILE} does not fit the encoder in the checkpoint: {e}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    problems = state_dict_problems(expected, _safetensors_shapes(path))
    if problems:
        raise CheckpointError(f"{path} does not fit the heads in {CONFIG_FILE}; " + "; ".join(problems))


def _check_safetensors_file(path: Path) -> None:
    """Before a safetensors file is opened: it exists, and is no pickle (refused unread)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    problem = _pickle_problem(path)
    if problem:
        raise CheckpointError(problem)


def _safetensors_shapes(path: Path) -> dict[str, torch.Tensor]:
    """Each tensor in a safetensors file as an empty meta tensor of its shape, from the header
    alone; the header must parse and cover the whole file (a truncated file fails here)."""
    from safetensors import safe_open

    _check_safetensors_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception as e:  # truncated, or not safetensors at all
        raise CheckpointError(f"{path} is not a readable safetensors file: {type(e).__name__}: {e}") from None


# ---- resumable training state: nested dicts/lists of tensors and plain values -------------------


def write_state(directory: Path, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, tensors, "")
    directory.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(tensors), str(directory / "state.safetensors"))
    (directory / "state.json").write_text(json.dumps(skeleton))


def read_state(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory) / STATE_DIR
    if directory.is_dir():
        refuse_pickles(directory)
    if not (directory / "state.json").is_file():
        raise CheckpointError(f"{directory / 'state.json'} is missing: the checkpoint was not saved for resuming")
    tensors = _read_safetensors(directory / "state.safetensors")
    try:
        skeleton = json.loads((directory / "state.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{directory / 'state.json'} is not valid JSON: {e}") from None
    return _join(skeleton, tensors)


def _split(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        # JSON keys are strings: remember which were ints (optimizer state is keyed by param index).
        return {"__dict__": [[k, _split(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_split(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save {type(obj).__name__} at {path or 'top level'} in a checkpoint")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _join(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, dict) and "__list__" in obj:
        items = [_join(v, tensors) for v in obj["__list__"]]
        return tuple(items) if obj["tuple"] else items
    return obj


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    _check_safetensors_file(path)
    try:
        return load_file(str(path))
    except Exception as e:  # truncated, or not safetensors at all
        raise CheckpointError(f"{path} is not a readable safetensors file: {type(e).__name__}: {e}") from None


# ---- refusing pickles ----------------------------------------------------------------------------


def refuse_pickles(directory: Path) -> None:
    """Raise ``CheckpointError`` naming the first file under ``directory`` that is a pickle, by its
    name (``heads.pt``, ``pytorch_model.bin``, ``state.pkl``) or by its first bytes (a pickle or a
    ``torch.save`` archive under any name, ``heads.safetensors`` included). save_checkpoint never
    writes one, so a checkpoint holding one was made or changed by something else."""
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        problem = _pickle_problem(path)
        if problem:
            raise CheckpointError(problem)


def _pickle_problem(path: Path) -> str | None:
    kind = _pickle_kind(path)
    if kind is None and path.suffix.lower() in PICKLE_SUFFIXES:
        kind = f"named {path.suffix}"
    if kind is None:
        return None
    if path.suffix == ".safetensors":
        return f"{path} is not a readable safetensors file: it is a pickle ({kind}); {READ_ONLY}"
    return f"{path} is a pickle ({kind}), which is never loaded; {READ_ONLY}"


def _pickle_kind(path: Path) -> str | None:
    """What the first bytes of ``path`` say it is, if a pickle: None for anything else.
    safetensors starts with an 8-byte header length, then ``{``."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, the torch.save format"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocols 2-5
        return f"pickle protocol {head[1]}"
    return None


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage (tied weights, views).
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}
