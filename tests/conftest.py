"""Shared fixtures: one tiny checkpoint, one export and one real tritonserver per test session."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tree_state import tree_changes

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILTIN_REPOSITORY = REPO_ROOT / "model_repository"
MODEL = "tiny"  # sd15-inpaint: 9-channel UNet
BASE_MODEL = "tinybase"  # sd15-base: 4-channel UNet, latent blending
SDXL_MODELS = {"sdxl-inpaint": "tinyxl", "sdxl-base": "tinyxlbase"}
FLUX_MODEL = "tinyflux"  # flux-fill: transformer over packed latents
# Registry ids of the models the session's Triton serves (tiny is exported directly, the rest through
# a registry file); tinybase gets its own defaults from the registry.
MODEL_IDS = {
    MODEL: "local:tiny@1",
    BASE_MODEL: "local:sd15-base@1",
    "tinyxl": "local:sdxl-inpaint@1",
    "tinyxlbase": "local:sdxl-base@1",
    FLUX_MODEL: "local:flux-fill@1",
}
BASE_ALIASES = ("runware:100@1",)  # a hosted API's model id, mapped to tinybase by the registry
BASE_DEFAULTS = {"default_steps": 6, "default_guidance": 6.5, "default_scheduler": "Euler a"}
# LoRA adapters the registry declares (tiny random ones, written by export/adapters.py): two on tinybase
# (ink also adapts the text encoder, glow only the UNet), one on tinyxl (both text encoders and the UNet).
LORA_ADAPTERS = {BASE_MODEL: ("local:ink@1", "local:glow@1"), "tinyxl": ("local:xl-ink@1",)}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from triton_inpaint.export.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint("sd15-inpaint", tmp_path_factory.mktemp("checkpoint") / "tiny", seed=0)


@pytest.fixture(scope="session")
def scheduler_config(tiny_checkpoint: Path) -> dict:
    """The checkpoint's saved scheduler config: every scheduler swap starts from it, as the server's does."""
    return json.loads((tiny_checkpoint / "scheduler" / "scheduler_config.json").read_text())


@pytest.fixture(scope="session")
def tiny_base_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from triton_inpaint.export.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint("sd15-base", tmp_path_factory.mktemp("checkpoint") / "tinybase", seed=0)


def _load_reference(checkpoint: Path):
    from diffusers import StableDiffusionInpaintPipeline

    pipeline = StableDiffusionInpaintPipeline.from_pretrained(checkpoint, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def reference_pipeline(tiny_checkpoint: Path):
    return _load_reference(tiny_checkpoint)


@pytest.fixture(scope="session")
def reference_base_pipeline(tiny_base_checkpoint: Path):
    return _load_reference(tiny_base_checkpoint)


@pytest.fixture(scope="session")
def sdxl_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from triton_inpaint.export.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("checkpoint")
    return {family: write_tiny_checkpoint(family, root / family, seed=0) for family in SDXL_MODELS}


@pytest.fixture(scope="session")
def flux_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from triton_inpaint.export.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint("flux-fill", tmp_path_factory.mktemp("checkpoint") / "tinyflux", seed=0)


@pytest.fixture(scope="session")
def flux_reference(flux_checkpoint: Path):
    """(diffusers' FluxFillPipeline from the tiny FLUX checkpoint, its saved scheduler config): the
    reference every FLUX test compares with (tests that hook it put it back as they found it)."""
    from diffusers import FluxFillPipeline

    pipe = FluxFillPipeline.from_pretrained(flux_checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe, json.loads((flux_checkpoint / "scheduler" / "scheduler_config.json").read_text())


@pytest.fixture(scope="session")
def lora_files(
    tiny_base_checkpoint: Path, sdxl_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each adapter of :data:`LORA_ADAPTERS` by id: a seeded random LoRA in diffusers' format."""
    from triton_inpaint.export.adapters import write_tiny_lora
    from triton_inpaint.export.repository import load_pipeline

    root = tmp_path_factory.mktemp("lora")
    base = load_pipeline(tiny_base_checkpoint)
    xl = load_pipeline(sdxl_checkpoints["sdxl-inpaint"])
    return {
        "local:ink@1": write_tiny_lora(base, root / "ink.safetensors", seed=1),
        "local:glow@1": write_tiny_lora(base, root / "glow.safetensors", seed=2, text_encoders=False),
        "local:xl-ink@1": write_tiny_lora(xl, root / "xl-ink.safetensors", seed=3),
    }


def _lora_tables(name: str, files: dict[str, Path]) -> str:
    return "".join(
        f'\n[[models.lora]]\nid = "{adapter}"\nfile = "{files[adapter]}"\n'
        for adapter in LORA_ADAPTERS.get(name, ())
    )


@pytest.fixture(scope="session")
def exported_repository(
    tiny_checkpoint: Path,
    tiny_base_checkpoint: Path,
    sdxl_checkpoints: dict[str, Path],
    flux_checkpoint: Path,
    lora_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
):
    """One repository holding every family, served by one Triton; returns the SD 1.5 inpainting checks."""
    from triton_inpaint.export.registry import export_registry
    from triton_inpaint.export.repository import ExportOptions, export_checkpoint

    repository = tmp_path_factory.mktemp("repository")
    registry = repository.parent / "models.toml"
    entries = [
        f'[[models]]\nid = "{MODEL_IDS[BASE_MODEL]}"\nname = "{BASE_MODEL}"\n'
        f'checkpoint = "{tiny_base_checkpoint}"\nfamily = "sd15-base"\n'
        f"default_steps = {BASE_DEFAULTS['default_steps']}\n"
        f"default_guidance = {BASE_DEFAULTS['default_guidance']}\n"
        f'default_scheduler = "{BASE_DEFAULTS["default_scheduler"]}"\n'
        f"aliases = {json.dumps(list(BASE_ALIASES))}\n" + _lora_tables(BASE_MODEL, lora_files)
    ]
    for family, name in SDXL_MODELS.items():
        entries.append(
            f'[[models]]\nid = "{MODEL_IDS[name]}"\nname = "{name}"\n'
            f'checkpoint = "{sdxl_checkpoints[family]}"\n' + _lora_tables(name, lora_files)
        )
    entries.append(
        f'[[models]]\nid = "{MODEL_IDS[FLUX_MODEL]}"\nname = "{FLUX_MODEL}"\n'
        f'checkpoint = "{flux_checkpoint}"\nfamily = "flux-fill"\n'
    )
    registry.write_text("\n".join(entries))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checks = export_checkpoint(
            tiny_checkpoint, MODEL, repository, ExportOptions(model_id=MODEL_IDS[MODEL]), log=lambda _: None
        )
        export_registry(
            registry, repository, repository.parent / "cache", log=lambda _: None, denoise_instances=1
        )
    return repository, checks


@pytest.fixture(scope="session")
def triton_server(exported_repository, detector_repository, clipseg_repository) -> Iterator[object]:
    from triton_inpaint.server.process import TritonServer, free_port

    repository, _ = exported_repository
    detectors, _ = detector_repository
    clipseg, _ = clipseg_repository
    repositories = [BUILTIN_REPOSITORY, repository, detectors, clipseg]
    server = TritonServer(repositories, free_port(), free_port(), free_port())
    server.start(timeout=300)
    try:
        yield server
    finally:
        server.stop()
        assert server.process.poll() is not None, "tritonserver survived stop()"


@pytest.fixture(scope="session")
def detector_repository(tmp_path_factory: pytest.TempPathFactory):
    """MediaPipe's detectors converted to ONNX Triton models (the wheel comes from the package index)."""
    from triton_inpaint.export.masking.detectors import export_detectors

    root = tmp_path_factory.mktemp("detectors")
    checks = export_detectors(root / "repository", root / "cache", log=lambda _: None)
    return root / "repository", checks


@pytest.fixture(scope="session")
def clipseg_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight CLIPSeg folder in transformers' layout, as an operator would supply one."""
    from triton_inpaint.export.tiny import write_tiny_checkpoint
    from triton_inpaint.pipelines.spec import CLIPSEG

    return write_tiny_checkpoint(CLIPSEG, tmp_path_factory.mktemp("clipseg") / "weights", seed=0)


@pytest.fixture(scope="session")
def clipseg_repository(clipseg_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """The text-segmentation models exported from the tiny CLIPSeg weights."""
    from triton_inpaint.export.masking.clipseg import export_clipseg

    repository = tmp_path_factory.mktemp("clipseg-repository")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check = export_clipseg(clipseg_weights, repository, log=lambda _: None)
    return repository, check


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """One real PostgreSQL server for the session; tests restarting it put it back up before they end."""
    from triton_inpaint.gateway.store.local_postgres import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture
def database_url(postgres_server) -> str:
    """A fresh, empty database on the session's server: tests share nothing."""
    import uuid

    return postgres_server.create_database(f"test_{uuid.uuid4().hex[:12]}")


# -- layers ---------------------------------------------------------------------------------------
# Every test is in exactly one layer, assigned here from what it uses, so a new test lands in the right
# lane without anyone remembering a marker:
#   server  - starts a real tritonserver (the session's, or its own);
#   parity  - builds tiny checkpoints, exports models or runs reference diffusers pipelines (no server);
#   unit    - everything else: seconds, no server, no model building (the fast lane);
#   real_size - the real SD 1.5 architecture exported, served and compared (tests/test_real_size.py,
#             marked there): minutes and ~12 GB of memory and disk, in its own lane.
_MODEL_FIXTURES = {
    "tiny_checkpoint", "tiny_base_checkpoint", "sdxl_checkpoints", "flux_checkpoint", "exported_repository",
    "detector_repository", "clipseg_weights", "clipseg_repository", "reference_pipeline",
    "reference_base_pipeline", "scheduler_config", "lora_files", "flux_reference",
}  # fmt: skip
# Files whose tests build or run networks through helpers rather than the fixtures above.
_MODEL_FILES = {"test_memory.py", "test_tiny_checkpoint.py", "test_detector_masks.py", "test_detection.py"}


TREE_AT_START = pytest.StashKey[dict[str, str] | None]()
_TREE_TEST = "test_tree_untouched.py"


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[TREE_AT_START] = tree_changes(REPO_ROOT)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The check that the run left the tree alone goes last, after everything that could write.
    items.sort(key=lambda item: item.path.name == _TREE_TEST)
    for item in items:
        if item.get_closest_marker("real_size"):
            continue
        if item.get_closest_marker("server") or "triton_server" in item.fixturenames:
            item.add_marker(pytest.mark.server)
        elif (
            item.get_closest_marker("parity")
            or _MODEL_FIXTURES & set(item.fixturenames)
            or item.path.name in _MODEL_FILES
        ):
            item.add_marker(pytest.mark.parity)
        else:
            item.add_marker(pytest.mark.unit)
