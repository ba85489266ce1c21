"""The stock search (``search.engine.stock``): Ray Tune's OptunaSearch and ASHA with their defaults
over a space, the reference arm of ``benchmarks/search_quality.py``."""

from __future__ import annotations

import json

import pytest
from helpers import write_space

from search.launch import read_data, search_setup
from search.space.file import load_space


@pytest.mark.slow
def test_the_stock_search_runs_the_space_and_hands_back_tunes_best_checkpoint(data_dir, token_cache, tmp_path):
    from search.engine.stock import run_stock

    path = write_space(tmp_path, data_dir, token_cache, name="stock", num_samples=3, max_concurrent=1)
    space = load_space(path)
    setup = search_setup(space)
    found = run_stock(space, setup, read_data(setup, log=lambda line: None), tmp_path / "results" / "stock")
    assert found["trials"] == 3 and 0 <= found["complete"] <= 3
    # Tune's best: the trial whose best reported result is the highest, its checkpoint of that result
    rows = {}
    for trial in (tmp_path / "results" / "stock").glob("trial_*"):
        lines = (trial / "result.json").read_text().splitlines()
        rows[trial.name.removeprefix("trial_")] = [json.loads(line) for line in lines if line.strip()]
    best_id = max(rows, key=lambda tid: max(r["overall"] for r in rows[tid]))
    assert found["trial_id"] == best_id
    assert found["selection"]["overall"] == max(r["overall"] for r in rows[best_id])
    assert (found["checkpoint"] / "config.yaml").is_file()
