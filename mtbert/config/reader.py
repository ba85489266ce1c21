"""The one YAML reader of the project: run configs and search space files both go through it.

``load_yaml`` is ``yaml.safe_load`` that refuses a key given twice; ``yaml_problem`` and
``refused_tag`` turn PyYAML's errors into one line; ``read_text`` says why a file cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mtbert.config.fields import ConfigError


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (YAML itself would keep the
    last silently, so a setting written twice would be half-ignored)."""


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping: ``key``, the ``line`` of the second and the ``first`` line."""

    def __init__(self, key: Any, line: int, first: int, mark: yaml.Mark):
        self.key, self.line, self.first = key, line, first
        problem = f"duplicate key {key!r} on line {line} (first on line {first}); a key may appear once"
        super().__init__(None, None, problem, mark)


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise DuplicateKey(key, key_node.start_mark.line + 1, seen[key], key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(text: str) -> Any:
    """Plain values from YAML text: ``yaml.safe_load``, refusing duplicate keys (``UniqueKeyLoader``)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def yaml_problem(error: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and where (PyYAML's own text spans several lines)."""
    refused = refused_tag(error)
    if refused:
        return refused
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = error.problem or ""
        if isinstance(error, DuplicateKey):
            return problem
        return f"not valid YAML{where}: {problem}".rstrip(": ")
    return f"not valid YAML: {' '.join(str(error).split())}"


def read_text(path: Path, expected: str) -> str:
    """A text file's contents, or a ConfigError saying why it cannot be read (a folder, missing,
    unreadable, not UTF-8)."""
    if path.is_dir():
        raise ConfigError("file", f"{path} is a folder; expected {expected}", None)
    if not path.is_file():
        raise ConfigError("file", f"{path} does not exist; expected {expected}", None)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("file", f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); expected {expected}",
                          None) from None  # fmt: skip
    except OSError as e:
        raise ConfigError("file", f"{path} cannot be read ({e.strerror or e}); expected {expected}", None) from None


def refused_tag(error: yaml.YAMLError) -> str | None:
    """The message for a YAML tag that would build a Python object (``!!python/object/...``), which
    a safe loader refuses; None for any other YAML error."""
    tag = (getattr(error, "problem", None) or "").partition("constructor for the tag ")[2]
    if not tag:
        return None
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    tag = tag.replace("tag:yaml.org,2002:", "!!")
    return f"tag {tag}{where} is refused: YAML is read with safe_load, which builds plain values, never Python objects"
