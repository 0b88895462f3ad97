"""ONNX clean-up before a GPU runtime takes the graphs: constant folding, dead-node removal and shape
inference, with polygraphy / onnx-graphsurgeon (what NVIDIA's own TensorRT diffusion demos run before
building engines). TensorRT's parser and onnxruntime's TensorRT provider both need every tensor's rank
known and no shape arithmetic left that could be computed once; the torch exporter leaves plenty.

The cleaned graph replaces ``model.onnx``; export then checks it against torch like any other graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# protobuf cannot serialise one message over 2 GB: bigger graphs keep their weights in one file beside.
PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class CleanupReport:
    path: Path
    nodes_before: int
    nodes_after: int


def clean_onnx(path: Path) -> CleanupReport:
    """Fold constants, drop unused nodes, infer shapes, and write the graph back to ``path``."""
    import onnx
    from polygraphy.backend.onnx import fold_constants, infer_shapes, save_onnx
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING  # its per-pass progress lines; export logs its own
    model = onnx.load(str(path))  # with its external weights, if any
    before = len(model.graph.node)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in _initializers(path))
    model = fold_constants(model, num_passes=None, do_shape_inference=True, error_ok=False)
    model = infer_shapes(model, error_ok=False)
    after = len(model.graph.node)
    if external or model.ByteSize() > PROTOBUF_LIMIT:
        for stale in path.parent.glob("*"):
            if stale != path and stale.suffix not in (".onnx", ".json") and stale.is_file():
                stale.unlink()  # the exporter's per-tensor weight files, replaced by one file
        save_onnx(model, str(path), external_data_path=f"{path.name}.data", size_threshold=1024)
    else:
        save_onnx(model, str(path))
    return CleanupReport(path, before, after)


def _initializers(path: Path) -> list:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.initializer)
