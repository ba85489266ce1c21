"""``mtbert-search dashboard DIR``: optuna-dashboard on the search's study, served on 127.0.0.1 only;
a search whose study is in no database, and a port already taken, are bad input (exit 2)."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from helpers import cli, play_trials

from search.engine.searcher import new_searcher
from search.space.file import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = """\
model: {{encoder: tiny}}
train: {{max_steps: 40, eval_every: 10}}
search:
  optim.lr: {{loguniform: [1.0e-5, 1.0e-2]}}
tune:
  num_samples: 4
  storage_path: {storage}
  name: watched
"""


def search_folder(tmp_path: Path, setting: str | None = "sqlite", trials: int = 3) -> Path:
    """A search folder as a search leaves it for the dashboard: its launch record and its study."""
    path = tmp_path / "watched.yaml"
    path.write_text(SPACE.format(storage=tmp_path / "results"))
    space = load_space(path, profile="cpu")
    folder = tmp_path / "results" / "watched"
    folder.mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps({"metric": "overall", "mode": "max", "study_storage": setting}))
    searcher = new_searcher(space, "overall", "max", 4)
    play_trials(searcher, space, lambda v: -abs(v["optim.lr"] - 1e-3), trials)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def other_addresses() -> list[str]:
    """This machine's IPv4 addresses that are not loopback ones (each interface's, as ``ip addr`` shows)."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:  # SIOCGIFADDR: the interface's IPv4 address
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address
            address = socket.inet_ntoa(raw[20:24])
            if not address.startswith("127."):
                found.append(address)
    return found


def listening(port: int) -> list[str]:
    """The local addresses of the sockets listening on ``port``, from the kernel's tables (IPv4 and IPv6)."""
    found = []
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # the kernel writes each 32-bit word in host (little-endian) order
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
                found.append(socket.inet_ntop(socket.AF_INET if size == 4 else socket.AF_INET6, words))
    return found


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_the_dashboard_serves_the_study_on_127_0_0_1_only(tmp_path):
    folder = search_folder(tmp_path)
    port = free_port()
    log = tmp_path / "dashboard.out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", str(folder), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        deadline, studies = time.monotonic() + 120, None
        while studies is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                studies = get(f"http://127.0.0.1:{port}/api/studies")
            except OSError:
                time.sleep(0.5)
        assert studies is not None, log.read_text()[-3000:]
        (summary,) = studies["study_summaries"]
        assert summary["study_name"] == "watched"
        study = get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
        assert len(study["trials"]) == 3 and {t["state"] for t in study["trials"]} <= {"Complete", "Pruned"}
        assert f"http://127.0.0.1:{port}/dashboard/studies/{summary['study_id']}" in log.read_text()
        # the listening socket is bound to the loopback address, not to all interfaces
        assert listening(port) == ["127.0.0.1"]
        for address in other_addresses():  # and nothing answers on the machine's other addresses
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((address, port)) != 0, address
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_search_with_no_database_study_is_bad_input(tmp_path):
    out = cli("dashboard", str(search_folder(tmp_path, setting=None)), timeout=120)
    assert out.returncode == 2
    assert "keeps its Optuna study in no database (tune.study_storage was null" in out.stderr


def test_a_folder_that_holds_no_search_is_bad_input(tmp_path):
    out = cli("dashboard", str(tmp_path), timeout=120)
    assert out.returncode == 2 and "holds no mtbert search" in out.stderr


def test_a_port_in_use_is_bad_input(tmp_path):
    folder = search_folder(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = cli("dashboard", str(folder), "--port", str(port), timeout=120)
    assert out.returncode == 2 and f"--port {port}: cannot listen on 127.0.0.1:{port}" in out.stderr


@pytest.mark.parametrize("missing", ["study.db"])
def test_a_study_database_that_is_gone_is_bad_input(tmp_path, missing):
    folder = search_folder(tmp_path)
    (folder / missing).unlink()
    out = cli("dashboard", str(folder), timeout=120)
    assert out.returncode == 2 and "its study database study.db is missing" in out.stderr
