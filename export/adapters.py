"""LoRA adapters at export: a model's declared adapter files loaded into its pipeline and banked into
its networks (:mod:`triton_inpaint.networks.lora`), and tiny random adapters for tests and demos.

Files are read by diffusers' own ``load_lora_weights`` (diffusers, kohya and the other formats it
converts), so an adapter means here what it means in diffusers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from triton_inpaint.networks.lora import bank_adapters
from triton_inpaint.networks.runners import TEXT_ENCODER, TEXT_ENCODER_2, TRANSFORMER, UNET

# The networks diffusers' LoRA loaders may touch, by role, with the pipeline attribute holding each.
LORA_ROLES = {TEXT_ENCODER: "text_encoder", TEXT_ENCODER_2: "text_encoder_2", UNET: "unet",
              TRANSFORMER: "transformer"}  # fmt: skip


@contextmanager
def _quiet() -> Iterator[None]:
    """diffusers, transformers and peft report every other adapter's keys as "missing" while one
    loads, and a load report per text encoder: noise in an export's log."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


def _touched(module: torch.nn.Module | None, adapter: str) -> bool:
    return module is not None and any(
        adapter in getattr(layer, "lora_A", {}) for layer in module.modules() if hasattr(layer, "base_layer")
    )


def load_adapters(pipeline: object, adapters: Sequence[tuple[str, Path]]) -> tuple[str, ...]:
    """Load each (id, file) into ``pipeline`` and bank them all into its networks, in this order (the
    order of the ``lora_scales`` columns). Returns the roles whose networks now hold adapters."""
    names = [f"adapter_{index}" for index in range(len(adapters))]
    modules = {role: getattr(pipeline, attribute, None) for role, attribute in LORA_ROLES.items()}
    for (model_id, path), name in zip(adapters, names, strict=True):
        if not Path(path).is_file():
            raise FileNotFoundError(f"LoRA {model_id}: no file {path}")
        try:
            with _quiet():
                pipeline.load_lora_weights(str(path), adapter_name=name)
        except Exception as exc:  # noqa: BLE001 - diffusers' many formats fail in many ways
            raise ValueError(
                f"LoRA {model_id} ({path}): diffusers cannot load it for this checkpoint: {exc}"
            ) from exc
        if not any(_touched(module, name) for module in modules.values()):
            raise ValueError(
                f"LoRA {model_id} ({path}) matches no layer of this checkpoint: is it for another family?"
            )
    roles = []
    for role, module in modules.items():
        if module is not None and bank_adapters(module, names, role, [model_id for model_id, _ in adapters]):
            roles.append(role)
    return tuple(roles)


def _std(name: str, parameter: torch.Tensor) -> float:
    """A trained adapter's scale at any size: ``A`` keeps its input's magnitude, ``B`` makes the update
    about a third of the layer's own output at weight 1. (Larger random updates make real-size networks
    numerically chaotic: torch and onnxruntime then disagree for reasons that are not the export's.)"""
    if "lora_A" in name:
        return 1 / math.sqrt(math.prod(parameter.shape[1:]))
    return 0.075 / math.sqrt(parameter.shape[1])


def write_tiny_lora(
    pipeline: object, path: Path, seed: int = 0, rank: int = 4, text_encoders: bool = True
) -> Path:
    """A random LoRA for ``pipeline``'s family in diffusers' format (with its alpha in the metadata):
    the attention projections of the denoiser and, with ``text_encoders``, of the CLIP text encoders,
    at a trained adapter's scale (:func:`_std`). Same seed, same weights. The pipeline's modules get
    the adapter and lose it again."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    generator = torch.Generator().manual_seed(seed)
    denoiser_key = "transformer" if getattr(pipeline, "transformer", None) is not None else "unet"
    targets = {denoiser_key: ["to_q", "to_k", "to_v", "to_out.0"]}
    if text_encoders:
        for attribute in ("text_encoder", "text_encoder_2"):
            module = getattr(pipeline, attribute, None)
            if module is not None and type(module).__name__.startswith("CLIP"):
                targets[attribute] = ["q_proj", "k_proj", "v_proj", "out_proj"]
    layers, metadata = {}, {}
    for attribute, target_modules in targets.items():
        module = getattr(pipeline, attribute)
        config = LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=target_modules, init_lora_weights=False
        )
        with _quiet():
            module.add_adapter(config, adapter_name="tiny")
        for name, parameter in module.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                with torch.no_grad():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * _std(name, parameter))
        layers[f"{attribute}_lora_layers"] = get_peft_model_state_dict(module, adapter_name="tiny")
        metadata[f"{attribute}_lora_adapter_metadata"] = config.to_dict()
        # diffusers' models and transformers' models name the method differently
        delete = getattr(module, "delete_adapters", None) or module.delete_adapter
        delete("tiny")
    path.parent.mkdir(parents=True, exist_ok=True)
    type(pipeline).save_lora_weights(path.parent, weight_name=path.name, **layers, **metadata)
    return path
