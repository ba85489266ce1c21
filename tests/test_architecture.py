"""The shape of the code, read from the compiled modules themselves (not from their text):

- no import cycle inside ``mtbert`` or ``search``, counting every import statement, also those inside
  functions (a lazy import that hides a cycle is still a cycle);
- ``mtbert`` never imports ``search``, ``ray`` or ``optuna``;
- only ``search.engine`` imports ``ray`` or ``optuna``: checked in the bytecode of every module, and by
  importing every module of both packages in a fresh interpreter where an import of ray or optuna
  from anywhere but ``search.engine`` raises.
"""

from __future__ import annotations

import dis
import importlib.util
import json
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mtbert", "search")
RAY_OPTUNA = ("ray", "optuna")
ENGINE = "search.engine"


def project_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        path = [str(REPO / package)]
        names += [m.name for m in pkgutil.walk_packages(path, prefix=f"{package}.")]
    return sorted(names)


MODULES = project_modules()


def code_of(module: str) -> types.CodeType:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.loader is not None, module
    return spec.loader.get_code(module)


def imported_names(module: str) -> set[str]:
    """Every module named by an import in ``module``'s code, nested functions and classes included:
    ``import a.b`` gives a.b; ``from a import b`` gives a.b when that is a module, else a."""
    is_package = Path(importlib.util.find_spec(module).origin).name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def walk(code: types.CodeType) -> None:
        instructions = list(dis.get_instructions(code))
        for i, ins in enumerate(instructions):
            if ins.opname != "IMPORT_NAME":
                continue
            level = instructions[i - 2].argval if i >= 2 and instructions[i - 2].opname == "LOAD_CONST" else 0
            name = ins.argval
            if level:
                base = package.rsplit(".", level - 1)[0] if level > 1 else package
                name = f"{base}.{name}" if name else base
            froms = []
            for nxt in instructions[i + 1:]:
                if nxt.opname == "IMPORT_FROM":
                    froms.append(nxt.argval)
                elif nxt.opname not in ("STORE_NAME", "STORE_FAST", "STORE_GLOBAL", "STORE_DEREF", "POP_TOP",
                                        "SWAP", "COPY"):
                    break
            if not froms:
                found.add(name)
            for attr in froms:
                sub = f"{name}.{attr}"
                found.add(sub if sub in MODULES else name)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                walk(const)

    walk(code_of(module))
    return found


GRAPH = {m: imported_names(m) for m in MODULES}


def top(name: str) -> str:
    return name.split(".")[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and modules importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_module_list_is_the_layout():
    # The checks below are only as good as this list: every package of the layout is walked.
    for name in ("mtbert.config", "mtbert.data", "mtbert.model", "mtbert.methods", "mtbert.train",
                 "search.space", "search.engine", "search.cli", "mtbert.cli"):
        assert name in MODULES


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package):
    graph = {m: {d for d in deps if top(d) == package} for m, deps in GRAPH.items() if top(m) == package}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_lazy_cycle():
    # The same finder on a graph with a cycle closed by a function-level import, as imported_names reports it.
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}, "p.e": {"p.e"}}
    assert sorted(cycles(graph)) == [["p.a", "p.b", "p.c"], ["p.e"]]


def test_imported_names_see_imports_inside_functions(tmp_path, monkeypatch):
    source = "import os\n\ndef f():\n    from mtbert.train import checkpoint\n    import ray.tune\n"
    (tmp_path / "probe_module.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"os", "mtbert.train.checkpoint", "ray.tune"} <= imported_names("probe_module")


def test_mtbert_never_imports_search_ray_or_optuna():
    offenders = {m: sorted(d for d in deps if top(d) in ("search", *RAY_OPTUNA))
                 for m, deps in GRAPH.items() if top(m) == "mtbert"}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_only_the_engine_imports_ray_or_optuna():
    offenders = {m: sorted(d for d in deps if top(d) in RAY_OPTUNA)
                 for m, deps in GRAPH.items() if not (m == ENGINE or m.startswith(ENGINE + "."))}
    assert {m: d for m, d in offenders.items() if d} == {}
    assert any(top(d) in RAY_OPTUNA for m, deps in GRAPH.items() if m.startswith(ENGINE) for d in deps)


# Run in a fresh interpreter: a finder placed first refuses ray/optuna unless the module executing the
# import statement is in search.engine (or inside ray/optuna themselves), then every module is imported.
GUARD = r"""
import importlib, json, sys

class Guard:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in ("ray", "optuna"):
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
            frame = frame.f_back
        caller = frame.f_globals.get("__name__", "") if frame is not None else ""
        if caller.split(".")[0] in ("ray", "optuna") or caller == "search.engine" or caller.startswith("search.engine."):
            return None
        raise ImportError(f"{caller} imports {name}")

sys.meta_path.insert(0, Guard())
errors = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except ImportError as e:
        errors[name] = str(e)
print(json.dumps({"errors": errors, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "optuna"))}))
"""


def run_guarded(modules: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", GUARD, json.dumps(modules)], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_everything_outside_the_engine_never_imports_ray_or_optuna():
    outside = [m for m in MODULES if not m.startswith(ENGINE)]
    result = run_guarded(outside)
    assert result["errors"] == {}


def test_the_guard_refuses_an_import_outside_the_engine(tmp_path):
    # Shows the guarded import can fail: a module outside search.engine that imports optuna is refused.
    probe = tmp_path / "probe_outside.py"
    probe.write_text("import optuna\n")
    code = GUARD.replace("sys.meta_path.insert", f"sys.path.insert(0, {str(tmp_path)!r}); sys.meta_path.insert")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(["probe_outside"])], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert json.loads(out.stdout.strip().splitlines()[-1])["errors"] == {"probe_outside": "probe_outside imports optuna"}
