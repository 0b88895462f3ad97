"""``export clipseg``: an operator's CLIPSeg weights as Triton models for mask prompts no detector answers.

``--weights`` is a transformers folder of a ``CLIPSegForImageSegmentation`` (for example a download of
CIDAS/clipseg-rd64-refined: config.json, the weights, the tokenizer and preprocessor files). The network
is exported to ONNX and checked against PyTorch on the bundled sample photo; the processor is saved
beside the ``text_segmentation`` model that tokenizes and preprocesses. Written into a scratch folder
and moved into the repository only when the check passed.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from triton_inpaint.api import contract
from triton_inpaint.api.contract import TensorSpec
from triton_inpaint.export.onnx_export import OPSET
from triton_inpaint.export.repository import move_into, python_model_config, write_config, write_model_py
from triton_inpaint.masks.text_segmentation import (
    NETWORK_INPUTS,
    NETWORK_OUTPUT,
    load_processor,
    network_inputs,
)

CHECK_PHRASES = ("a person", "the sky")
MAX_DIFF = 1e-3  # |onnx - torch| on the logits, relative to max(1, |logits|)


@dataclass(frozen=True)
class ClipsegCheck:
    model: str
    max_abs_diff: float
    path: Path


def _load(weights: Path) -> tuple[object, object]:
    """The model and its processor, or an error saying what the folder lacks."""
    from transformers import CLIPSegForImageSegmentation

    config_file = weights / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"--weights {weights}: no config.json; expected a transformers CLIPSeg folder"
        )
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "clipseg":
        raise ValueError(
            f"--weights {weights}: config.json says model_type {model_type!r}, expected 'clipseg'"
        )
    try:
        processor = load_processor(weights)
    except (OSError, ValueError, TypeError) as exc:
        raise FileNotFoundError(
            f"--weights {weights}: cannot load the CLIPSeg processor (tokenizer and preprocessor files "
            f"saved with the weights): {exc}"
        ) from None
    model = CLIPSegForImageSegmentation.from_pretrained(weights).eval()
    # A folder without vocabulary files still loads, as a tokenizer that knows only its special tokens.
    tokens, expected = len(processor.tokenizer), model.config.text_config.vocab_size
    if tokens != expected:
        raise FileNotFoundError(
            f"--weights {weights}: the tokenizer has {tokens} tokens, the text model {expected}; its files "
            "(tokenizer.json, or vocab.json and merges.txt) are missing or belong to another model"
        )
    return model, processor


def _sample_image() -> np.ndarray:
    from PIL import Image

    data = resources.files("triton_inpaint.assets").joinpath("sample.png").read_bytes()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _export_network(model: object, example: dict[str, np.ndarray], path: Path) -> None:
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, pixel_values):  # noqa: ANN001, ANN201
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values
            ).logits

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            Logits(model),
            tuple(torch.from_numpy(example[name]) for name in NETWORK_INPUTS),
            str(path),
            input_names=list(NETWORK_INPUTS),
            output_names=[NETWORK_OUTPUT],
            dynamic_axes={name: {0: "phrases"} for name in (*NETWORK_INPUTS, NETWORK_OUTPUT)},
            opset_version=OPSET,
            dynamo=False,
        )


def _check(model: object, example: dict[str, np.ndarray], path: Path) -> float:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run([NETWORK_OUTPUT], example)
    with torch.no_grad():
        want = model(**{name: torch.from_numpy(value) for name, value in example.items()}).logits.numpy()
    diff = float(np.abs(got - want.reshape(got.shape)).max())
    if not diff <= MAX_DIFF * max(1.0, float(np.abs(want).max())):
        raise RuntimeError(f"{path}: ONNX differs from PyTorch by {diff:.2e} on the sample")
    return diff


def export_clipseg(weights: Path, repository: Path, log: Callable[[str], None] = print) -> ClipsegCheck:
    """Write ``text_segmentation_network`` (the ONNX network) and ``text_segmentation`` (processor +
    BLS) into ``repository``; the image_masking model then answers any mask prompt."""
    model, processor = _load(weights)
    example = network_inputs(processor, _sample_image(), CHECK_PHRASES)
    length = example["input_ids"].shape[1]
    size = example["pixel_values"].shape[2:]
    repository.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-clipseg-", dir=repository.parent))
    try:
        network_dir = scratch / contract.TEXT_SEGMENTATION_NETWORK
        onnx_path = network_dir / "1" / "model.onnx"
        millions = sum(p.numel() for p in model.parameters()) / 1e6
        log(f"exporting CLIPSeg ({millions:.1f} M parameters) to ONNX ...")
        _export_network(model, example, onnx_path)
        diff = _check(model, example, onnx_path)
        log(f"{contract.TEXT_SEGMENTATION_NETWORK:<26} max |onnx - torch| = {diff:.1e} on the sample")
        network_tensors = (
            TensorSpec("input_ids", "TYPE_INT64", (-1, length)),
            TensorSpec("attention_mask", "TYPE_INT64", (-1, length)),
            TensorSpec("pixel_values", "TYPE_FP32", (-1, 3, *size)),
        )
        network_output = (TensorSpec(NETWORK_OUTPUT, "TYPE_FP32", (-1, *size)),)
        write_config(
            network_dir,
            python_model_config(contract.TEXT_SEGMENTATION_NETWORK, network_tensors, network_output),
        )
        write_model_py(onnx_path.parent, "triton_inpaint.triton.onnx_model")

        wrapper = scratch / contract.TEXT_SEGMENTATION_MODEL
        write_model_py(wrapper / "1", "triton_inpaint.triton.text_segmentation")
        processor.save_pretrained(wrapper / "1")
        wrapper_config = python_model_config(
            contract.TEXT_SEGMENTATION_MODEL,
            contract.TEXT_SEGMENTATION_INPUTS,
            contract.TEXT_SEGMENTATION_OUTPUTS,
        )
        write_config(wrapper, wrapper_config)
        move_into(scratch, repository)
        return ClipsegCheck(
            contract.TEXT_SEGMENTATION_NETWORK, diff, repository / onnx_path.relative_to(scratch)
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
