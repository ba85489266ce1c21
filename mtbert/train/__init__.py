"""Training: the one loop (``loop``: steps, clipping, optimizer and LR steps, evaluations, patience,
resumable state, interruption) and what a step computes (``multitask``: the task losses and the
gradient combiner; ``mlm``: masked-LM further pre-training); the phases as plug-ins (``phases``,
registered in ``PHASES``); a whole run and its entry point ``train`` (``run``); what a finished run
reports (``summary``); the task losses (``losses``), AdamW and LR schedules (``optim``), checkpoints
(``checkpoint``) and ``train.device`` (``device``).

Dependency direction: ``losses`` and ``optim`` sit below ``mtbert.validation``; ``checkpoint`` and
``device`` above it; ``loop`` imports only torch; the objectives, phases and run import the loop,
``mtbert.predict`` and everything below. Nothing here imports ``mtbert.cli`` or ``mtbert.ensemble``.
"""
