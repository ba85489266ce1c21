"""The three tasks of a run, once: their names, the course files each trains on, which read a pair
of sentences, and the note every Quora score carries.

Every other module takes the task names from here; it imports nothing of the project.
"""

from __future__ import annotations

TASKS = ("sst", "para", "sts")  # sentiment (5 classes), paraphrase (Quora, 0/1), similarity (STS, 0-5)
DATA_TASK = {"sst": "sst", "para": "quora", "sts": "sts"}  # run task -> course files (mtbert.data.course)
PAIR_TASKS = ("para", "sts")  # the tasks whose examples are sentence pairs

QUORA_NOTE = (
    "note: all-MiniLM-L6-v2 was trained on sentence pairs that include Quora duplicate questions, "
    "so its paraphrase (Quora) score is optimistic next to an encoder that never saw them"
)
