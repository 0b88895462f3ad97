"""TensorRT plans keyed and checked, so that a stale plan is rebuilt or refused, never loaded.

A plan runs only on the compute capability and the TensorRT version it was built with, and it is built
for one precision and one shape profile. ``export tensorrt`` writes beside each plan a record of all four
(``model.sm90.plan.json``); a plan whose record differs from what the model needs now (this GPU, the
TensorRT here, the precision and profile the export wrote in ``trt_profile.json``) is stale:
``export tensorrt`` builds it again, and ``serve`` refuses to start with the reason and the command that
rebuilds it, instead of a model that fails to load (TensorRT refuses a plan of another version) or serves
sizes its profile does not cover.

One place for the record and its check: the export's build and the server's start both read it. No
TensorRT import here (the server never loads it): the version comes from libnvinfer itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

# Where export writes each TensorRT network's profile and precision (beside config.pbtxt, which Triton
# does not read), for export tensorrt to build from.
PROFILE_FILE = "trt_profile.json"
RECORD_FIELDS = ("compute_capability", "tensorrt_version", "precision", "profile")


def plan_filename(capability: str) -> str:
    """The plan of a compute capability, as Triton's ``cc_model_filenames`` names it (``model.sm90.plan``)."""
    return f"model.sm{capability.replace('.', '')}.plan"


def record_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def tensorrt_plan_models(repository: Path) -> list[Path]:
    """The model folders of ``repository`` whose config is a TensorRT plan model."""
    found = []
    for config_path in sorted(Path(repository).glob("*/config.pbtxt")):
        config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
        if config.platform == "tensorrt_plan" or config.backend == "tensorrt":
            found.append(config_path.parent)
    return found


def registered_plan(model_dir: Path, capability: str) -> Path | None:
    """The plan the config names for ``capability``, if it is on disk."""
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    filename = config.cc_model_filenames.get(capability)
    path = model_dir / "1" / filename if filename else None
    return path if path is not None and path.is_file() else None


def short_version(version: str) -> str:
    """major.minor.patch: plans are compatible within one TensorRT release, whatever its build number."""
    return ".".join(version.split(".")[:3])


def wanted_record(model_dir: Path, capability: str, tensorrt_version: str) -> dict:
    """What a plan of ``model_dir`` built now on this GPU would record."""
    described = json.loads((model_dir / PROFILE_FILE).read_text())
    return {
        "compute_capability": capability,
        "tensorrt_version": short_version(tensorrt_version),
        "precision": described["precision"],
        "profile": {which: described[which] for which in ("min", "opt", "max")},
    }


def write_record(plan: Path, record: dict) -> None:
    partial = record_path(plan).with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(record_path(plan))


def stale_reason(model_dir: Path, capability: str, tensorrt_version: str | None) -> str | None:
    """Why ``model_dir``'s plan for ``capability`` cannot be served as it is (None: it can).
    ``tensorrt_version`` None: the TensorRT here is unknown, and the version is not compared."""
    plan = registered_plan(model_dir, capability)
    if plan is None:
        return f"no plan for compute capability {capability}"
    if not record_path(plan).is_file():
        return f"{plan.name} has no build record (built before plans were recorded)"
    have = json.loads(record_path(plan).read_text())
    want = wanted_record(model_dir, capability, tensorrt_version or have.get("tensorrt_version", ""))
    built_with, here = have.get("tensorrt_version"), want["tensorrt_version"]
    if built_with != here:
        return f"{plan.name} was built with TensorRT {built_with}, this is {here}"
    if have.get("precision") != want["precision"]:
        return f"{plan.name} was built in {have.get('precision')}, the export asks for {want['precision']}"
    if have.get("profile") != want["profile"]:
        return f"{plan.name} was built for other shapes than the export's profile (exported again since?)"
    if have.get("compute_capability") != capability:
        return f"{plan.name} records compute capability {have.get('compute_capability')}, not {capability}"
    return None


def stale_plans(repositories: list[Path], capability: str, tensorrt_version: str | None) -> dict[str, str]:
    """Every TensorRT model of the local ``repositories`` whose plan is stale, with the reason."""
    reasons = {
        str(model_dir): stale_reason(model_dir, capability, tensorrt_version)
        for repository in repositories
        for model_dir in tensorrt_plan_models(repository)
    }
    return {model: reason for model, reason in reasons.items() if reason is not None}


def refusal(stale: dict[str, str]) -> str:
    """The message ``serve`` stops with: each stale model, its reason, and the command that rebuilds."""
    repositories = sorted({str(Path(model).parent) for model in stale})
    lines = [f"  {Path(model).name}: {reason}" for model, reason in sorted(stale.items())]
    commands = [f"  triton-inpaint export tensorrt --repository {repository}" for repository in repositories]
    heading = "TensorRT plans that cannot be served as they are:"
    return "\n".join([heading, *lines, "build them on this GPU with:", *commands])


def serving_refusal(
    repositories: Sequence[object],
    capability: str | None = None,
    tensorrt_version: str | None = None,
    log=print,
) -> str | None:
    """What ``serve`` stops with when a TensorRT model of ``repositories`` has a stale plan (None: all
    current, or no TensorRT models). The GPU's compute capability and the TensorRT version are read
    from this machine unless given; without nvidia-smi the plans are not checked (and said so)."""
    local = [Path(r) for r in repositories if isinstance(r, Path | str) and Path(r).is_dir()]
    if not any(tensorrt_plan_models(repository) for repository in local):
        return None
    capability = capability or gpu_compute_capability()
    if capability is None:
        log("warning: TensorRT plans not checked: no nvidia-smi to tell this GPU's compute capability")
        return None
    stale = stale_plans(local, capability, tensorrt_version or installed_tensorrt_version())
    return refusal(stale) if stale else None


def gpu_compute_capability() -> str | None:
    """This machine's first GPU's compute capability (``9.0``); None without nvidia-smi."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader", "--id=0"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


def installed_tensorrt_version() -> str | None:
    """The version of the libnvinfer this machine loads (``10.3.0``), read from the library itself
    (``getInferLibVersion``: major * 10000 + minor * 100 + patch since TensorRT 10, major * 1000 before);
    None where there is none."""
    names = [ctypes.util.find_library("nvinfer"), "libnvinfer.so.10", "libnvinfer.so"]
    for name in filter(None, names):
        try:
            number = int(ctypes.CDLL(name).getInferLibVersion())
        except (OSError, AttributeError):
            continue
        major, rest = divmod(number, 10000 if number >= 100000 else 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    return None
