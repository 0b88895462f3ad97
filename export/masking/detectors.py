"""``export detectors``: MediaPipe's detector graphs from the ``mediapipe==0.10.21`` wheel, as Triton
models running ONNX, each checked against the TFLite original.

The wheel is fetched from PyPI with pip (never installed: it pins its own OpenCV and numpy) and only
the ``.tflite`` files and the face-mesh landmark index sets are read out of it. Nothing comes from a
model hub and no weights are committed. Everything is written into a scratch folder and moved into the
repository only when every graph converted and matched its original.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triton_inpaint.api import contract
from triton_inpaint.api.commands import CommandError, ExitCode
from triton_inpaint.api.contract import TensorSpec
from triton_inpaint.export.masking.tflite_onnx import compare_with_tflite, convert
from triton_inpaint.export.repository import move_into, python_model_config, write_config, write_model_py
from triton_inpaint.masks.detectors import FACE_MESH_FILE

MEDIAPIPE_VERSION = "0.10.21"
WHEEL_PATTERN = f"mediapipe-{MEDIAPIPE_VERSION}-cp311-cp311-*.whl"
# Triton model name -> the graph inside the wheel. Each reads one NHWC float image.
DETECTOR_GRAPHS = {
    "detector_face": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    "detector_face_landmark": "mediapipe/modules/face_landmark/face_landmark.tflite",
    "detector_palm": "mediapipe/modules/palm_detection/palm_detection_lite.tflite",
    "detector_hand_landmark": "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
    "detector_person": "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
}
FACE_MESH_SETS = (
    "FACEMESH_FACE_OVAL",
    "FACEMESH_LEFT_EYE",
    "FACEMESH_RIGHT_EYE",
    "FACEMESH_LIPS",
    "FACEMESH_NOSE",
)
MAX_DIFF = 1e-3  # ONNX vs TFLite on the sample, per output element


@dataclass(frozen=True)
class DetectorCheck:
    model: str
    max_abs_diff: float


def fetch_wheel(cache: Path, wheel: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """The mediapipe wheel: the one given, one already in ``cache``, or downloaded there with pip."""
    if wheel is not None:
        if not wheel.is_file():
            raise FileNotFoundError(f"--wheel {wheel}: no such file")
        return wheel
    found = sorted(cache.glob(WHEEL_PATTERN))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    log(f"downloading mediapipe=={MEDIAPIPE_VERSION} (wheel only, not installed) into {cache} ...")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(cache),
    ]
    command += [
        "--python-version",
        "3.11",
        "--platform",
        "manylinux_2_28_x86_64",
        f"mediapipe=={MEDIAPIPE_VERSION}",
    ]
    # On a terminal pip draws its own download bar (the wheel is 35 MB); elsewhere it stays quiet and
    # its last line goes into the error.
    shown = sys.stderr.isatty()
    command += [] if shown else ["--progress-bar", "off"]
    result = subprocess.run(command, stdout=None if shown else subprocess.PIPE, stderr=None if shown else
                            subprocess.PIPE, text=True)  # fmt: skip
    found = sorted(cache.glob(WHEEL_PATTERN))
    if result.returncode != 0 or not found:
        last = (result.stderr or "").strip().splitlines()[-1:]
        reason = last or ["pip's output above" if shown else "no wheel"]
        raise CommandError(
            f"could not download mediapipe=={MEDIAPIPE_VERSION} from the package index ({reason[0]}); "
            "download it elsewhere and pass --wheel",
            ExitCode.UNAVAILABLE,
        )
    return found[-1]


def face_mesh_sets(wheel: zipfile.ZipFile) -> dict[str, list[int]]:
    """Landmark indices of the face oval, eyes, nose and lips, read from MediaPipe's own
    ``face_mesh_connections.py`` (edge sets of the 468-point mesh) without importing it; a region's
    mask is the convex hull of its points."""
    source = wheel.read("mediapipe/python/solutions/face_mesh_connections.py").decode()
    sets: dict[str, list[int]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in FACE_MESH_SETS:
                edges = ast.literal_eval(node.value.args[0])  # frozenset([(a, b), ...])
                sets[name] = sorted({index for edge in edges for index in edge})
    missing = set(FACE_MESH_SETS) - set(sets)
    if missing:
        raise RuntimeError(f"face_mesh_connections.py lacks {', '.join(sorted(missing))}")
    return sets


def _sample(shape: list[int]) -> np.ndarray:
    """The bundled sample photo at the graph's input size, in [0, 1]: a real image, so the check
    exercises the activations the detectors see in use."""
    import io
    from importlib import resources

    from PIL import Image

    data = resources.files("triton_inpaint.assets").joinpath("sample.png").read_bytes()
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((shape[2], shape[1]))
    return (np.asarray(image, dtype=np.float32) / 255.0)[None]


def _config(name: str, onnx_model: object) -> mc.ModelConfig:
    """The graph's own (static, batch-1) tensors; the model runs one request at a time."""

    def specs(values: object) -> list[TensorSpec]:
        return [
            TensorSpec(v.name, "TYPE_FP32", tuple(d.dim_value for d in v.type.tensor_type.shape.dim))
            for v in values
        ]

    return python_model_config(name, specs(onnx_model.graph.input), specs(onnx_model.graph.output))


def export_detectors(
    repository: Path, cache: Path, wheel: Path | None = None, log: Callable[[str], None] = print
) -> list[DetectorCheck]:
    """Convert, check and write every detector graph as ``detector_*`` Triton models, and the
    ``image_masking`` model that runs them."""
    wheel = fetch_wheel(cache, wheel, log)
    repository.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-detectors-", dir=repository.parent))
    checks = []
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name, member in DETECTOR_GRAPHS.items():
                tflite_path = scratch / "tflite" / Path(member).name
                tflite_path.parent.mkdir(parents=True, exist_ok=True)
                tflite_path.write_bytes(archive.read(member))
                onnx_path = scratch / name / "1" / "model.onnx"
                onnx_model = convert(tflite_path, onnx_path)
                shape = [d.dim_value for d in onnx_model.graph.input[0].type.tensor_type.shape.dim]
                diff = compare_with_tflite(tflite_path, onnx_path, _sample(shape))
                log(f"{name:<24} {Path(member).name:<34} max |onnx - tflite| = {diff:.1e}")
                if not diff <= MAX_DIFF:
                    raise RuntimeError(f"{name}: ONNX differs from the TFLite original by {diff:.2e}")
                checks.append(DetectorCheck(name, diff))
                write_config(scratch / name, _config(name, onnx_model))
                write_model_py(onnx_path.parent, "triton_inpaint.triton.onnx_model")
            mesh = face_mesh_sets(archive)
        masking = scratch / contract.MASKING_MODEL
        write_model_py(masking / "1", "triton_inpaint.triton.masking")
        (masking / "1" / FACE_MESH_FILE).write_text(json.dumps(mesh) + "\n")
        masking_config = python_model_config(
            contract.MASKING_MODEL, contract.MASKING_INPUTS, contract.MASKING_OUTPUTS, count=2
        )
        write_config(masking, masking_config)
        shutil.rmtree(scratch / "tflite")
        move_into(scratch, repository)
        return checks
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
