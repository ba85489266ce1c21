"""What ``mtbert-search cluster check`` needs from Ray: a cluster config as ``ray up`` would run it, the
installed Ray's version, and the inbound rules Ray writes into the security group it creates on AWS.

Ray 2.60 has no public API for the first or the last: ``ray up`` fills in a provider's defaults and
merges ``setup_commands`` with ``ray.autoscaler._private.util.prepare_config`` and checks the schema
with ``validate_config`` from the same module; the AWS rules are ``_create_default_inbound_rules`` in
``ray.autoscaler._private.aws.config``, whose import needs boto3, so they are taken from its source.
"""

from __future__ import annotations

import ast
import copy
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.autoscaler


def ray_version() -> str:
    return ray.__version__


def prepare(config: dict[str, Any]) -> dict[str, Any]:
    """The config as ``ray up`` runs it: Ray's defaults, merged commands, then Ray's schema (which
    raises on a key it does not know, say)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    log = logging.getLogger("ray.autoscaler._private.util")  # its INFO lines would mix with the problems
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        config = prepare_config(copy.deepcopy(config))
        validate_config(config)
    finally:
        log.setLevel(level)
    return config


def default_inbound_rules() -> Callable[..., list[dict]]:
    """Ray's own ``_create_default_inbound_rules(group ids, extra rules)`` (the rules it writes into the
    security group it creates), taken from its AWS module's source: importing that module needs boto3."""
    source = Path(ray.autoscaler.__file__).parent / "_private" / "aws" / "config.py"
    tree = ast.parse(source.read_text())
    wanted = {"_create_default_inbound_rules", "_create_default_intracluster_inbound_rules",
              "_create_default_ssh_inbound_rules"}  # fmt: skip
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    if {f.name for f in functions} != wanted:
        raise RuntimeError(f"Ray's {source} no longer defines {sorted(wanted)}")
    namespace: dict[str, Any] = {"itertools": itertools}
    exec(compile(ast.Module(body=functions, type_ignores=[]), str(source), "exec"), namespace)  # noqa: S102 (Ray's code)
    return namespace["_create_default_inbound_rules"]
