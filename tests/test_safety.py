"""Safe defaults: a local Ray on the loopback only, TensorBoard on localhost, Ray's token
authentication never switched off, checkpoints never unpickled, YAML read with safe_load only."""

from __future__ import annotations

import ast
import importlib
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mtbert.config import ConfigError, RunConfig
from mtbert.model.multitask import build_model
from mtbert.model.pretrained import EncoderLoadError, load_encoder, load_encoder_dir
from mtbert.train.checkpoint import CheckpointError, load_checkpoint, read_state, save_checkpoint
from mtbert.validation import load_config

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "mtbert").rglob("*.py"), *(ROOT / "search").rglob("*.py")])
TEXTS = [*SOURCES, ROOT / "README.md", *sorted(ROOT.glob("cluster*.yaml")), *sorted((ROOT / ".ci").glob("*"))]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1", "localhost"}
READ_ONLY = "read only as safetensors, JSON and YAML"


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---- local Ray: loopback only, no dashboard, token authentication on --------------------------------


@pytest.fixture
def fake_ray(monkeypatch):
    """``ray.init`` recorded instead of run: its arguments and the environment it would start in."""
    import ray
    from ray._private import ray_constants

    calls = []

    def init(**kwargs):
        calls.append({
            "kwargs": kwargs, "auth_mode": os.environ.get("RAY_AUTH_MODE"),
            "single_machine_env": os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR),
            "cluster_constant": ray_constants.ENABLE_RAY_CLUSTER,
        })  # fmt: skip

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, raising=False)
    return calls


def test_connect_starts_local_ray_on_the_loopback_without_dashboard(fake_ray):
    from ray._private import ray_constants

    from search.engine.session import connect

    before = ray_constants.ENABLE_RAY_CLUSTER
    assert connect(None) is True
    (call,) = fake_ray
    assert call["kwargs"]["address"] == "local"
    assert call["kwargs"]["_node_ip_address"] == "127.0.0.1"
    assert call["kwargs"]["include_dashboard"] is False
    # Ray keeps a loopback node address only in its single-machine mode, on during ray.init ...
    assert call["single_machine_env"] == "0" and call["cluster_constant"] is False
    # ... and this process is as it was afterwards.
    assert ray_constants.ENABLE_RAY_CLUSTER == before
    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR not in os.environ


@pytest.mark.parametrize("address", [None, "127.0.0.1:6379"])
@pytest.mark.parametrize("mode", [None, "token"])
def test_connect_never_switches_token_auth_off(fake_ray, monkeypatch, address, mode):
    from search.engine.session import connect

    if mode is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
    connect(address)
    (call,) = fake_ray
    kwargs = call["kwargs"]
    assert call["auth_mode"] == mode  # left to Ray: token by default for a new local Ray
    assert "AUTH_MODE" not in (kwargs.get("_system_config") or {})
    env_vars = (kwargs.get("runtime_env") or {}).get("env_vars") or {}
    assert not [k for k in env_vars if k.startswith("RAY_AUTH")], env_vars
    assert os.environ.get("RAY_AUTH_MODE") == mode


def _listening(pids: set[int]) -> set[tuple[str, str, int]]:
    import psutil

    found = set()
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            found.add((psutil.Process(c.pid).name(), c.laddr.ip, c.laddr.port))
    return found


@pytest.mark.slow
def test_local_ray_listens_on_the_loopback_only(monkeypatch):
    """A real local Ray through ``connect``: every socket it listens on is a loopback one, no
    dashboard runs, and token authentication is on (Ray's default for a new local Ray)."""
    import psutil
    import ray
    from ray._raylet import AuthenticationMode, get_authentication_mode

    from search.engine.session import connect

    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert connect(None) is True
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        me = psutil.Process()
        tree = [me, *me.children(recursive=True)]
        sockets = _listening({p.pid for p in tree})
        assert {name for name, _, _ in sockets} >= {"gcs_server", "raylet"}, sockets
        assert {(name, ip, port) for name, ip, port in sockets if ip not in LOOPBACK} == set()
        # With include_dashboard=False Ray still starts its head process for usage statistics,
        # with that one module, no web frontend and no job API.
        commands = [p.cmdline() for p in tree if p.is_running()]
        heads = [c for c in commands if any(a.endswith("dashboard/dashboard.py") for a in c)]
        for command in heads:
            assert {"--disable-frontend", "--modules-to-load=UsageStatsHead", "--host=127.0.0.1"} <= set(command)
        assert get_authentication_mode() == AuthenticationMode.TOKEN
    finally:
        ray.shutdown()


