"""The request declarations (``triton_inpaint/api/schema.py``) and everything derived from them, no server."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from triton_inpaint.api import contract
from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.schema import INPAINT, MASK, PREPROCESS
from triton_inpaint.tools.reference_tables import render, stale_files

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_contract_is_the_declaration():
    assert [s.name for s in contract.REQUEST_INPUTS] == list(INPAINT.names)
    assert [s.name for s in contract.MASKING_INPUTS] == list(MASK.names)
    for spec, control in zip(contract.REQUEST_INPUTS, INPAINT, strict=True):
        assert spec.data_type == control.data_type
        assert spec.optional == (not control.required)
    assert contract.control_tensor(INPAINT["seed"]).data_type == "TYPE_INT64"
    stage_names = [s.name for s in contract.PREPROCESS_INPUTS]
    assert stage_names == [c.name for c in INPAINT.at(PREPROCESS)]
    every_stage = [*contract.PREPROCESS_INPUTS, *contract.DENOISE_INPUTS, *contract.POSTPROCESS_INPUTS]
    assert set(INPAINT.names) <= {s.name for s in every_stage}, "every control is read by some step"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("steps", 0, "steps: must be an integer in [1, 100], got 0"),
        ("steps", 2.5, "steps: must be an integer in [1, 100], got 2.5"),
        ("steps", "x", "steps: must be an integer, got 'x'"),
        ("strength", 1.5, "strength: must be a number in [0.0, 1.0], got 1.5"),
        ("width", 100, "width: must be a multiple of 8, got 100"),
        ("output_quality", 0, "output_quality: must be an integer in [1, 100], got 0"),
        ("output_format", "gif", "output_format: must be one of PNG, JPG, WEBP, got 'gif'"),
        ("prompt", None, "prompt: is required"),
    ],
)
def test_checks_name_the_field_and_what_it_allows(name, value, message):
    with pytest.raises(InvalidInputError) as info:
        INPAINT[name].check(value)
    assert str(info.value) == message


def test_checks_normalise_and_default():
    assert INPAINT["output_format"].check("jpeg") == "JPG"
    assert INPAINT["output_format"].check(None) == "PNG"
    assert INPAINT["output_format"].check("") == "PNG"
    assert INPAINT["output_quality"].check(None) == 95
    assert INPAINT["mask_expand"].check(3.0) == 3 and isinstance(INPAINT["mask_expand"].check(3.0), int)
    assert INPAINT["steps"].check(None) is None  # the served model decides
    assert MASK["confidence"].check(None) == 0.25


def test_client_keywords_are_the_controls():
    from triton_inpaint.client import GatewayClient, InpaintClient

    keywords = [
        name
        for name, p in inspect.signature(InpaintClient.inpaint).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert keywords == [n for n in INPAINT.names if n not in ("image", "mask", "prompt")]
    gateway = inspect.signature(GatewayClient.inpaint).parameters
    assert "dry_run" not in gateway and "output_quality" in gateway  # only what /v1 offers
    with pytest.raises(TypeError, match="stepz"):
        InpaintClient.inpaint(None, "tiny", b"", None, "x", stepz=3)


def test_gateway_task_fields_are_the_declared_names_and_ranges():
    from pydantic import ValidationError

    from triton_inpaint.gateway.eden.protocol import InpaintingArgs
    from triton_inpaint.gateway.runware.protocol import ImageInferenceTask
    from triton_inpaint.gateway.validation import field_bounds, field_errors

    offered = {c.runware for c in INPAINT if c.runware and "." not in c.runware}
    assert offered <= set(ImageInferenceTask.model_fields)
    nested = {c.runware for c in INPAINT if c.runware and "." in c.runware}  # object.field
    objects = {owner: ImageInferenceTask.model_fields[owner].annotation.__args__[0] for owner in
               ("outpaint", "acceleratorOptions")}  # fmt: skip
    assert nested == {f"{owner}.{name}" for owner, model in objects.items() for name in model.model_fields}
    assert field_bounds(objects["outpaint"], "blur") == INPAINT["outpaint_blur"].bounds
    assert field_bounds(objects["acceleratorOptions"], "deepCacheInterval") == (1, 20)
    assert objects["acceleratorOptions"].__name__ == "AcceleratorOptions"  # as the SDKs name it
    documented = ImageInferenceTask.model_json_schema()["$defs"]["AcceleratorOptions"]["properties"]
    assert documented["deepCacheInterval"]["anyOf"][0] == {"maximum": 20, "minimum": 1, "type": "integer"}
    assert {c.eden for c in INPAINT if c.eden} <= set(InpaintingArgs.model_fields)
    assert InpaintingArgs.model_fields["mask_blur"].default == INPAINT["mask_blur"].eden_default
    base = {"taskType": "imageInference", "taskUUID": "3738f7ee-392d-4fae-927d-604abf2de01b", "model": "m"}
    task = {**base, "positivePrompt": "a cat", "seedImage": "x", "outputQuality": 0}
    with pytest.raises(ValidationError) as info:
        ImageInferenceTask.model_validate(task)
    assert field_errors(ImageInferenceTask, info.value) == [("outputQuality", "must be in [1, 100], got 0")]
    with pytest.raises(ValidationError) as info:
        ImageInferenceTask.model_validate({**task, "outputQuality": 90, "outpaint": {"top": 64, "up": 64}})
    ((field, message),) = field_errors(ImageInferenceTask, info.value)
    assert field == "outpaint.up" and message.endswith("its fields are: top, right, bottom, left, blur")


def test_docs_tables_are_current():
    stale = stale_files(sorted((REPO_ROOT / "docs").glob("*.md")))
    assert not stale, f"regenerate with: python -m triton_inpaint.tools.reference_tables --write ({stale})"
    assert "`outputQuality`" in (REPO_ROOT / "docs" / "controls.md").read_text()
    with pytest.raises(KeyError, match="unknown generated table"):
        render("<!-- generated: nope -->\n<!-- end generated -->")


# A reviewer's throw-away control: declared once, it must appear everywhere that is derived.
_THROWAWAY = """
import dataclasses, inspect, json, sys
from triton_inpaint.api import schema
extra = schema.Control("sharpness", int, "sharpen the result", schema.POSTPROCESS, bounds=(0, 10), default=0,
                       runware="sharpness", eden="sharpness", flag="--sharpen")
