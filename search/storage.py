"""Where a search's folder lives: a local or mounted folder, or a URI that pyarrow's filesystems
open (``s3://bucket/prefix``, ``gs://...``; an S3-compatible server such as MinIO through
``AWS_ENDPOINT_URL`` or ``?endpoint_override=host:port&scheme=http`` in the URI). Every
``pyarrow.fs`` call of the project is here.

With a URI, Ray Tune writes the trials' results and checkpoints and its own state straight to the
storage, from whichever node runs them. The commands work on a **working copy** of the search
folder on this machine (``working_copy``): ``pull`` brings the storage's files down (checkpoints
only when asked: ``fetch`` brings one when a command needs its weights), ``push`` sends the files
the search writes itself (its launch record, summary, study database, ...) up. A working copy knows
its URI (``MARKER``), so ``tune_path`` gives Ray the storage and every other reader a local folder.

The working copies are kept under ``$MTBERT_SEARCH_CACHE`` (default ``~/.cache/mtbert-search``),
named after the URI: ``s3/bucket/prefix/<name>``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from search.errors import SearchError

MARKER = ".mtbert-remote.json"  # in a working copy: {"uri": <the search folder's URI>}
CACHE_ENV = "MTBERT_SEARCH_CACHE"
# folders of checkpoints (Tune's checkpoint_<n>/ and the kept copies of search.engine.retention)
CHECKPOINT_PREFIXES = ("checkpoint_", ".kept-checkpoint_")
# files a working copy holds that are not the search's: never pushed
LOCAL_ONLY = (MARKER, "search.lock")
# the schemes of pyarrow's filesystems (pyarrow.fs.FileSystem.from_uri)
URI_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
HOW = ("a local folder, a shared mount (NFS, EFS), or a URI pyarrow opens: s3://bucket/prefix, gs://bucket/prefix "
       "(an S3-compatible server through AWS_ENDPOINT_URL)")  # fmt: skip


def is_uri(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URI (``s3://...``) rather than a local path (``file://`` is local)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str) -> str:
    """A ``file://`` URI as its path; anything else as it is."""
    return urlsplit(path).path if path.startswith("file://") else path


def join(uri: str, name: str) -> str:
    """``uri`` with ``name`` appended to its path (its query, such as ``?endpoint_override=``, kept)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


def parent_and_name(uri: str) -> tuple[str, str]:
    """``s3://b/p/name?q`` as (``s3://b/p?q``, ``name``)."""
    parts = urlsplit(uri)
    head, _, name = parts.path.rstrip("/").rpartition("/")
    return urlunsplit(parts._replace(path=head)), name


def shown(uri: str) -> str:
    """``uri`` without its query, whose options may hold secrets."""
    return urlunsplit(urlsplit(uri)._replace(query=""))


def open_uri(uri: str, key: str = "tune.storage_path") -> tuple[Any, str]:
    """pyarrow's filesystem of ``uri`` and the path on it; ``SearchError`` naming ``key`` when pyarrow
    cannot open it (an unknown scheme, a malformed option)."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (ValueError, OSError, TypeError) as e:
        raise SearchError(f"{key}: {shown(uri)}: pyarrow cannot open it ({str(e).splitlines()[0]}); "
                          f"allowed: {HOW}") from None  # fmt: skip


def folder_at(storage_path: str, name: str) -> Path:
    """The search folder ``name`` under ``tune.storage_path``: a local folder, or the working copy of
    a URI's."""
    if is_uri(storage_path):
        return working_copy(join(storage_path, name))
    return Path(local_path(storage_path)) / name


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mtbert-search").expanduser().resolve()


def working_copy(uri: str) -> Path:
    """The local working copy of the search folder at ``uri`` (made, with its ``MARKER``, if new)."""
    parts = urlsplit(uri)
    folder = cache_root().joinpath(
        parts.scheme, parts.netloc, *[p for p in parts.path.split("/") if p not in ("", ".", "..")]
    )
    marker = folder / MARKER
    if not marker.is_file() or remote_of(folder) != uri:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"uri": uri}))
        except OSError as e:
            raise SearchError(f"cannot write the working copy {folder} of {shown(uri)} (${CACHE_ENV} sets where "
                              f"they are kept): {e.strerror or e}") from None  # fmt: skip
    return folder


