"""The architecture's import rules, as checks that fail: read from the source (every ``import``, at
module level or inside a function), not from prose.

Written by hand over :mod:`ast` because import-linter's graph builder (grimp) walks one folder per
package, and ours maps ``export/``, ``client/`` and ``gateway/`` into the ``triton_inpaint`` namespace
from folders of their own (pyproject's package-dir), which it does not see.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folders and the package name each one is (pyproject.toml, [tool.setuptools.package-dir]).
PACKAGES = {
    "triton_inpaint": "triton_inpaint",
    "export": "triton_inpaint.export",
    "client": "triton_inpaint.client",
    "gateway": "triton_inpaint.gateway",
}
# Libraries that run networks or need a GPU stack: never loaded by what runs beside the product's
# callers (the client library, the gateway), which must install and start without them.
HEAVY = ("torch", "diffusers", "transformers", "onnxruntime", "onnx", "cv2", "tensorrt", "polygraphy")
# The library's tools (triton_inpaint/tools/) and its CLI: the only modules of the library that may reach
# its consumers (export, client, gateway).
TOOLS_PACKAGE = "triton_inpaint.tools"
ENTRY_POINTS = {"triton_inpaint.cli", "triton_inpaint.server.cli"}
CONSUMERS = ("triton_inpaint.export", "triton_inpaint.client", "triton_inpaint.gateway")
# The library's layers and the layers of ours each may import (lazily or not): the request contract at
# the bottom, masks and networks on it, the pipelines on those, the Triton adapters on top; the server
# process beside them, knowing only the contract. The client sees the contract; the gateway the
# contract, the client and the server's process helpers.
LAYERS = {
    "triton_inpaint.api": {"triton_inpaint.api"},
    "triton_inpaint.masks": {"triton_inpaint.api"},
    "triton_inpaint.networks": {"triton_inpaint.api"},
    "triton_inpaint.pipelines": {"triton_inpaint.api", "triton_inpaint.masks", "triton_inpaint.networks"},
    "triton_inpaint.triton": {
        "triton_inpaint.api",
        "triton_inpaint.masks",
        "triton_inpaint.networks",
        "triton_inpaint.pipelines",
    },
    "triton_inpaint.server": {"triton_inpaint.api"},
    "triton_inpaint.client": {"triton_inpaint.api"},
    "triton_inpaint.gateway": {"triton_inpaint.api", "triton_inpaint.client", "triton_inpaint.server"},
}
# Libraries a layer never imports, even inside a function: the contract is read by the client and the
# gateway; the masks run in the small pre/postprocess models, which load no network library.
FORBIDDEN = {
    "triton_inpaint.api": HEAVY,
    "triton_inpaint.masks": ("torch", "diffusers", "onnxruntime", "onnx", "tensorrt", "polygraphy"),
    "triton_inpaint.server": HEAVY,
}


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def imports() -> dict[str, dict[str, bool]]:
    """Module -> {imported module: whether at module level (loaded when the importer is)}."""
    graph: dict[str, dict[str, bool]] = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "web" in path.parts:
                continue
            name = _module_name(path)
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            found: dict[str, bool] = {}
            tree = ast.parse(path.read_text(), str(path))
            top_level = {id(node) for node in tree.body}
            guarded = {  # imports under `if TYPE_CHECKING:` never run
                id(inner)
                for node in tree.body
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for inner in ast.walk(node)
            }
            for node in ast.walk(tree):
                if id(node) in guarded:
                    continue
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                        base = f"{anchor}.{base}" if base else anchor
                    targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
                else:
                    continue
                for target in targets:
                    found[target] = found.get(target, False) or id(node) in top_level
            graph[name] = found
    return graph


def _ours(target: str) -> str | None:
    """The module of ours that importing ``target`` loads (a name imported from a module is that
    module), or None for another library's."""
    graph = imports()
    while target and target not in graph:
        target = target.rpartition(".")[0]
    return target or None


def _loaded_by(module: str) -> set[str]:
    """Every module (ours and other libraries' top-level names) that importing ``module`` loads."""
    seen, stack, external = set(), [module], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for parent in _parents(current):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            stack.append(parent)
        for target, top_level in imports()[current].items():
            if not top_level:
                continue
            mine = _ours(target)
            if mine is None:
                external.add(target.split(".")[0])
            else:
                stack.append(mine)
    return seen | external


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in imports()]


