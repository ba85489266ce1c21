"""minBERT: a BERT encoder small enough to read in one sitting.

The module tree mirrors ``transformers.BertModel`` (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ``LayerNorm`` ...) so that a Hugging Face state dict
loads without renaming. Attention runs through ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BertConfig:
    """Shape of the encoder; field names follow Hugging Face's ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size is {self.hidden_size}, but must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} is {value}, but must be in [0, 1)")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, hf: dict) -> "BertConfig":
        """Build from a Hugging Face ``config.json`` dict, refusing what minBERT does not implement."""
        act = hf.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"hidden_act is {act!r}, but minBERT implements only 'gelu' (exact erf GELU)")
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"position_embedding_type is {pos!r}, but minBERT implements only 'absolute'")
        if hf.get("is_decoder", False):
            raise ValueError("is_decoder is true, but minBERT is an encoder only")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in hf.items() if k in names and v is not None})

    def to_hf(self) -> dict:
        """The ``config.json`` dict that ``transformers.BertModel.from_pretrained`` reads."""
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
            **asdict(self),
        }


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # (B, T, H)
    pooler_output: torch.Tensor  # (B, H)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Average of the token vectors that the mask keeps: (B, T, H), (B, T) -> (B, H)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class Dropout(nn.Module):
    """``nn.Dropout`` with a faster mask on the CPU.

    On the CPU, ``torch.bernoulli_`` draws one random number at a time and takes about a tenth of a
    BERT training step. Here one 64-bit draw yields four 16-bit uniforms, each compared with a
    threshold: the drop probability is rounded to a multiple of 1/65536 (0.1 becomes 0.100006) and
    the kept values are scaled by the exact inverse of the rounded keep probability. Other devices
    use ``F.dropout``, whose kernels are already fused.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return _CpuDropout.apply(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def cpu_keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A boolean mask, True with probability ``1 - round(p * 65536) / 65536``."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # full 64-bit range
    uniform16 = bits.view(torch.int16)[:n].view(shape)  # four uniform int16 per draw
    return uniform16 >= -(2**15) + round(p * 2**16)


class _CpuDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = cpu_keep_mask(x.shape, p)
        ctx.scale = 1.0 / (1.0 - round(p * 2**16) / 2**16)
        ctx.save_for_backward(keep)  # 1 byte per element
        return torch.where(keep, x * ctx.scale, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:seq_len]  # (B, T, H)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.dropout = Dropout(config.attention_probs_dropout_prob)
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def qkv_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        # One (H -> 3H) matmul instead of three: the weights stay separate parameters, named as in
        # HF checkpoints, and are concatenated here (a small copy next to the activations' matmul).
        w = torch.cat((self.query.weight, self.key.weight, self.value.weight))
        b = torch.cat((self.query.bias, self.key.bias, self.value.bias))
        return w, b

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape
        qkv = F.linear(x, *self.qkv_weight()).view(B, T, 3, self.num_heads, self.head_size)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)
        mask = None if keep is None else keep[:, None, None, :]  # (B, 1, 1, T)
        p = self.dropout.p if self.training else 0.0
        if p > 0.0 and x.device.type == "cpu":
            # SDPA's CPU path for attention dropout is this same math with the slow bernoulli_ mask.
            scores = q @ k.transpose(-2, -1) * self.head_size**-0.5  # (B, nh, T, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            out = self.dropout(scores.softmax(dim=-1)) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hs)
        return out.transpose(1, 2).reshape(B, T, H)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, keep), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if not (self.training or torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type)):
            return self.fused_inference(x, keep)
        x = self.attention(x, keep)
        return self.output(self.intermediate(x), x)

    def fused_inference(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The same layer through PyTorch's fused encoder-layer kernel (the inference fast path of
        ``nn.TransformerEncoderLayer``): post-LayerNorm, exact GELU, one kernel per layer."""
        att, ffn_in, ffn_out = self.attention, self.intermediate.dense, self.output
        return torch._transformer_encoder_layer_fwd(
            x, x.shape[-1], att.self.num_heads, *att.self.qkv_weight(),
            att.output.dense.weight, att.output.dense.bias,
            True, False, att.output.LayerNorm.eps,  # use_gelu, norm_first, eps
            att.output.LayerNorm.weight, att.output.LayerNorm.bias,
            ffn_out.LayerNorm.weight, ffn_out.LayerNorm.bias,
            ffn_in.weight, ffn_in.bias, ffn_out.dense.weight, ffn_out.dense.bias,
            None if keep is None else ~keep, None if keep is None else 1,  # mask_type 1: key padding
        )  # fmt: skip


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls))


class BertModel(nn.Module):
    """The encoder. ``freeze(depth)`` fixes the embeddings and the bottom ``depth`` layers."""

    def __init__(self, config: BertConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.frozen_depth = 0
        self.reset_parameters(generator)

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """BERT's initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorm."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std, generator=generator)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def freeze(self, depth: int) -> None:
        """Freeze the embeddings and layers ``0..depth-1``; ``depth == num_layers`` also freezes
        the pooler (the whole encoder: heads-only training); 0 freezes nothing."""
        if not isinstance(depth, int) or not 0 <= depth <= self.num_layers:
            raise ValueError(f"freeze depth is {depth!r}, but must be an integer in [0, {self.num_layers}]")
        self.frozen_depth = depth
        frozen: list[nn.Module] = []
        if depth > 0:
            frozen = [self.embeddings, *self.encoder.layer[:depth]]
        if depth == self.num_layers:
            frozen.append(self.pooler)
        frozen_ids = {id(p) for m in frozen for p in m.parameters()}
        for p in self.parameters():
            p.requires_grad_(id(p) not in frozen_ids)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters an optimizer should see: frozen ones are left out."""
        return (p for p in self.parameters() if p.requires_grad)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderOutput:
        keep = _keep_mask(attention_mask)
        grad = torch.is_grad_enabled()
        depth = self.frozen_depth
        # The frozen bottom runs without autograd: no graph, no saved activations.
        with torch.set_grad_enabled(grad and depth == 0):
            x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        for i, layer in enumerate(self.encoder.layer):
            with torch.set_grad_enabled(grad and i >= depth):
                x = layer(x, keep)
        with torch.set_grad_enabled(grad and depth < self.num_layers):
            pooled = self.pooler(x[:, 0])  # (B, H)
        return EncoderOutput(last_hidden_state=x, pooler_output=pooled)


def _keep_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) 1/0 mask -> (B, T) boolean keep-mask, or None when nothing is padded (attention then
    takes its fastest kernel)."""
    if attention_mask is None:
        return None
    keep = attention_mask.bool()
    return None if bool(keep.all()) else keep