def remote_of(folder: str | os.PathLike) -> str | None:
    """The URI a working copy stands for; None for any other folder."""
    try:
        return json.loads((Path(folder) / MARKER).read_text())["uri"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def tune_path(folder: str | os.PathLike) -> str:
    """The search folder as Ray Tune reads and writes it: a working copy's URI, else the folder."""
    return remote_of(folder) or str(folder)


def search_folder(arg: str, checkpoints: bool = False) -> Path:
    """A command's search folder argument as a local folder: a path as it is, a URI as its working
    copy, pulled from the storage first (with every checkpoint if ``checkpoints``)."""
    if not is_uri(arg):
        return Path(local_path(arg)).expanduser().resolve()
    folder = working_copy(arg)
    pull(folder, checkpoints=checkpoints)
    return folder


def _is_checkpoint(relative: str) -> bool:
    return any(part.startswith(CHECKPOINT_PREFIXES) for part in relative.split("/"))


def _listing(fs: Any, root: str) -> dict[str, Any]:
    """The files under ``root`` on ``fs``, by their path relative to it."""
    import pyarrow.fs

    info = fs.get_file_info(root)
    if info.type == pyarrow.fs.FileType.NotFound:
        return {}
    found = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    return {f.path[len(root) :].lstrip("/"): f for f in found if f.type == pyarrow.fs.FileType.File}


def _stored(uri: str) -> tuple[Any, str, dict[str, Any]]:
    """The filesystem and path of ``uri``, and the files stored under it (``_listing``)."""
    fs, root = open_uri(uri)
    try:
        return fs, root, _listing(fs, root)
    except OSError as e:
        raise _io_error(uri, "list the search folder", e) from None


def _io_error(uri: str, what: str, e: Exception) -> SearchError:
    return SearchError(f"{shown(uri)}: cannot {what} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                       "check the storage's address, the credentials (AWS_ACCESS_KEY_ID, an instance profile, ...) "
                       "and that the bucket exists")  # fmt: skip


def pull(folder: Path, checkpoints: bool | Iterable[str] = False) -> None:
    """Bring a working copy up to date with its storage: every file that is newer there, checkpoints
    only if ``checkpoints`` (True: all; else the relative folders named). A file the search wrote
    here after its last push is kept. ``SearchError`` when the storage cannot be read or holds nothing."""
    uri = remote_of(folder)
    if uri is None:
        return
    fs, _, files = _stored(uri)
    if not files:
        raise SearchError(f"{shown(uri)} holds no search (nothing is stored there); give a search folder, "
                          "<tune.storage_path>/<tune.name>")  # fmt: skip
    wanted = None if checkpoints is True or checkpoints is False else tuple(f"{c.rstrip('/')}/" for c in checkpoints)
    for relative, info in files.items():
        if _is_checkpoint(relative) and not (checkpoints is True or (wanted and relative.startswith(wanted))):
            continue
        _download(fs, info, folder / relative, uri)


def _download(fs: Any, info: Any, dest: Path, uri: str) -> None:
    remote_time = info.mtime.timestamp() if info.mtime is not None else None
    if dest.is_file() and remote_time is not None and dest.stat().st_mtime >= remote_time:
        return  # as new here (pulled before, or written here since)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with fs.open_input_stream(info.path) as src, part.open("wb") as out:
            while chunk := src.read(1 << 22):
                out.write(chunk)
        os.replace(part, dest)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise _io_error(uri, f"download {info.path}", e) from None
    if remote_time is not None:
        os.utime(dest, (remote_time, remote_time))  # as old as the stored file: a push leaves it alone


def fetch(path: str | os.PathLike) -> Path:
    """A checkpoint folder of a working copy, downloaded if it is not here yet; any other path as it is."""
    path = Path(path)
    for folder in path.parents:
        if (folder / MARKER).is_file():
            if not (path.is_dir() and any(path.iterdir())):
                pull(folder, checkpoints=[path.relative_to(folder).as_posix()])
            return path
    return path


def present(path: str | os.PathLike) -> bool:
    """Whether a folder is there: here, or on the storage for a folder of a working copy."""
    path = Path(path)
    if path.is_dir():
        return True
    for folder in path.parents:
        uri = remote_of(folder)
        if uri is not None:
            import pyarrow.fs

            fs, root = open_uri(uri)
            return (
                fs.get_file_info(f"{root}/{path.relative_to(folder).as_posix()}").type == pyarrow.fs.FileType.Directory
            )
    return False


def push(folder: Path) -> None:
    """Send the files the search wrote in its working copy (all but checkpoints) that are newer than
    the storage's to the storage. Nothing for a local search folder."""
    uri = remote_of(folder)
    if uri is None:
        return
    fs, root, stored = _stored(uri)
    try:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder).as_posix()
            if relative in LOCAL_ONLY or _is_checkpoint(relative) or path.name.endswith(".part"):
                continue
            there = stored.get(relative)
            if there is not None and there.mtime is not None and path.stat().st_mtime <= there.mtime.timestamp():
                continue
            with fs.open_output_stream(f"{root}/{relative}") as out:
                out.write(path.read_bytes())
    except OSError as e:
        raise _io_error(uri, "write the search folder", e) from None