def _is_tool(module: str) -> bool:
    return module in ENTRY_POINTS or module == TOOLS_PACKAGE or module.startswith(TOOLS_PACKAGE + ".")


def test_the_graph_is_read():
    graph = imports()
    assert {
        "triton_inpaint.pipelines.sd_inpaint",
        "triton_inpaint.gateway.app",
        "triton_inpaint.client",
    } <= set(graph)
    assert graph["triton_inpaint.pipelines.flux_fill"]["triton_inpaint.pipelines.planning"] is True
    assert "torch" in _loaded_by("triton_inpaint.pipelines.sd_inpaint")  # the check can see a heavy import


@pytest.mark.parametrize("package", ["triton_inpaint.client", "triton_inpaint.gateway"])
def test_client_and_gateway_never_load_a_network_library(package):
    modules = [name for name in imports() if name == package or name.startswith(package + ".")]
    for module in modules:
        heavy = sorted(_loaded_by(module) & set(HEAVY))
        assert not heavy, f"importing {module} loads {heavy}"


def _layer(module: str) -> str | None:
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)


def _layer_imports(layer: str) -> list[tuple[str, str]]:
    """(module of ``layer``, imported target) for every import in the layer, lazy ones included."""
    return [
        (name, target) for name, targets in imports().items() if _layer(name) == layer for target in targets
    ]


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_imports_only_the_layers_below_it(layer):
    assert any(_layer(name) == layer for name in imports()), f"no module in {layer}: the rule checks nothing"
    allowed = LAYERS[layer] | {layer}
    offenders = sorted(
        f"{name} -> {target}"
        for name, target in _layer_imports(layer)
        if (mine := _ours(target))
        and mine.startswith("triton_inpaint.")
        and _layer(mine) not in allowed
        and not mine.startswith(PACKAGES["export"] + ".")  # tools and CLI are checked below
    )
    assert not offenders, offenders


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_light_layers_never_import_a_network_library(layer):
    offenders = sorted(
        f"{name} -> {target}"
        for name, target in _layer_imports(layer)
        if _ours(target) is None and target.split(".")[0] in FORBIDDEN[layer]
    )
    assert not offenders, offenders


def test_only_the_triton_adapters_import_the_python_backend():
    users = sorted(
        name
        for name, targets in imports().items()
        if any(t.split(".")[0] == "triton_python_backend_utils" for t in targets)
    )
    assert users and all(name.startswith("triton_inpaint.triton.") for name in users), users


def test_only_tools_reach_the_librarys_consumers():
    """The library does not import what is built on it (export, client, gateway), lazily or not,
    except its tools and CLI, which drive them."""
    offenders = sorted(
        f"{name} -> {target}"
        for name, targets in imports().items()
        if name.startswith("triton_inpaint.") and not _is_tool(name) and not name.startswith(CONSUMERS)
        for target in targets
        if (_ours(target) or "").startswith(CONSUMERS)
    )
    assert not offenders, offenders


def test_the_gateway_never_imports_the_tools():
    offenders = sorted(
        f"{name} -> {target}"
        for name, targets in imports().items()
        if name.startswith("triton_inpaint.gateway")
        for target in targets
        if _is_tool(_ours(target) or "")
    )
    assert not offenders, offenders


def test_the_async_worker_knows_no_task_style():
    """The worker claims, leases and finishes tasks; what a task does comes from the handlers app
    wiring gives it, so a third task style needs no change to it."""
    worker = "triton_inpaint.gateway.worker"
    styles = ("triton_inpaint.gateway.runware", "triton_inpaint.gateway.eden")
    reached = _loaded_by(worker) | {_ours(target) or "" for target in imports()[worker]}
    assert "triton_inpaint.gateway.store.records" in reached  # the check sees what the worker loads
    assert not sorted(module for module in reached if module.startswith(styles))


def test_no_import_cycles():
    """A cycle means neither module can be read, tested or moved without the other. Imports inside
    functions count: deferring an import hides a cycle from the interpreter, not from the reader."""
    graph = {
        name: {mine for target in targets if (mine := _ours(target)) and mine != name}
        for name, targets in imports().items()
    }
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if nxt in _parents(node):  # a package's __init__ importing its own modules is no cycle
                continue
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles
