"""``mtbert-train data check``: every course file of a data folder read, one result per file, so a
malformed row or an unusable file is found before a run starts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mtbert.data.course import REQUIRED_FILES, TASK_FILES, DataError, ReadReport, read_task


@dataclass
class FileCheck:
    """One file: read (``report``), absent though optional, or unusable (``error``)."""

    task: str
    split: str
    path: Path
    report: ReadReport | None = None
    error: DataError | None = None

    @property
    def absent(self) -> bool:
        return self.report is None and self.error is None


def check_files(folder: Path) -> Iterator[FileCheck]:
    """Each course file of ``folder`` in turn, as it is read (a caller can report as it goes)."""
    for task, splits in TASK_FILES.items():
        for split in splits:
            path = folder / splits[split]
            if not path.exists() and (task, split) not in REQUIRED_FILES:
                yield FileCheck(task, split, path)
                continue
            try:
                yield FileCheck(task, split, path, report=read_task(folder, task, split))
            except DataError as e:
                yield FileCheck(task, split, path, error=e)