AUTH_OFF = re.compile(r"RAY_AUTH_MODE['\"\]]*\s*[=:,]\s*['\"]?(?!token\b)([\w-]+)|['\"]AUTH_MODE['\"]\s*:")


def test_auth_off_pattern():
    for text in ('RAY_AUTH_MODE=disabled ray start', 'os.environ["RAY_AUTH_MODE"] = "disabled"',
                 '{"RAY_AUTH_MODE": "off"}', '_system_config={"AUTH_MODE": "disabled"}'):  # fmt: skip
        assert AUTH_OFF.search(text), text
    assert not AUTH_OFF.search("RAY_AUTH_MODE=token ray start --head")


def test_nothing_switches_token_auth_off():
    found = [f"{_rel(path)}: {m.group(0)}" for path in TEXTS if path.is_file()
             for m in AUTH_OFF.finditer(path.read_text(errors="replace"))]  # fmt: skip
    assert found == []


# ---- TensorBoard: localhost --------------------------------------------------------------------------


def _tensorboard_host(tmp_path, *flags: str) -> str:
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(argv=["tensorboard", "--logdir", str(tmp_path), *flags])
    board.flags.port = 0  # any free port
    server = program.WerkzeugServer(lambda environ, start_response: [], board.flags)
    try:
        return server.server_address[0]
    finally:
        server.server_close()


def test_tensorboard_listens_on_localhost_by_default(tmp_path):
    assert _tensorboard_host(tmp_path) in LOOPBACK
    assert _tensorboard_host(tmp_path, "--bind_all") not in LOOPBACK  # the flag this project never prints


BIND_ALL = re.compile(r"tensorboard\b.*(--bind_all|--host[= ]\s*['\"]?(0\.0\.0\.0|::|\[::\]))")


def test_no_tensorboard_command_binds_all_interfaces():
    assert BIND_ALL.search("tensorboard --logdir results --bind_all")
    assert BIND_ALL.search("tensorboard --logdir=x --host 0.0.0.0")
    commands = [(path, line) for path in TEXTS if path.is_file()
                for line in path.read_text(errors="replace").splitlines() if "tensorboard --logdir" in line]  # fmt: skip
    assert any(path.name == "cli.py" for path, _ in commands)  # the command the search prints
    assert [f"{_rel(path)}: {line.strip()}" for path, line in commands if BIND_ALL.search(line)] == []


# ---- checkpoints: never unpickled --------------------------------------------------------------------


