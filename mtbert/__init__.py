"""mtbert: multi-task BERT fine-tuning (SST, Quora, STS) on a readable minBERT encoder.

A plain PyTorch library: importing it loads neither Ray nor transformers.

    from mtbert import load_config, train
    result = train(load_config("configs/example.yaml"), on_eval=lambda step, metrics, save: ...)

The names below are the API that ``search/`` and users import. The package, bottom to top (a
module imports only from its own row and the rows above it):

    tasks.py, errors.py, registry.py   the task table; the words of error messages; plug-in registries
    config/           the run config: dataclasses, dotted keys, the YAML reader (no plug-in)
    data/             course files and malformed rows (course), token cache, task sampling schedules
    model/            minBERT (bert), pretrained weights, heads, the multi-task model, task encoders
    data/             a run's data, tokenised as each head reads it (prepare), task streams (stream),
                      masked-LM sentences (sentences), ``mtbert-train data check`` (check),
                      the sentences a user hands to ``predict`` (inputs)
    methods/          one file per gradient combiner (grad.method)
    evaluate.py       metrics and the course's prediction files
    train/            losses, the optimizer and LR schedules (optim)
    validation.py     a config checked as a whole against the plug-ins, where it enters
    train/            checkpoints (checkpoint), ``train.device`` (device)
    predict.py        a model's predictions, dev evaluation, a checkpoint's final evaluation
    train/            the one training loop (loop), its objectives (multitask, mlm), the phases as
                      plug-ins (phases), a whole run and ``train`` (run), what a run reports (summary)
    ensemble.py       prediction rules, greedy selection, an ensemble folder read back
    serve.py, cli.py  a model on new text (``mtbert-train predict``); ``mtbert-train``: arguments and output
    __init__.py       this API

``mtbert`` never imports ``search``, ``ray`` or ``optuna``.
"""

from mtbert.config import ConfigError, RunConfig
from mtbert.data.course import DataError
from mtbert.data.prepare import TaskData, prepare_data
from mtbert.model.bert import BertConfig, BertModel, EncoderOutput, mean_pool
from mtbert.model.pretrained import DEFAULT_ENCODER, EncoderLoadError, load_encoder
from mtbert.predict import (
    Evaluation,
    FinalEvaluation,
    TaskPredictions,
    evaluate,
    final_evaluation,
    predict,
    predict_outputs,
)
from mtbert.train.checkpoint import (
    CheckedCheckpoint,
    CheckpointError,
    LoadedCheckpoint,
    check_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from mtbert.train.device import resolve_device
from mtbert.train.loop import TrainingInterrupted, TrainResult
from mtbert.train.mlm import MlmResult, further_pretrain
from mtbert.train.run import Run, open_run, train
from mtbert.validation import load_config, validate

__all__ = [
    "DEFAULT_ENCODER",
    "BertConfig",
    "BertModel",
    "CheckedCheckpoint",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EncoderLoadError",
    "EncoderOutput",
    "Evaluation",
    "FinalEvaluation",
    "LoadedCheckpoint",
    "MlmResult",
    "Run",
    "RunConfig",
    "TaskData",
    "TaskPredictions",
    "TrainResult",
    "TrainingInterrupted",
    "check_checkpoint",
    "evaluate",
    "final_evaluation",
    "further_pretrain",
    "load_checkpoint",
    "load_config",
    "load_encoder",
    "mean_pool",
    "open_run",
    "predict",
    "predict_outputs",
    "prepare_data",
    "resolve_device",
    "save_checkpoint",
    "train",
    "validate",
]
