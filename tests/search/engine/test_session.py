"""The Ray session's switch of Tune's automatic loggers: off for a search that names its own, on
for the resume of a search whose saved run config names none (started by an earlier version)."""

from __future__ import annotations

import json
import os

import pytest

from search.engine import session
from search.launch import SEARCH_FILE, SPACE_COPY, Launch


@pytest.fixture
def no_ray(monkeypatch):
    # the switch is what is tested, not Ray: connect() is not called into a real Ray here
    monkeypatch.setattr(session, "connect", lambda address: False)


@pytest.mark.parametrize(("tune_loggers", "inside"), [(False, "1"), (True, "0")])
def test_the_session_sets_tunes_automatic_loggers_and_puts_the_variable_back(no_ray, monkeypatch, tune_loggers,
                                                                             inside):  # fmt: skip
    monkeypatch.setenv(session.AUTO_LOGGERS, "kept")
    with session.ray_session(None, tune_loggers=tune_loggers):
        assert os.environ[session.AUTO_LOGGERS] == inside
    assert os.environ[session.AUTO_LOGGERS] == "kept"


def test_a_launch_record_without_the_logger_flag_is_an_earlier_versions(tmp_path):
    (tmp_path / SPACE_COPY).write_text("{}")
    (tmp_path / SEARCH_FILE).write_text(json.dumps({"space_file": "spaces/pcgrad.yaml"}))
    assert Launch.read(tmp_path).explicit_loggers is False
    Launch("spaces/pcgrad.yaml", explicit_loggers=True).save(tmp_path, "{}")
    assert Launch.read(tmp_path).explicit_loggers is True