schema.INPAINT = dataclasses.replace(schema.INPAINT, controls=(*schema.INPAINT.controls, extra))
from triton_inpaint.api import contract
from triton_inpaint.client import InpaintClient, GatewayClient
from triton_inpaint.client.cli import add_controls
from triton_inpaint.gateway.eden.protocol import InpaintingArgs
from triton_inpaint.gateway.runware.protocol import ImageInferenceTask
from triton_inpaint.tools.reference_tables import controls_table
import argparse
parser = argparse.ArgumentParser()
add_controls(parser, schema.INPAINT, schema.MASK_SOURCES)
args = parser.parse_args(["--image", "a.png", "--mask", "m.png", "--prompt", "p", "--sharpen", "3"])
print(json.dumps({
    "ensemble": [s.name for s in contract.REQUEST_INPUTS],
    "postprocess": [s.name for s in contract.POSTPROCESS_INPUTS],
    "client": list(inspect.signature(InpaintClient.inpaint).parameters),
    "gateway_client": list(inspect.signature(GatewayClient.inpaint).parameters),
    "cli": args.sharpness,
    "task": ImageInferenceTask.model_fields["sharpness"].default,
    "eden": "sharpness" in InpaintingArgs.model_fields,
    "docs": "`--sharpen`" in controls_table(schema.INPAINT),
}))
"""


def test_a_new_control_is_one_declaration():
    result = subprocess.run(
        [sys.executable, "-c", _THROWAWAY], capture_output=True, text=True, timeout=120, check=True
    )
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert "sharpness" in found["ensemble"] and "sharpness" in found["postprocess"]
    assert "sharpness" in found["client"] and "sharpness" in found["gateway_client"]
    assert found["cli"] == 3 and found["task"] == 0 and found["eden"] and found["docs"]
