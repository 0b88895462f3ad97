"""The model registry file, its export, and what the served models say about themselves."""

import json
import subprocess
import sys

import pytest

from tests.conftest import BASE_ALIASES, BASE_DEFAULTS, BASE_MODEL, MODEL, MODEL_IDS
from tests.helpers import irregular_mask, make_image, png_bytes
from triton_inpaint.client import InpaintClient, InpaintError
from triton_inpaint.export.registry import RegistryError, export_registry, load_registry, name_for


def write(tmp_path, text):
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_a_valid_registry(tmp_path):
    path = write(
        tmp_path,
        '[[models]]\nid = "local:sd15-inpaint@1"\ncheckpoint = "ckpt"\ndefault_steps = 30\n'
        'default_guidance = 7.5\ndefault_scheduler = "dpm++ 2m karras"\n\n'
        '[[models]]\nid = "civitai:4201@130072"\nname = "realistic"\ntiny = "sdxl-base"\n'
        'family = "sdxl-base"\n',
    )
    first, second = load_registry(path)
    assert first.name == "local_sd15-inpaint_1" == name_for(first.id)
    assert first.checkpoint == (tmp_path / "ckpt").resolve()  # relative to the file
    assert first.default_scheduler == "DPM++ 2M Karras"  # canonical spelling
    assert (second.name, second.tiny, second.checkpoint) == ("realistic", "sdxl-base", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[models]]\nid = "sd15"\ntiny = "sd15-base"\n', "id: must look like 'source:name@version'"),
        ('[[models]]\nid = "a:b@1"\n', "give exactly one of 'checkpoint'"),
        ('[[models]]\nid = "a:b@1"\ntiny = "sd15-base"\ncheckpoint = "x"\n', "give exactly one of"),
        ('[[models]]\nid = "a:b@1"\ntiny = "sd3"\n', "tiny: must be one of sd15-inpaint"),
        (
            '[[models]]\nid = "a:b@1"\ntiny = "sd15-base"\ndefault_steps = 0\n',
            "default_steps: must be an integer in [1, 100]",
        ),
        (
            '[[models]]\nid = "a:b@1"\ntiny = "sd15-base"\ndefault_guidance = 60\n',
            "default_guidance: must be a number in [0.0, 50.0]",
        ),
        (
            '[[models]]\nid = "a:b@1"\ntiny = "sd15-base"\ndefault_scheduler = "warp"\n',
            "default_scheduler: unknown scheduler 'warp'",
        ),
        ('[[models]]\nid = "a:b@1"\ntiny = "sd15-base"\nsteps = 3\n', "steps: unknown key"),
        (
            '[[models]]\nid = "a:b@1"\ntiny = "sd15-base"\n[[models]]\nid = "a:b@1"\ntiny = "sd15-base"\n',
            "id 'a:b@1' appears twice",
        ),
        ('[[models]]\nid = "a:b@1"\ntiny = "sd15-base"\naliases = "x"\n', "aliases: must be a list of ids"),
        (
            '[[models]]\nid = "a:b@1"\ntiny = "sd15-base"\n[[models]]\nid = "a:c@1"\ntiny = "sd15-base"\n'
            'aliases = ["a:b@1"]\n',
            "a:c@1: alias 'a:b@1' already names a:b@1",
        ),
        ("models = 3\n", "needs at least one [[models]] entry"),
        ("[[models]\n", "not valid TOML"),
    ],
)
def test_registry_errors_name_entry_and_field(tmp_path, text, message):
    with pytest.raises(RegistryError) as info:
        load_registry(write(tmp_path, text))
    assert message in str(info.value)
    assert "models.toml" in str(info.value)


def test_family_mismatch_is_refused_before_anything_is_written(tmp_path, tiny_base_checkpoint):
    path = write(
        tmp_path,
        f'[[models]]\nid = "a:b@1"\ncheckpoint = "{tiny_base_checkpoint}"\nfamily = "sdxl-inpaint"\n',
    )
    repository = tmp_path / "repo"
    with pytest.raises(ValueError, match="expected family sdxl-inpaint, the checkpoint is sd15-base"):
        export_registry(path, repository, tmp_path / "cache", log=lambda _: None)
    assert not repository.exists() or not any(repository.iterdir())


@pytest.mark.server
def test_served_models_describe_themselves(triton_server):
    with InpaintClient(triton_server.http_url, "http") as client:
        models = {m.name: m for m in client.list_models()}
    assert models[MODEL].id == MODEL_IDS[MODEL] and models[MODEL].family == "sd15-inpaint"
    assert models[MODEL].native_resolution == 128
    assert (models[MODEL].default_steps, models[MODEL].default_guidance, models[MODEL].default_scheduler) == (
        20,
        7.0,
        None,
    )
    base = models[BASE_MODEL]
    assert (base.id, base.family) == (MODEL_IDS[BASE_MODEL], "sd15-base")
    assert (base.default_steps, base.default_guidance, base.default_scheduler) == tuple(
        BASE_DEFAULTS.values()
    )
    assert models["tinyxl"].family == "sdxl-inpaint" and models["tinyxl"].default_guidance == 5.0


@pytest.mark.server
def test_registry_id_and_defaults_apply(triton_server):
    image, mask = png_bytes(make_image(64, 48)), png_bytes(irregular_mask(64, 48))
    with InpaintClient(triton_server.grpc_url, "grpc") as client:
        by_id = client.inpaint(MODEL_IDS[BASE_MODEL], image, mask, "a cat", seed=4)
        explicit = client.inpaint(
            BASE_MODEL,
            image,
            mask,
            "a cat",
            seed=4,
            steps=BASE_DEFAULTS["default_steps"],
            guidance_scale=BASE_DEFAULTS["default_guidance"],
            scheduler=BASE_DEFAULTS["default_scheduler"],
        )
        other = client.inpaint(BASE_MODEL, image, mask, "a cat", seed=4, steps=5)
        by_alias = client.inpaint(BASE_ALIASES[0], image, mask, "a cat", seed=4)
        with pytest.raises(InpaintError) as unknown:
            client.inpaint("runware:999@9", image, mask, "a cat", seed=4)
    assert by_id.image == explicit.image == by_alias.image
    assert other.image != by_id.image
    # An id nobody serves is refused with the ids that are served.
    assert "runware:999@9" in str(unknown.value) and MODEL_IDS[BASE_MODEL] in str(unknown.value)


@pytest.mark.server
def test_models_command_prints_json(triton_server):
    done = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", "models", "--url", triton_server.grpc_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    listed = {entry["id"]: entry for entry in json.loads(done.stdout)}
    assert listed[MODEL_IDS[BASE_MODEL]]["default_scheduler"] == "Euler a"