def holds_files(uri: str) -> bool:
    """Whether anything is stored under ``uri``."""
    return bool(_stored(uri)[2])


def check_writable(uri: str, key: str = "tune.storage_path") -> None:
    """Write, read back and delete a small file under ``uri``: credentials, the bucket and the network
    found wanting before any trial runs, not at a trial's first checkpoint."""
    fs, root = open_uri(uri, key)
    probe = f"{root.rstrip('/')}/.mtbert-probe-{uuid.uuid4().hex[:12]}"
    try:
        with fs.open_output_stream(probe) as out:
            out.write(b"mtbert-search")
        with fs.open_input_stream(probe) as src:
            if src.read() != b"mtbert-search":
                raise OSError("what was read back is not what was written")
        fs.delete_file(probe)
    except OSError as e:
        raise SearchError(f"{key}: {shown(uri)} cannot be written ({str(e).splitlines()[0]}); check the storage's "
                          "address (AWS_ENDPOINT_URL for an S3-compatible server), the credentials "
                          "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the node's instance profile) and that "
                          "the bucket exists") from None  # fmt: skip


# ---- checkpoints on the storage (search.engine.retention) ---------------------------------------------


def copy_folder(fs: Any, src: str, dest: str) -> None:
    """``src`` copied to ``dest`` on ``fs`` (on S3, a copy made by the server)."""
    import pyarrow.fs

    fs.create_dir(dest, recursive=True)  # a file system of folders needs it; on S3 it is a marker
    pyarrow.fs.copy_files(src, dest, source_filesystem=fs, destination_filesystem=fs)


def delete_folder(fs: Any, path: str) -> None:
    import pyarrow.fs

    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(path)


def folders(fs: Any, root: str) -> list[str]:
    """The names of the folders directly under ``root`` on ``fs``."""
    import pyarrow.fs

    if fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
        return []
    found = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=False))
    return [f.base_name for f in found if f.type == pyarrow.fs.FileType.Directory]


# ---- a storage path on a cluster ------------------------------------------------------------------------

# file system types of /proc/mounts that every node of a cluster can mount at one path
SHARED_TYPES = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "ceph", "glusterfs", "beegfs", "9p", "virtiofs")


def mount_type(path: str | os.PathLike) -> str | None:
    """The file system type of the mount that holds ``path`` (/proc/mounts), or None where unknown."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target, best = str(Path(path).resolve()), None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and (
            best is None or len(point) > len(best[0])
        ):
            best = (point, fields[2])
    return best[1] if best else None


def is_shared_mount(path: str | os.PathLike) -> bool:
    kind = mount_type(path)
    return kind is not None and (kind in SHARED_TYPES or kind.startswith("fuse."))


def check_for_cluster(storage_path: str, nodes: int, declared_shared: bool = False) -> None:
    """On a cluster of ``nodes`` nodes, a local ``tune.storage_path`` must be a shared mount (or
    declared one: ``tune.storage_shared``): Ray Tune syncs nothing between nodes, and a trial on
    another node fails at its first checkpoint."""
    if nodes <= 1 or declared_shared or is_uri(storage_path) or is_shared_mount(local_path(storage_path)):
        return
    raise SearchError(
        f"tune.storage_path {storage_path} is a folder on this machine ({mount_type(local_path(storage_path)) or 'local'} "
        f"file system), and the Ray cluster has {nodes} nodes: trials on the other nodes could not write their "
        "checkpoints there. Either give a URI every node can write, such as s3://bucket/prefix (--set "
        "tune.storage_path=s3://...), or a folder on a file system every node mounts at the same path (NFS, EFS; "
        "one the search does not recognise as shared is declared so with tune.storage_shared: true)"
    )
