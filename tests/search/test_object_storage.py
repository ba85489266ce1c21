"""Searches kept on object storage: ``tune.storage_path: s3://...`` against a real S3 server on
127.0.0.1 (moto's standalone server, ``s3_server``), through pyarrow's S3 filesystem as Ray Tune
uses it, with no mock of any client.

Checked: the working copy's pull and push (``search.storage``); bad storage refused before any
work; on a ``ray.cluster_utils.Cluster`` (a head with no CPUs, two 1-CPU workers), a local storage
path refused before the search starts, and one search on ``s3://`` whose trials run on the workers,
killed with SIGKILL and resumed, then ``status``, ``export``, ``report``, ``ensemble`` and ``sync`` on
the URI, with nothing written to a local ``s3:`` folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import helpers
import pyarrow.fs
import pytest
from helpers import Search, cli, write_space

from search import storage
from search.errors import SearchError

BUCKET = "mtbert"


def s3(endpoint: str) -> pyarrow.fs.S3FileSystem:
    return pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http")


def stored(endpoint: str, prefix: str) -> dict[str, int]:
    """The objects under ``BUCKET/prefix``: relative path -> size."""
    fs = s3(endpoint)
    root = f"{BUCKET}/{prefix}"
    if fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
        return {}
    found = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    return {f.path[len(root) + 1 :]: f.size for f in found if f.type == pyarrow.fs.FileType.File}


def no_local_uri_folder(*roots: Path) -> None:
    """No folder named like a URI ("s3:") anywhere under ``roots``: a URI never became a local path."""
    for root in roots:
        bad = [p for p in root.rglob("s3:*")]
        assert not bad, bad


# ---- the working copy ------------------------------------------------------------------------------


def test_a_working_copy_pulls_and_pushes_what_it_should(s3_server, tmp_path, monkeypatch):
    uri = f"s3://{BUCKET}/unit/one"
    fs = s3(s3_server)
    for relative, data in {"search.json": b"{}", "trial_a/result.json": b"1\n",
                           "trial_a/checkpoint_000001/model.safetensors": b"weights"}.items():  # fmt: skip
        with fs.open_output_stream(f"{BUCKET}/unit/one/{relative}") as out:
            out.write(data)
    folder = storage.search_folder(uri)
    assert storage.remote_of(folder) == uri and folder.is_relative_to(Path(os.environ[storage.CACHE_ENV]))
    assert (folder / "search.json").read_bytes() == b"{}" and (folder / "trial_a" / "result.json").is_file()
    checkpoint = folder / "trial_a" / "checkpoint_000001"
    assert not checkpoint.exists() and storage.present(checkpoint)  # not pulled, but there
    assert not storage.present(folder / "trial_a" / "checkpoint_000009")
    assert (storage.fetch(checkpoint) / "model.safetensors").read_bytes() == b"weights"

    # what the search writes here goes up; what it wrote since the last pull is not overwritten by one
    (folder / "summary.json").write_text('{"best": 1}')
    storage.push(folder)
    assert stored(s3_server, "unit/one")["summary.json"] == len('{"best": 1}')
    assert "search.lock" not in stored(s3_server, "unit/one") and storage.MARKER not in stored(s3_server, "unit/one")
    time.sleep(1.1)  # a later modification time than the stored one
    (folder / "search.json").write_text('{"here": 1}')
    storage.pull(folder)
    assert (folder / "search.json").read_text() == '{"here": 1}'
    # a file Tune wrote there since is pulled over the older one here
    with fs.open_output_stream(f"{BUCKET}/unit/one/trial_a/result.json") as out:
        out.write(b"1\n2\n")
    storage.pull(folder)
    assert (folder / "trial_a" / "result.json").read_bytes() == b"1\n2\n"
    no_local_uri_folder(tmp_path, Path.cwd())


def test_storage_that_holds_nothing_or_cannot_be_reached_is_a_clear_error(s3_server, monkeypatch):
    with pytest.raises(SearchError, match=r"s3://mtbert/nothing/here holds no search"):
        storage.search_folder(f"s3://{BUCKET}/nothing/here")
    with pytest.raises(SearchError, match=r"tune.storage_path: s3://no-such-bucket/x cannot be written .*bucket exists"):
        storage.check_writable("s3://no-such-bucket/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    storage.check_writable(f"s3://{BUCKET}/x")  # moto takes any key: the write itself is what is checked
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(SearchError, match=r"tune.storage_path: s3://mtbert/x cannot be written"):
        storage.check_writable(f"s3://{BUCKET}/x")


def test_a_local_storage_path_on_a_cluster_must_be_shared(tmp_path):
    storage.check_for_cluster(str(tmp_path), 1)  # one node: any folder
    storage.check_for_cluster("s3://bucket/prefix", 3)
    storage.check_for_cluster(str(tmp_path), 3, declared_shared=True)
    with pytest.raises(SearchError) as e:
        storage.check_for_cluster(str(tmp_path), 3)
    said = str(e.value)
    assert f"tune.storage_path {tmp_path} is a folder on this machine" in said and "3 nodes" in said
    assert "s3://bucket/prefix" in said and "NFS, EFS" in said and "tune.storage_shared: true" in said


def test_mounts_are_told_apart(tmp_path, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\nfs-1.efs:/ /mnt/shared nfs4 rw 0 0\ns3fs /mnt/bucket fuse.s3fs rw 0 0\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(mounts) if str(self) == "/proc/mounts"
                        else real(self, *a, **k))  # fmt: skip
    assert storage.is_shared_mount("/mnt/shared/results/x") and storage.is_shared_mount("/mnt/bucket")
    assert not storage.is_shared_mount("/mnt/sharedness") and not storage.is_shared_mount("/home/me")


def test_a_search_refuses_storage_it_cannot_write_before_any_work(s3_server, data_dir, token_cache, tmp_path):
    space = write_space(tmp_path, data_dir, token_cache, "nobucket", storage="s3://no-such-bucket/searches")
    out = cli(str(space), cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "tune.storage_path: s3://no-such-bucket/searches cannot be written" in out.stderr
    assert "Ray" not in out.stdout  # nothing started
    wrong = write_space(tmp_path, data_dir, token_cache, "ftp", storage="ftp://host/searches")
    out = cli(str(wrong), cwd=tmp_path, timeout=300)
    assert out.returncode == 2 and "tune.storage_path: storage_path is 'ftp://host/searches'" in out.stderr
    no_local_uri_folder(tmp_path)


# ---- a search on s3:// on a multi-node cluster (ray.cluster_utils.Cluster) --------------------------


@pytest.fixture(scope="module")
def s3_cluster(s3_server):
    """A head with no CPUs and two worker nodes of one CPU each, started once the S3 server's
    address and credentials are in the environment the nodes inherit."""
    c = helpers.start_cluster()
    try:
        yield c
    finally:
        c.shutdown()


@pytest.mark.slow
def test_on_a_cluster_a_local_storage_path_is_refused_before_the_search_starts(
    s3_cluster, data_dir, token_cache, tmp_path
):
    local = write_space(tmp_path, data_dir, token_cache, "local", final_eval="none", grad="")
    out = cli(str(local), "--address", s3_cluster.address, cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    said = out.stderr
    assert f"tune.storage_path {tmp_path / 'results'} is a folder on this machine" in said and "3 nodes" in said
    assert "s3://bucket/prefix" in said and "NFS, EFS" in said
    assert not (tmp_path / "results" / "local" / "search.json").exists()  # refused before the search started


@pytest.fixture(scope="module")
def s3_search(s3_cluster, s3_server, data_dir, token_cache, tmp_path_factory):
    """A search on ``s3://mtbert/searches/remote`` on the cluster, SIGKILLed once a trial has a
    checkpoint on the storage that Tune's saved state names, then resumed to its end through the URI."""
    tmp = tmp_path_factory.mktemp("s3-search")
    uri = f"s3://{BUCKET}/searches/remote"
    space = write_space(tmp, data_dir, token_cache, "remote", storage=f"s3://{BUCKET}/searches", steps=24,
                        num_samples=4, grace=2, final_eval="best")  # fmt: skip
    space.write_text(space.read_text() + "  trackers: [tensorboard, mlflow]\n")  # MLflow's store in the search folder

    def checkpointed() -> bool:
        objects = stored(s3_server, "searches/remote")
        states = [k for k in objects if k.startswith("experiment_state-")]
        return bool(states) and any("/checkpoint_000002/" in k for k in objects)

    driver = Search(tmp, str(space), "--json", "--address", s3_cluster.address)
    try:
        driver.wait_for(checkpointed, timeout=600, every=0.5)
    finally:
        driver.kill()
    before = stored(s3_server, "searches/remote")
    out = cli("resume", uri, "--json", "--address", s3_cluster.address, cwd=tmp, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return {"uri": uri, "tmp": tmp, "before": before, "summary": json.loads(out.stdout), "stderr": out.stderr,
            "killed_stderr": driver.err.read_text()}  # fmt: skip


@pytest.mark.slow
def test_the_search_and_its_resume_keep_everything_on_the_storage(s3_search, s3_server, s3_cluster):
    objects = stored(s3_server, "searches/remote")
    # what was stored at the kill is still there; the search's own files too
    assert {"space.yaml", "search.json", "study.db", "summary.json", "tuner.pkl", "trackers.json", "mlflow.db"} <= set(
        objects)  # fmt: skip
    # the search's 4 trials (a trial the kill caught before Tune saved it may leave a folder too)
    status = cli("status", s3_search["uri"], "--format", "csv", cwd=s3_search["tmp"])
    trials = {f"trial_{line.split(',')[0]}" for line in status.stdout.splitlines()[1:] if line.strip()}
    assert len(trials) == 4 == s3_search["summary"]["trials"]
    folder = storage.working_copy(s3_search["uri"])
    nodes = set()
    for trial in trials:  # each trial's results and checkpoints went to the storage from its worker node
        assert f"{trial}/result.json" in objects and any(k.startswith(f"{trial}/events.out.tfevents") for k in objects)
        assert any(k.startswith(f"{trial}/checkpoint_") and k.endswith("heads.safetensors") for k in objects)
        nodes |= {json.loads(line)["node_id"] for line in (folder / trial / "result.json").read_text().splitlines()}
    assert nodes == {n.node_id for n in s3_cluster.worker_nodes}  # both workers, never the head

    # MLflow (tune.trackers), read back through its own client from the store the search kept: one
    # parent run across the kill, one child per trial with every evaluation at its global step
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("remote").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # a child per trial (and one for a trial the kill caught before Tune saved it, if it logged)
    assert {f"trial_{c.data.tags['mtbert.trial_id']}" for c in children} >= trials
    for c in [c for c in children if f"trial_{c.data.tags['mtbert.trial_id']}" in trials]:
        rows = [json.loads(line) for line in (folder / f"trial_{c.data.tags['mtbert.trial_id']}" / "result.json")
                .read_text().splitlines()]  # fmt: skip
        # (a trial that went on from a checkpoint logs the steps after it again: compared as sets)
        assert {m.step for m in client.get_metric_history(c.info.run_id, "dev/overall")} == {r["step"] for r in rows}
    assert parents[0].data.tags["best_checkpoint"] == s3_search["summary"]["best"]["checkpoint"]
    assert s3_search["summary"]["best"]["checkpoint"].startswith(os.environ[storage.CACHE_ENV])
    assert "resume s3://mtbert/searches/remote" in s3_search["killed_stderr"] or "watch it: mtbert-search sync" in (
        s3_search["killed_stderr"])  # fmt: skip
    no_local_uri_folder(s3_search["tmp"], Path.cwd())


@pytest.mark.slow
def test_status_export_report_ensemble_and_sync_read_the_uri(s3_search, s3_server, tmp_path):
    uri, tmp = s3_search["uri"], s3_search["tmp"]
    status = cli("status", uri, "--format", "csv", cwd=tmp)
    assert status.returncode == 0, status.stderr[-2000:]
    assert len([line for line in status.stdout.splitlines()[1:] if line.strip()]) == 4

    exported = cli("export", uri, "--top-k", "2", "--out", str(tmp_path / "best"), cwd=tmp)
    assert exported.returncode == 0, exported.stderr[-2000:]
    for rank in ("rank-1", "rank-2"):
        assert (tmp_path / "best" / rank / "encoder" / "model.safetensors").stat().st_size > 0
        assert (tmp_path / "best" / rank / "heads.safetensors").stat().st_size > 0
    best = json.loads((tmp_path / "best" / "rank-1" / "trial.json").read_text())
    assert best["trial_id"] == s3_search["summary"]["best"]["trial_id"]

    report = cli("report", uri, "--out", str(tmp_path / "report"), cwd=tmp)
    assert report.returncode == 0, report.stderr[-2000:]
    assert s3_search["summary"]["best"]["trial_id"] in (tmp_path / "report" / "index.html").read_text()

    ensemble = cli("ensemble", uri, "--top-k", "2", "--out", str(tmp_path / "ensemble"), "--json", cwd=tmp)
    assert ensemble.returncode == 0, ensemble.stderr[-2000:]
    assert json.loads(ensemble.stdout)["members"]

    synced = cli("sync", uri, cwd=tmp)
    assert synced.returncode == 0, synced.stderr[-2000:]
    folder = Path(synced.stdout.strip())
    assert storage.remote_of(folder) == uri and list(folder.glob("trial_*/events.out.tfevents*"))
    assert f"tensorboard --logdir {folder}" in synced.stderr
    no_local_uri_folder(tmp, tmp_path, Path.cwd())
