"""How every onnxruntime session of the product is opened: its thread budget, no busy spinning, and the
graph onnxruntime optimised once at export instead of at every server start.

One place for these, so that what the server runs and what the in-process pipeline (tests, ``bench``)
runs are the same sessions.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

# Beside each exported ``model.onnx``: the same graph after onnxruntime's portable (``extended``)
# optimisations, for the CPU provider. ``model.onnx`` stays the portable export other runtimes build from.
CPU_GRAPH = "model.cpu.onnx"
CPU_GRAPH_DATA = "model.cpu.onnx.data"
# Overrides every session's thread count (a number; 0 = the automatic budget), e.g. for a sweep.
THREADS_ENV = "TRITON_INPAINT_ORT_THREADS"


def cpu_budget() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a Kubernetes
    CPU limit), which neither ``os.cpu_count()`` nor onnxruntime's own default looks at."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def session_threads(configured: int | None = None) -> int:
    """The intra-op threads of one session: ``THREADS_ENV`` if set, else ``configured`` (the model's
    ``ort_threads`` parameter), else 0, and 0 means the whole CPU budget."""
    override = os.environ.get(THREADS_ENV, "").strip()
    source = f"${THREADS_ENV}" if override else "ort_threads"
    try:
        threads = int(override) if override else (configured or 0)
    except ValueError:
        threads = -1
    if threads < 0:
        raise ValueError(
            f"{source} {override or configured!r}: use 0 (all cores this process may use) or a thread count"
        )
    return threads or cpu_budget()


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the optimiser's notes on nodes it leaves are noise
    # Idle pool threads sleep instead of spinning. Several sessions share the cores at once (the
    # denoiser's tick, the VAE of a request starting or finishing), and a spinning pool burns the cores
    # the working one needs: measured in docs/benchmarks.md.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def graph_to_load(path: Path) -> Path:
    """The graph export optimised beside ``path`` when there is one, else ``path`` itself."""
    optimized = path.with_name(CPU_GRAPH)
    return optimized if optimized.is_file() else path


def open_session(path: Path, threads: int | None = None) -> Any:
    """A CPU session over ``path`` (a ``model.onnx``), loading the graph optimised at export if present."""
    import onnxruntime as ort

    options = session_options(session_threads(threads))
    return ort.InferenceSession(str(graph_to_load(path)), options, providers=["CPUExecutionProvider"])


def optimize_for_cpu(path: Path) -> Path:
    """Write ``model.cpu.onnx`` beside ``path``: onnxruntime's ``extended`` optimisations (constant
    folding, fusions) done once. Not ``all``: that level adds layout changes for this machine's CPU, which
    the server then applies itself at load, cheaply. Weights go to one external file when the source
    keeps them outside the graph (a network over protobuf's 2 GB)."""
    import onnx
    import onnxruntime as ort

    target = path.with_name(CPU_GRAPH)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    graph = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer):
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", CPU_GRAPH_DATA
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return target