class _Payload:
    """Unpickling this runs a command, as a hostile checkpoint would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def checkpoint(tmp_path):
    config = RunConfig().with_overrides({"model.encoder": "tiny", "heads.sst.hidden": [16]})
    encoder, tokenizer = load_encoder("tiny")
    model = build_model(config, encoder)
    return save_checkpoint(tmp_path / "ckpt", model, tokenizer, config, {"overall": 0.5}, {"step": 1})


def _torch_save(path: Path, marker: Path) -> None:
    torch.save({"w": torch.ones(2), "x": _Payload(marker)}, path)


def _pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"x": _Payload(marker)}, protocol=4))


PICKLED = {  # what to write, where, and whether the safetensors file it replaces goes
    "heads.pt next to the heads": ("heads.pt", _torch_save, None),
    "heads.pt instead of the heads": ("heads.pt", _torch_save, "heads.safetensors"),
    "pytorch_model.bin as the encoder": ("encoder/pytorch_model.bin", _torch_save, "encoder/model.safetensors"),
    "state.pkl in the state": ("state/state.pkl", _pickle, None),
    "heads.safetensors that is a torch.save archive": ("heads.safetensors", _torch_save, None),
    "heads.safetensors that is a pickle": ("heads.safetensors", _pickle, None),
    "model.safetensors that is a pickle": ("encoder/model.safetensors", _pickle, None),
    "metrics.json that is a pickle": ("metrics.json", _pickle, None),
}


@pytest.mark.parametrize("case", sorted(PICKLED))
def test_checkpoint_holding_a_pickle_is_refused(checkpoint, tmp_path, case, no_unpickling):
    name, write, replaced = PICKLED[case]
    marker = tmp_path / "unpickled"
    if replaced:
        (checkpoint / replaced).unlink()
    write(checkpoint / name, marker)
    with pytest.raises(CheckpointError, match=re.escape(str(checkpoint / name)) + r" .*" + READ_ONLY):
        load_checkpoint(checkpoint)
    if name.startswith("state/"):
        with pytest.raises(CheckpointError, match=re.escape(name.split("/")[-1])):
            read_state(checkpoint)
    assert not marker.exists()


def test_a_pickle_handed_in_directly_is_refused(tmp_path, checkpoint, no_unpickling):
    for path in (tmp_path / "model.pt", tmp_path / "weights.safetensors"):
        _torch_save(path, tmp_path / "unpickled")
        with pytest.raises(CheckpointError, match=re.escape(str(path)) + r" .*" + READ_ONLY):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"heads\.safetensors is a file; a checkpoint is a directory"):
        load_checkpoint(checkpoint / "heads.safetensors")
    assert not (tmp_path / "unpickled").exists()


def test_a_good_checkpoint_loads_without_unpickling(checkpoint, no_unpickling):
    metrics = load_checkpoint(checkpoint).metrics
    assert metrics == {"overall": 0.5} and read_state(checkpoint) == {"step": 1}


def test_encoder_weights_that_would_run_code_are_refused(checkpoint, tmp_path):
    """``mtbert.model.pretrained`` reads a ``pytorch_model.bin`` with ``weights_only=True``: tensors only,
    so a file that names a function to call fails to load, and the function never runs."""
    folder = tmp_path / "encoder"
    folder.mkdir()
    shutil.copy(checkpoint / "encoder" / "config.json", folder)
    marker = tmp_path / "unpickled"
    _torch_save(folder / "pytorch_model.bin", marker)
    with pytest.raises(EncoderLoadError, match=r"pytorch_model\.bin could not be read"):
        load_encoder_dir(folder)
    assert not marker.exists()


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def _is_constant(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cloudpickle.load", "cloudpickle.loads",
              "dill.load", "dill.loads", "joblib.load", "marshal.load", "marshal.loads", "shelve.open"}  # fmt: skip


def unpickling_calls(source: str) -> list[str]:
    """Calls in ``source`` that can unpickle: the pickle family, ``torch.load`` without
    ``weights_only=True``, ``numpy.load`` with ``allow_pickle=True``, names imported from pickle."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "cloudpickle", "dill", "joblib"):
            found.append(f"line {node.lineno}: from {node.module} import ...")
        if not isinstance(node, ast.Call):
            continue
        name, keywords = _dotted(node.func), {k.arg: k.value for k in node.keywords}
        tensors_only = _is_constant(keywords.get("weights_only"), True)
        may_unpickle = name in ("np.load", "numpy.load") and _is_constant(keywords.get("allow_pickle"), True)
        if name in UNPICKLERS or (name.endswith("torch.load") and not tensors_only) or may_unpickle:
            found.append(f"line {node.lineno}: {name}")
    return found


def test_unpickling_scan():
    assert unpickling_calls("import torch\ntorch.load(f)") == ["line 2: torch.load"]
    assert unpickling_calls("torch.load(f, weights_only=False)") and unpickling_calls("pickle.loads(b)")
    assert unpickling_calls("np.load(f, allow_pickle=True)") and unpickling_calls("from pickle import loads")
    assert unpickling_calls("torch.load(f, map_location='cpu', weights_only=True)\nnp.load(f)") == []


