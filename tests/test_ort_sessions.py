"""How onnxruntime sessions are opened: the graph optimised at export, and the thread budget."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from triton_inpaint.networks.ort_sessions import (
    CPU_GRAPH,
    CPU_GRAPH_DATA,
    THREADS_ENV,
    cpu_budget,
    graph_to_load,
    open_session,
    optimize_for_cpu,
    session_threads,
)


class _Block(torch.nn.Module):
    """Layers whose exported form onnxruntime fuses (GELU's erf pattern, a MatMul + Add)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(16, 32)
        self.outer = torch.nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(torch.nn.functional.gelu(self.inner(x)))


def _export(path: Path, external: bool = False) -> Path:
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        _Block(), (torch.randn(2, 8, 16),), str(path), input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    if external:  # as torch writes a network over protobuf's 2 GB limit: weights beside the graph
        model = onnx.load(str(path))
        onnx.save_model(
            model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0
        )
    return path


def _run(session, x: np.ndarray) -> np.ndarray:
    return session.run(["y"], {"x": x})[0]


def test_the_optimised_graph_is_smaller_and_computes_the_same(tmp_path):
    source = _export(tmp_path / "1" / "model.onnx")
    x = np.random.default_rng(0).standard_normal((3, 8, 16)).astype(np.float32)
    unoptimised = _run(open_session(source, 1), x)
    assert graph_to_load(source) == source  # nothing optimised yet: the export itself
    target = optimize_for_cpu(source)
    assert target == source.with_name(CPU_GRAPH) and graph_to_load(source) == target
    before = len(onnx.load(str(source)).graph.node)
    after = len(onnx.load(str(target)).graph.node)
    print(f"nodes: {before} exported, {after} optimised")
    assert after < before
    assert np.abs(_run(open_session(source, 1), x) - unoptimised).max() <= 1e-5


def test_a_graph_with_external_weights_keeps_them_external(tmp_path):
    source = _export(tmp_path / "1" / "model.onnx", external=True)
    assert (tmp_path / "1" / "weights.bin").is_file()
    optimize_for_cpu(source)
    data = source.with_name(CPU_GRAPH_DATA)
    assert data.is_file() and data.stat().st_size > 0
    assert source.with_name(CPU_GRAPH).stat().st_size < data.stat().st_size
    x = np.ones((1, 8, 16), np.float32)
    assert _run(open_session(source, 1), x).shape == (1, 8, 16)


def test_threads_come_from_the_override_then_the_config_then_the_cpu_budget(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert session_threads(3) == 3
    assert session_threads(0) == session_threads(None) == cpu_budget()
    monkeypatch.setenv(THREADS_ENV, "1")
    assert session_threads(3) == 1
    monkeypatch.setenv(THREADS_ENV, "-2")
    with pytest.raises(ValueError, match=f"{THREADS_ENV} '-2': use 0"):
        session_threads(3)
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=f"{THREADS_ENV} 'many'"):
        session_threads(3)
    monkeypatch.delenv(THREADS_ENV)
    with pytest.raises(ValueError, match="ort_threads -1"):
        session_threads(-1)


def test_export_refuses_a_thread_count_out_of_range_by_name(capsys):
    from triton_inpaint.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "onnx", "--checkpoint", "c", "--name", "n", "--repository", "r",
                                   "--ort-threads", "300"])  # fmt: skip
    assert "--ort-threads: '300': use 0 (the cores the server may use) to 256" in capsys.readouterr().err


def test_the_cpu_budget_is_within_the_affinity():
    assert 1 <= cpu_budget() <= len(os.sched_getaffinity(0))
