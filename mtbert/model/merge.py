"""Task encoders over one shared, frozen bottom: partial fine-tuning and model merging.

Paper 004 (after Wei et al. 2022) fine-tunes one copy of BERT per task with the embeddings and the
bottom ``k`` layers frozen, then merges the task models into one serving model: the frozen bottom is
the same in every task model, so it is stored once and run once per batch, and the batch then
branches into each task's own top ``L - k`` layers and pooler. Its Table 1 fine-tunes the top 4..10
of 12 layers (``k`` = 8..2); ``compute_report`` gives the compute that sharing saves.

``TaskEncoders`` holds one ``BertModel`` per task (``branch(task)``) whose embeddings and layers
``0..k-1`` are literally the same module objects, frozen. Two ways in:

- ``merge_encoders``: separately fine-tuned task encoders (paper 004), checked bit-identical below
  ``k``; ``split()`` goes back to independent per-task encoders.
- ``specialize``: the second step of paper 002's two-step fine-tuning, a copy of the multi-task
  encoder per task (``mtbert.model.multitask.to_specialists`` adds re-initialised heads), each
  tuned on its own task.
  ``shared_depth=0`` is paper 002 as written (whole copies, embeddings included), ``k`` in between
  is paper 004's partial fine-tuning, ``shared_depth=L`` is paper 003's heads-only training (the
  whole encoder, pooler included, shared and frozen).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mtbert.model.bert import BertConfig, BertModel, EncoderOutput, _keep_mask


class TaskEncoders(nn.Module):
    """One encoder per task sharing its bottom ``shared_depth`` layers (and the embeddings).

    Built from ``encoders`` (task -> ``BertModel``, one shape): the shared bottom is the first task's
    modules, each top is the task's own. The modules are used, not copied, and each branch is frozen
    to ``shared_depth``; ``merge_encoders`` is the entry point that checks the bottoms agree.
    ``state_dict()`` repeats the shared tensors under every task, as each task's checkpoint does.
    """

    def __init__(self, encoders: Mapping[str, BertModel], shared_depth: int):
        super().__init__()
        tasks = _check_encoders(encoders, shared_depth)
        first = encoders[tasks[0]]
        self.config = first.config
        self.shared_depth = shared_depth
        self.branches = nn.ModuleDict({t: _assemble(first, encoders[t], shared_depth) for t in tasks})
        self.train(first.training)

    @property
    def tasks(self) -> list[str]:
        return list(self.branches)

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def branch(self, task: str) -> BertModel:
        """``task``'s encoder: a plain ``BertModel`` over the shared modules and the task's top."""
        if task not in self.branches:
            raise ValueError(f"task is {task!r}, but these encoders have branches for: {', '.join(self.branches)}")
        return self.branches[task]

    def shared_modules(self) -> list[nn.Module]:
        """The modules every branch holds: embeddings, layers 0..k-1, and the pooler when k == L."""
        return _bottom_modules(self.branch(self.tasks[0]), self.shared_depth)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Every branch's top, each parameter once; the shared bottom is frozen."""
        return (p for p in self.parameters() if p.requires_grad)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The trainable parameters of ``task``'s branch only."""
        return [p for p in self.branch(task).parameters() if p.requires_grad]

    def forward(
        self,
        task: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """One task's encoder, exactly as the standalone ``BertModel`` would run it."""
        return self.branch(task)(input_ids, attention_mask, token_type_ids)

    def forward_all(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        tasks: Iterable[str] | None = None,
    ) -> dict[str, EncoderOutput]:
        """Every task's output with the shared bottom run once (the serving path of paper 004).

        Mirrors ``BertModel.forward`` step by step, so each output equals ``forward(task, ...)``
        bit for bit in eval mode. In training mode the bottom's dropout mask is drawn once for all
        tasks instead of once per task.
        """
        tasks = self.tasks if tasks is None else list(tasks)
        if not tasks:
            raise ValueError(f"tasks is empty; choose from: {', '.join(self.branches)}")
        branches = [self.branch(t) for t in tasks]
        k = self.shared_depth
        assert all(b.frozen_depth == k for b in branches), "a branch was re-frozen away from shared_depth"
        if k == 0:  # nothing shared: each branch is a whole encoder of its own
            return {t: b(input_ids, attention_mask, token_type_ids) for t, b in zip(tasks, branches)}
        keep = _keep_mask(attention_mask)
        stem = branches[0]  # any branch: the bottom modules are the same objects in all
        with torch.no_grad():  # frozen, so no graph, as in BertModel.forward
            x = stem.embeddings(input_ids, token_type_ids)  # (B, T, H)
            for layer in stem.encoder.layer[:k]:
                x = layer(x, keep)
            if k == self.num_layers:  # heads-only: the pooler is shared too, one output for all
                out = EncoderOutput(last_hidden_state=x, pooler_output=stem.pooler(x[:, 0]))
                return dict.fromkeys(tasks, out)
        outputs = {}
        for task, branch in zip(tasks, branches):
            h = x
            for layer in branch.encoder.layer[k:]:
                h = layer(h, keep)  # (B, T, H), with autograd as the caller has it
            outputs[task] = EncoderOutput(last_hidden_state=h, pooler_output=branch.pooler(h[:, 0]))  # (B, H)
        return outputs

    def split(self) -> dict[str, BertModel]:
        """Independent per-task encoders (deep copies; nothing shared between them)."""
        return {t: copy.deepcopy(self.branch(t)) for t in self.tasks}

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, shared_depth={self.shared_depth} of {self.num_layers}"


def specialize(encoder: BertModel, tasks: Sequence[str], shared_depth: int) -> TaskEncoders:
    """Per-task copies of ``encoder``'s top layers over one frozen copy of its bottom (paper 002's
    second step; see the module docstring for the depths). ``encoder`` itself is left untouched."""
    tasks = list(tasks)
    if not tasks or len(set(tasks)) < len(tasks):
        raise ValueError(f"tasks is {tasks}, but must be distinct task names, at least one")
    _check_depth(shared_depth, encoder.num_layers)
    base = copy.deepcopy(encoder)
    # Copy only the tops: the memo maps each bottom module to itself, so deepcopy shares it.
    memo = {id(m): m for m in _bottom_modules(base, shared_depth)}
    copies = {t: base if i == 0 else copy.deepcopy(base, {**memo}) for i, t in enumerate(tasks)}
    return TaskEncoders(copies, shared_depth)


def merge_encoders(encoders: Mapping[str, BertModel], shared_depth: int) -> TaskEncoders:
    """One serving model from separately fine-tuned task encoders (paper 004). The embeddings and
    layers ``0..shared_depth-1`` (and the pooler when it is ``L``) must be bit-identical across
    tasks: each task must have been tuned with at least that depth frozen, from one encoder."""
    tasks = _check_encoders(encoders, shared_depth)
    first, reference = tasks[0], encoders[tasks[0]].state_dict()
    prefixes = _bottom_prefixes(shared_depth, encoders[first].num_layers)
    shared = [k for k in reference if k.startswith(prefixes)] if prefixes else []
    for task in tasks[1:]:
        state = encoders[task].state_dict()
        for key in shared:
            a, b = reference[key], state[key]
            if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b.to(a.device)):
                raise ValueError(
                    f"encoders[{task!r}] differs from encoders[{first!r}] in {key}, but shared_depth "
                    f"{shared_depth} shares it; below the shared depth the task encoders must be bit-identical "
                    f"(tune each with freeze_depth >= {shared_depth} from one starting encoder, or merge at a lower depth)"
                )
    return TaskEncoders(encoders, shared_depth)


@dataclass(frozen=True)
class ComputeReport:
    """FLOPs of one forward pass over the same sequences: the task models run one by one, against
    the merged model. Counted: every matmul (2 FLOPs per multiply-add); the embeddings (lookups),
    LayerNorm, softmax, GELU and bias adds are left out, as they are a few percent at most."""

    tasks: int
    num_layers: int
    shared_depth: int
    sequences: int
    tokens: int
    separate_flops: int
    merged_flops: int

    @property
    def saved(self) -> float:
        """The fraction of ``separate_flops`` that merging saves."""
        return 1.0 - self.merged_flops / self.separate_flops

    def __str__(self) -> str:
        return (
            f"{self.tasks} tasks, bottom {self.shared_depth} of {self.num_layers} layers shared, "
            f"{self.sequences} sequences ({self.tokens} tokens): {self.separate_flops / 1e9:.4g} GFLOPs as "
            f"separate models, {self.merged_flops / 1e9:.4g} GFLOPs merged, {self.saved:.1%} saved"
        )


def compute_report(
    merged: TaskEncoders, lengths: Sequence[int] | None = None, *, seq_len: int | None = None, batch: int = 1
) -> ComputeReport:
    """Compute of ``merged`` against its tasks' separate encoders. ``lengths`` are the lengths the
    sequences run at (a padded batch runs every row at its padded length); ``seq_len`` and
    ``batch`` say the same for ``batch`` rows of one length."""
    if (lengths is None) == (seq_len is None):
        raise ValueError("give either lengths or seq_len (with batch), not both and not neither")
    lengths = [seq_len] * batch if lengths is None else list(lengths)
    if not lengths or not all(isinstance(n, int) and n > 0 for n in lengths):
        raise ValueError(f"lengths is {lengths}, but must be positive integers, at least one")
    return estimate_compute(merged.config, merged.shared_depth, len(merged.tasks), lengths)