def test_no_source_unpickles():
    found = [f"{_rel(path)} {call}" for path in SOURCES for call in unpickling_calls(path.read_text())]
    assert found == []


# ---- YAML: safe_load only ----------------------------------------------------------------------------


UNSAFE_YAML = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader", "FullLoader",
               "UnsafeLoader", "CLoader", "CFullLoader", "CUnsafeLoader"}  # fmt: skip


def _safe_loader(loader: type) -> bool:
    """A SafeLoader (or subclass) that was taught no ``!!python/`` tag."""
    tags = [*loader.yaml_constructors, *getattr(loader, "yaml_multi_constructors", {})]
    return issubclass(loader, yaml.SafeLoader) and not [t for t in tags if t and "python/" in t]


def unsafe_yaml(source: str, module: object | None = None) -> list[str]:
    """References in ``source`` to PyYAML's unsafe loaders, and ``yaml.load`` calls whose Loader is
    not a SafeLoader (a name is looked up in ``module``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _dotted(node.value) == "yaml" and node.attr in UNSAFE_YAML:
            found.append(f"line {node.lineno}: yaml.{node.attr}")
        if isinstance(node, ast.Call) and _dotted(node.func) in ("yaml.load", "yaml.load_all"):
            loader = {k.arg: k.value for k in node.keywords}.get("Loader")
            if loader is None and len(node.args) > 1:
                loader = node.args[1]
            name = _dotted(loader) if loader is not None else "?"
            if name.startswith("yaml."):
                resolved = getattr(yaml, name[5:], None)
            else:
                resolved = getattr(module, name, None) if module is not None else None
            if not (isinstance(resolved, type) and _safe_loader(resolved)):
                found.append(f"line {node.lineno}: {_dotted(node.func)} with Loader={name}")
    return found


def test_unsafe_yaml_scan():
    assert unsafe_yaml("yaml.load(text)") and unsafe_yaml("yaml.full_load(text)")
    assert unsafe_yaml("yaml.load(text, Loader=yaml.Loader)") and unsafe_yaml("yaml.unsafe_load(text)")

    class Taught(yaml.SafeLoader):
        pass

    Taught.add_multi_constructor("tag:yaml.org,2002:python/object", lambda *a: None)
    assert unsafe_yaml("yaml.load(text, Loader=Taught)", module=type("M", (), {"Taught": Taught}))
    assert unsafe_yaml("yaml.safe_load(text)\nyaml.load(text, Loader=yaml.SafeLoader)") == []


def test_yaml_is_read_with_safe_loaders_only():
    found = []
    for path in SOURCES:
        source = path.read_text()
        if "yaml" not in source:
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        found += [f"{_rel(path)} {problem}" for problem in unsafe_yaml(source, module)]
    assert found == []


PYTHON_TAG = "lr: !!python/object/apply:os.system [\"touch {marker}\"]"


def test_config_with_a_python_tag_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  " + PYTHON_TAG.format(marker=marker) + "\n")
    with pytest.raises(ConfigError, match=r"tag '!!python/object/apply:os\.system' at line 2, column 7 is refused"):
        load_config(path)
    assert not marker.exists()


def test_space_with_a_python_tag_is_refused(tmp_path):
    from search.space.file import SpaceError, load_space

    marker = tmp_path / "ran"
    path = tmp_path / "space.yaml"
    path.write_text("model:\n  encoder: tiny\nsearch:\n  optim.lr: {uniform: [1.0e-5, 1.0e-4]}\n"
                    "optim:\n  " + PYTHON_TAG.format(marker=marker) + "\n")  # fmt: skip
    with pytest.raises(SpaceError, match=r"space\.yaml: yaml: tag '!!python/object/apply:os\.system' at line 6"):
        load_space(path)
    assert not marker.exists()
