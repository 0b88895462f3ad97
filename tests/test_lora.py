"""LoRA adapters below the server: the request's text form and its checks, the registry's
``[[models.lora]]`` tables, and the banked networks (:mod:`triton_inpaint.networks.lora`) against
diffusers' own ``load_lora_weights`` + ``set_adapters`` for every family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.lora import LoraUse, adapter_scales, format_lora, lora_items, lora_text, parse_lora

A, B = "local:ink@1", "local:glow@1"


def test_the_text_form_round_trips_and_an_id_alone_is_weight_one():
    uses = parse_lora(f" {A}=0.8 , {B}")
    assert uses == (LoraUse(A, 0.8), LoraUse(B, 1.0))
    assert parse_lora(format_lora(uses)) == uses
    assert parse_lora(format_lora([LoraUse(A, 0.1 + 0.2)]))[0].weight == 0.1 + 0.2  # exact floats
    assert parse_lora(None) == parse_lora("  ") == ()
    assert lora_text([(A, 0.5), {"model": B, "weight": -1}]) == f"{A}=0.5,{B}=-1.0"
    assert lora_text([LoraUse(A)]) == f"{A}=1.0"
    assert lora_items(f"{A}=2") == [{"model": A, "weight": 2.0}]


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        (f"{A}=4.01", "lora[0].weight", "must be a number in [-4.0, 4.0], got 4.01"),
        (f"{B},{A}=-5", "lora[1].weight", "must be a number in [-4.0, 4.0], got -5.0"),
        (f"{A}=nan", "lora[0].weight", "must be a number in [-4.0, 4.0], got nan"),
        (f"{A}=x", "lora[0].weight", "must be a number in [-4.0, 4.0], got 'x'"),
        (f"{A},{A}=2", "lora[1].model", "'local:ink@1' is named twice; give it once"),
        ("=1", "lora", "item 1 ('=1') names no adapter; write ID=WEIGHT, e.g. local:watercolor@1=0.8"),
        ("bad id=1", "lora[0].model", "must be an adapter id such as 'local:watercolor@1', got 'bad id'"),
        (",".join(f"local:a{i}@1" for i in range(9)), "lora", "at most 8 adapters a request, got 9"),
    ],
)
def test_bad_lora_is_refused_naming_the_item(text, field, reason):
    with pytest.raises(InvalidInputError) as refused:
        parse_lora(text)
    assert (refused.value.field, refused.value.reason) == (field, reason)


def test_scales_follow_the_models_order_and_unknown_ids_list_the_served_ones():
    assert adapter_scales(parse_lora(f"{B}=0.5"), (A, B)) == (0.0, 0.5)
    assert adapter_scales((), (A, B)) == (0.0, 0.0)
    assert adapter_scales((), ()) == ()
    with pytest.raises(InvalidInputError) as refused:
        adapter_scales(parse_lora(f"{A},local:other@1"), (A, B))
    assert refused.value.field == "lora[1].model"
    assert refused.value.reason == f"'local:other@1' is not an adapter of this model; it serves: {A}, {B}"
    with pytest.raises(InvalidInputError, match="it serves: none"):
        adapter_scales(parse_lora(A), ())


def _registry(tmp_path: Path, tables: str) -> Path:
    (tmp_path / "ink.safetensors").write_bytes(b"")
    path = tmp_path / "models.toml"
    path.write_text(f'[[models]]\nid = "local:m@1"\ntiny = "sd15-inpaint"\n{tables}')
    return path


def test_the_registry_reads_adapters_relative_to_its_file(tmp_path):
    from triton_inpaint.export.registry import load_registry

    (entry,) = load_registry(_registry(tmp_path, f'[[models.lora]]\nid = "{A}"\nfile = "ink.safetensors"\n'))
    assert entry.lora == ((A, (tmp_path / "ink.safetensors").resolve()),)


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ('[[models.lora]]\nid = "x"\nfile = "ink.safetensors"\n', "lora #1: id: must look like"),
        ('[[models.lora]]\nid = "local:a@1"\nfile = "gone.safetensors"\n', "lora #1: file: no such file"),
        ('[[models.lora]]\nid = "local:a@1"\npath = "ink.safetensors"\n', "lora #1: unknown key 'path'"),
        (
            '[[models.lora]]\nid = "local:a@1"\nfile = "ink.safetensors"\n' * 2,
            "lora #2: id: 'local:a@1' appears twice",
        ),
    ],
)
def test_bad_adapter_tables_are_refused_naming_the_table(tmp_path, tables, message):
    from triton_inpaint.export.registry import RegistryError, load_registry

    with pytest.raises(RegistryError, match=message):
        load_registry(_registry(tmp_path, tables))


def _family_inputs(pipeline) -> dict[str, tuple]:
    from triton_inpaint.export.onnx_export import _example_inputs

    return _example_inputs(pipeline, 2, 8, 10)


@pytest.mark.parity
@pytest.mark.parametrize("family", ["sd15-inpaint", "sdxl-inpaint", "flux-fill"])
def test_banked_networks_equal_diffusers_set_adapters(family, tmp_path):
    """Each network of a pipeline with two adapters banked, at weights 0.7 and -0.5, against the same
    pipeline's diffusers/peft layers after ``set_adapters``; and the adapters do change the output."""
    from triton_inpaint.export.adapters import load_adapters, write_tiny_lora
    from triton_inpaint.export.repository import load_pipeline
    from triton_inpaint.export.tiny import write_tiny_checkpoint
    from triton_inpaint.networks.torch_networks import pipeline_architecture, role_modules

    checkpoint = write_tiny_checkpoint(family, tmp_path / family, seed=0)
    files = [
        write_tiny_lora(load_pipeline(checkpoint), tmp_path / "a.safetensors", seed=1),
        write_tiny_lora(load_pipeline(checkpoint), tmp_path / "b.safetensors", seed=2, text_encoders=False),
    ]
    reference, ours, plain = (load_pipeline(checkpoint) for _ in range(3))
    for index, file in enumerate(files):
        reference.load_lora_weights(str(file), adapter_name=f"r{index}")
    reference.set_adapters(["r0", "r1"], [0.7, -0.5])
    roles = load_adapters(ours, [(A, files[0]), (B, files[1])])
    architecture = pipeline_architecture(ours)
    assert set(roles) == {"text_encoder", "transformer" if architecture == "flux" else "unet"} | (
        {"text_encoder_2"} if architecture == "sdxl" else set()
    )
    inputs = _family_inputs(ours)
    weights = torch.tensor([[0.7, -0.5]] * 2)
    modules = [role_modules(p, architecture) for p in (reference, ours, plain)]
    for role in roles:
        with torch.no_grad():
            want, got, base = (
                modules[0][role](*inputs[role]),
                modules[1][role](*inputs[role], weights),
                modules[2][role](*inputs[role]),
            )
        first = [value if isinstance(value, torch.Tensor) else value[0] for value in (want, got, base)]
        print(f"{family} {role}: |ours - diffusers| {float((first[1] - first[0]).abs().max()):.1e}")
        assert torch.allclose(first[1], first[0], atol=1e-4, rtol=1e-4)
        assert float((first[0] - first[2]).abs().max()) > 1e-2  # the adapters matter


@pytest.mark.parity
def test_an_adapter_for_another_family_is_refused(tmp_path):
    """An SD 1.5 UNet adapter matches nothing in FLUX: refused at export, not served as a no-op."""
    from triton_inpaint.export.adapters import load_adapters, write_tiny_lora
    from triton_inpaint.export.repository import load_pipeline
    from triton_inpaint.export.tiny import write_tiny_checkpoint

    sd = load_pipeline(write_tiny_checkpoint("sd15-inpaint", tmp_path / "sd", seed=0))
    unet_only = write_tiny_lora(sd, tmp_path / "sd.safetensors", text_encoders=False)
    flux = load_pipeline(write_tiny_checkpoint("flux-fill", tmp_path / "flux", seed=0))
    with pytest.raises(ValueError, match=r"LoRA local:ink@1 \(.*sd.safetensors\)"):
        load_adapters(flux, [(A, unet_only)])
    with pytest.raises(FileNotFoundError, match="LoRA local:ink@1: no file"):
        load_adapters(flux, [(A, tmp_path / "missing.safetensors")])
