"""Quality smoke: train configs/example.yaml (all-MiniLM-L6-v2, sized for a 2-core CPU) and compare
its full-dev scores with constant-prediction baselines computed from the same data.

Baselines: SST and Quora predict their training set's most frequent label; a constant STS score
has no correlation with the gold scores (Pearson r taken as 0, as in the overall score).
all-MiniLM-L6-v2 was trained on sentence pairs that include Quora duplicates: its Quora score is
optimistic next to an encoder that never saw them.

    MTBERT_DATA=../shared/data python benchmarks/quality_smoke.py [--config C] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from mtbert.config import parse_set
from mtbert.validation import load_config
from mtbert.data.course import read_task, resolve_data_dir

ROOT = Path(__file__).resolve().parents[1]


def baselines(data_dir: Path) -> dict[str, float]:
    out = {}
    for task, key in (("sst", "sst_acc"), ("quora", "para_acc")):
        majority = Counter(ex.label for ex in read_task(data_dir, task, "train").examples).most_common(1)[0][0]
        dev = read_task(data_dir, task, "dev").examples
        out[key] = sum(ex.label == majority for ex in dev) / len(dev)
    out["sts_pearson"] = 0.0
    out["overall"] = (out["sst_acc"] + out["para_acc"] + 0.5) / 3
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "example.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    config = load_config(args.config, parse_set(args.overrides))
    base = baselines(resolve_data_dir(config.data.dir))
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "mtbert.cli", args.config, "--json", "--no-progress"]
    for item in args.overrides:
        cmd += ["--set", item]
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        sys.exit(f"mtbert-train failed ({run.returncode}):\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout)
    report = {
        "scores": {k: round(result[k], 4) for k in base},
        "constant_baselines": {k: round(v, 4) for k, v in base.items()},
        "margins": {k: round(result[k] - v, 4) for k, v in base.items()},
        "beats_every_baseline": all(result[k] > v for k, v in base.items()),
        "wall_s": round(wall, 1),
        "steps": result["steps"],
        "train_samples_per_s": result["train_samples_per_s"],
        "encoder": config.model.encoder,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
