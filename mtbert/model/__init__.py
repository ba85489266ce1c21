"""The model: the minBERT encoder (``bert``), pretrained weights and tokenizers (``pretrained``),
the task heads (``heads``: one class per head, registered per task in ``HEADS``), the multi-task
model built from a run config (``multitask``) and task encoders over a shared frozen bottom
(``merge``: partial fine-tuning, merging, the specialists of two-step fine-tuning).

Dependency direction: ``bert`` imports only torch; ``pretrained`` and ``merge`` import ``bert``;
``heads`` imports ``bert``; ``multitask`` imports them all and ``mtbert.config``. Besides
``mtbert.config``, ``mtbert.tasks``, ``mtbert.registry`` and ``mtbert.errors``, nothing here imports
the rest of ``mtbert`` (data, losses, gradient methods, training, validation).
"""
