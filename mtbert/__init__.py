"""mtbert: multi-task BERT fine-tuning (SST, Quora, STS) on a readable minBERT encoder.

A plain PyTorch library: importing it loads neither Ray nor transformers.

    from mtbert import load_config, train
    result = train(load_config("configs/example.yaml"), on_eval=lambda step, metrics, save: ...)
"""

from mtbert.model.bert import BertConfig, BertModel, EncoderOutput, mean_pool
from mtbert.config import ConfigError, RunConfig, load_config
from mtbert.model.pretrained import DEFAULT_ENCODER, EncoderLoadError, load_encoder
from mtbert.train.loop import TrainingInterrupted, TrainResult, train

__all__ = [
    "DEFAULT_ENCODER",
    "BertConfig",
    "BertModel",
    "ConfigError",
    "EncoderLoadError",
    "EncoderOutput",
    "RunConfig",
    "TrainResult",
    "TrainingInterrupted",
    "load_config",
    "load_encoder",
    "mean_pool",
    "train",
]
