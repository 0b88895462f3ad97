"""The export step: numerical checks, generated configs, the built-in configs, and failure atomicity."""

import json
import urllib.request
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.conftest import BUILTIN_REPOSITORY, MODEL
from triton_inpaint.api import contract
from triton_inpaint.export.repository import check_name, export_checkpoint
from triton_inpaint.networks.runners import SD_TENSORS


def _config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def _tensors(entries) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(e.name, mc.DataType.Name(e.data_type), tuple(e.dims)) for e in entries]


def _specs(specs) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(s.name, s.data_type, s.dims) for s in specs]


def test_onnx_graphs_match_torch(exported_repository):
    _, checks = exported_repository
    # The networks, and a DeepCache shallow UNet per default branch (acceleratorOptions.deepCache).
    assert [c.submodel for c in checks] == [*SD_TENSORS, *(f"unet_shallow_{b}" for b in (0, 1, 2))]
    for check in checks:
        print(f"{check.submodel}: max |onnx - torch| = {check.max_abs_diff:.2e}")
        assert check.max_abs_diff < 1e-4
        assert check.path.is_file()


def test_generated_models(exported_repository):
    repository, _ = exported_repository
    unet = _config(repository / f"{MODEL}_unet")
    assert unet.max_batch_size > 0 and unet.HasField("dynamic_batching")
    assert [n for n, _, _ in _tensors(unet.input)] == ["sample", "timestep", "encoder_hidden_states"]
    for role in SD_TENSORS:  # each network: onnxruntime's CPU graph beside the export, threads automatic
        assert (repository / f"{MODEL}_{role}" / "1" / "model.cpu.onnx").is_file()
        assert _config(repository / f"{MODEL}_{role}").parameters["ort_threads"].string_value == "0"
    denoise = _config(repository / contract.denoise_name(MODEL))
    assert _tensors(denoise.input) == _specs(contract.DENOISE_INPUTS)
    assert denoise.parameters["submodel_prefix"].string_value == MODEL
    version = repository / contract.denoise_name(MODEL) / "1"
    assert (version / "pipeline.json").is_file() and (version / "tokenizer").is_dir()
    ensemble = _config(repository / contract.ensemble_name(MODEL))
    assert ensemble.platform == "ensemble"
    assert _tensors(ensemble.input) == _specs(contract.REQUEST_INPUTS)
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        contract.PREPROCESS_MODEL,
        contract.denoise_name(MODEL),
        contract.POSTPROCESS_MODEL,
    ]
    optional = {e.name for e in ensemble.input if e.optional}
    assert optional == {s.name for s in contract.REQUEST_INPUTS if s.optional}


@pytest.mark.server
@pytest.mark.parametrize(
    ("model", "inputs", "outputs"),
    [
        (contract.PREPROCESS_MODEL, contract.PREPROCESS_INPUTS, contract.PREPROCESS_OUTPUTS),
        (contract.POSTPROCESS_MODEL, contract.POSTPROCESS_INPUTS, contract.POSTPROCESS_OUTPUTS),
    ],
)
def test_builtin_models_complete_their_configs_from_the_contract(triton_server, model, inputs, outputs):
    """The built-in configs list no tensors; as loaded, Triton's config is the contract's."""
    assert not _config(BUILTIN_REPOSITORY / model).input, "config.pbtxt must not restate the contract"
    url = f"http://{triton_server.http_url}/v2/models/{model}/config"
    config = json.loads(urllib.request.urlopen(url, timeout=10).read())
    served = [
        (e["name"], e["data_type"], tuple(e["dims"]), e.get("optional", False)) for e in config["input"]
    ]
    assert served == [(s.name, s.data_type, s.dims, s.optional) for s in inputs]
    assert [(e["name"], e["data_type"], tuple(e["dims"])) for e in config["output"]] == _specs(outputs)


def test_failed_export_leaves_repository_untouched(tmp_path, tiny_checkpoint):
    repository = tmp_path / "repo"
    (repository / "keep_me").mkdir(parents=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{ not json")
    with pytest.raises(Exception):  # noqa: B017 - any failure will do; what matters is what is left
        export_checkpoint(broken, "broken", repository, log=lambda _: None)
    assert sorted(p.name for p in repository.iterdir()) == ["keep_me"]
    assert not list(tmp_path.glob(".export-*")), "scratch folder left behind"


@pytest.mark.parametrize("name", ["", "has space", "../up", "x" * 64, "_leading"])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="--name"):
        check_name(name)


def test_not_a_checkpoint_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        export_checkpoint(tmp_path, "x", tmp_path / "repo", log=lambda _: None)


@pytest.mark.parametrize(
    ("name", "taken"), [("preprocess", "inpaint_preprocess"), ("postprocess", "inpaint_postprocess")]
)
def test_reserved_names_are_refused(name, taken, tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match=f"--name '{name}' is reserved: it would write {taken}"):
        check_name(name)
    repository = tmp_path / "repo"
    with pytest.raises(ValueError, match="is reserved"):  # before anything is exported or written
        export_checkpoint(tiny_checkpoint, name, repository, log=lambda _: None)
    assert not repository.exists()
    assert check_name("preprocessor") == "preprocessor"  # only the colliding names
