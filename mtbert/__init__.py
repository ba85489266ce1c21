"""mtbert: multi-task BERT fine-tuning (SST, Quora, STS) on a readable minBERT encoder.

A plain PyTorch library: importing it loads neither Ray nor transformers.
"""

from mtbert.bert import BertConfig, BertModel, EncoderOutput, mean_pool
from mtbert.pretrained import DEFAULT_ENCODER, EncoderLoadError, load_encoder

__all__ = [
    "DEFAULT_ENCODER",
    "BertConfig",
    "BertModel",
    "EncoderLoadError",
    "EncoderOutput",
    "load_encoder",
    "mean_pool",
]
