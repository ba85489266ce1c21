"""A search with ``data.dev_holdout``: nothing it chooses reads the report half of the dev sets,
which is scored once, on the search's best checkpoint, after the final pick; ``status`` and
``report`` say so."""

from __future__ import annotations

import json

import pytest
from helpers import cli, planted_dev, rows_of, write_space

from search.results import load_results
from search.status import table

SCORES = ("overall", "sst_acc", "para_acc", "para_f1", "sts_pearson", "sts_spearman", "step", "training_iteration")


def evaluations(experiment) -> list[tuple]:
    """Each trial's sampled settings and its evaluations' scores, in a fixed order (trial ids are random)."""
    results = load_results(experiment)
    params = {t.trial_id: json.dumps(t.params, sort_keys=True) for t in results.trials}
    return sorted((params[tid], json.dumps([{k: r.get(k) for k in SCORES} for r in rows]))
                  for tid, rows in rows_of(experiment).items())  # fmt: skip


@pytest.mark.slow
@pytest.mark.extended
def test_labels_planted_in_the_report_half_change_no_choice_of_a_search(data_dir, token_cache, tmp_path):
    """Two searches that differ only in the report half's dev labels (turned around in the second):
    the same trials, the same evaluations, the same final pick; only the report half's scores differ."""
    runs = {}
    for half in ("none", "report"):
        folder = planted_dev(data_dir, tmp_path / f"data-{half}", half)
        (tmp_path / half).mkdir()
        # one trial at a time: the sampler's proposals do not depend on which trial finishes first
        space = write_space(tmp_path / half, folder, token_cache, num_samples=2, max_concurrent=1)
        out = cli(str(space), "--json", "--set", "data.dev_holdout=0.5")
        assert out.returncode == 0, out.stderr[-4000:]
        runs[half] = (json.loads(out.stdout), tmp_path / half / "results" / "e2e")
    (base, base_dir), (planted, planted_dir) = runs["none"], runs["report"]
    # the same computation on the same rows: exactly equal
    assert evaluations(planted_dir) == evaluations(base_dir)
    assert [(f["selection"], f["full_dev"]) for f in planted["finalists"]] == [
        (f["selection"], f["full_dev"]) for f in base["finalists"]
    ]
    assert planted["best"]["params"] == base["best"]["params"]
    half, other = planted["report_half"], base["report_half"]
    assert half["trial_id"] == planted["best"]["trial_id"] and half["dev_holdout"] == 0.5
    assert half["report"] != other["report"] and half["report_examples"] == other["report_examples"]
    # status and report name the report half and its score
    legend = table(load_results(planted_dir)).attrs["legend"]
    assert f"report half: overall {half['report']['overall']:.4f} for trial {half['trial_id']}" in legend
    page = cli("report", str(planted_dir), "--out", str(tmp_path / "page"))
    assert page.returncode == 0, page.stderr[-2000:]
    html = next((tmp_path / "page").glob("*.html")).read_text()
    assert "report half: overall" in html