def estimate_compute(config: BertConfig, shared_depth: int, num_tasks: int, lengths: Sequence[int]) -> ComputeReport:
    """``compute_report`` for an encoder shape (a ``BertConfig``) alone: no weights needed."""
    H, I, L, k = config.hidden_size, config.intermediate_size, config.num_hidden_layers, shared_depth
    _check_depth(k, L)
    pooler = 2 * H * H  # one (H -> H) matmul on the [CLS] vector

    def layer(T: int) -> int:  # one layer on one sequence of T tokens
        return 2 * (4 * T * H * H + 2 * T * T * H + 2 * T * H * I)  # Q, K, V, out; QK^T, AV; FFN

    separate = sum(num_tasks * (L * layer(T) + pooler) for T in lengths)
    merged = sum(k * layer(T) + num_tasks * (L - k) * layer(T) + (1 if k == L else num_tasks) * pooler for T in lengths)
    return ComputeReport(num_tasks, L, k, len(lengths), sum(lengths), separate, merged)


# ---- helpers ------------------------------------------------------------------------------------


def _check_depth(depth: int, num_layers: int) -> None:
    if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= num_layers:
        raise ValueError(
            f"shared_depth is {depth!r}, but must be an integer in [0, {num_layers}] "
            f"(0 shares nothing, {num_layers} shares the whole encoder)"
        )


def _check_encoders(encoders: Mapping[str, BertModel], shared_depth: int) -> list[str]:
    tasks = list(encoders)
    if not tasks:
        raise ValueError("encoders is empty; give one BertModel per task")
    first = encoders[tasks[0]]
    for task in tasks:
        if not isinstance(encoders[task], BertModel):
            raise TypeError(f"encoders[{task!r}] is a {type(encoders[task]).__name__}, but must be a BertModel")
        if encoders[task].config != first.config:
            raise ValueError(
                f"encoders[{task!r}].config is {encoders[task].config}, but encoders[{tasks[0]!r}] "
                f"has {first.config}; all task encoders must have one shape"
            )
    _check_depth(shared_depth, first.num_layers)
    return tasks


def _bottom_prefixes(k: int, num_layers: int) -> tuple[str, ...]:
    """State-dict key prefixes of the modules that depth ``k`` shares."""
    if k == 0:
        return ()
    return ("embeddings.", *(f"encoder.layer.{i}." for i in range(k)), *(("pooler.",) if k == num_layers else ()))


def _bottom_modules(encoder: BertModel, k: int) -> list[nn.Module]:
    if k == 0:
        return []
    return [encoder.embeddings, *encoder.encoder.layer[:k], *([encoder.pooler] if k == encoder.num_layers else [])]


def _assemble(bottom: BertModel, top: BertModel, k: int) -> BertModel:
    """A ``BertModel`` made of ``bottom``'s shared modules and ``top``'s own, frozen to ``k``."""
    with torch.device("meta"):  # a skeleton that allocates nothing; all its modules are replaced
        model = BertModel(top.config)
    L = top.num_layers
    model.embeddings = (bottom if k > 0 else top).embeddings
    model.encoder.layer = nn.ModuleList([*bottom.encoder.layer[:k], *top.encoder.layer[k:]])
    model.pooler = (bottom if k == L else top).pooler
    model.freeze(k)
    return model.train(top.training)
