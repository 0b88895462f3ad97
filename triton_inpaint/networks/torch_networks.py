"""Each network of a checkpoint as a torch module that takes the tensor contract's inputs by name and
returns its outputs: the form the ONNX export traces, the ``gpu-torch`` runtime serves, and the parity
reference (:class:`~triton_inpaint.networks.runners.TorchComponents`) runs. One place for how a role calls
its diffusers or transformers module.

The ``gpu-torch`` runtime keeps each network's modules in its Triton model's version directory
(``save_pretrained`` layout, in the precision it serves) with ``network.json`` naming the role, the
architecture and the module classes; :func:`load_network` rebuilds the role's module from them.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from triton_inpaint.api.roles import (
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    TRANSFORMER,
    TRANSFORMER_HEAD,
    TRANSFORMER_TAIL,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
    base_role,
    network_tensors,
)
from triton_inpaint.networks.deep_cache import DeepCacheUnet, ShallowUnet
from triton_inpaint.networks.first_block import FirstBlock, FullTransformer, RemainingBlocks
from triton_inpaint.networks.lora import LoraNetwork, lora_scales_of
from triton_inpaint.networks.precision import FP32_INPUTS

NETWORK_FILE = "network.json"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The pipeline attributes each role's module is built from.
ROLE_SOURCES = {
    TEXT_ENCODER: ("text_encoder",),
    TEXT_ENCODER_2: ("text_encoder_2",),
    VAE_ENCODER: ("vae",),
    VAE_DECODER: ("vae",),
    UNET: ("unet",),
    TRANSFORMER: ("transformer",),
}


class TextEncoder(torch.nn.Module):
    """SD: the last hidden state. SDXL: the penultimate hidden state (and the pooled projection)."""

    def __init__(self, text_encoder: torch.nn.Module, sdxl: bool, pooled: bool) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.sdxl = sdxl
        self.pooled = pooled

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.sdxl:
            return self.text_encoder(input_ids, return_dict=False)[0]
        output = self.text_encoder(input_ids, output_hidden_states=True)
        if self.pooled:
            return output.hidden_states[-2], output.text_embeds
        return output.hidden_states[-2]


class FluxTextEncoder(torch.nn.Module):
    """FLUX: CLIP's pooled output, or T5's last hidden state."""

    def __init__(self, text_encoder: torch.nn.Module, pooled: bool) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.pooled = pooled

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        output = self.text_encoder(input_ids, output_hidden_states=False)
        return output.pooler_output if self.pooled else output[0]


class VaeEncoder(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(sample).latent_dist.parameters


class VaeDecoder(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample).sample


class Unet(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Timesteps arrive as (B, 1) so that Triton's batched dims ([1]) need no reshape.
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(
            sample,
            timestep.reshape(-1),
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]


class FluxTransformer(torch.nn.Module):
    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        guidance: torch.Tensor,
        pooled_projections: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        txt_ids: torch.Tensor,
        img_ids: torch.Tensor,
    ) -> torch.Tensor:
        # Scalars arrive as (B, 1) and position ids with a batch axis, for Triton's batching; every
        # item of a batch has the same ids, so the first one's are diffusers' 2-D ids.
        return self.transformer(
            hidden_states=hidden_states,
            timestep=timestep.reshape(-1),
            guidance=guidance.reshape(-1),
            pooled_projections=pooled_projections,
            encoder_hidden_states=encoder_hidden_states,
            txt_ids=txt_ids[0],
            img_ids=img_ids[0],
            return_dict=False,
        )[0]


def pipeline_architecture(pipeline: object) -> str:
    """``sd``, ``sdxl`` or ``flux``: which networks a diffusers pipeline has."""
    if getattr(pipeline, "transformer", None) is not None:
        return "flux"
    return "sdxl" if getattr(pipeline, "text_encoder_2", None) is not None else "sd"


def role_module(
    source: Any,
    architecture: str,
    role: str,
    deep_cache_branches: tuple[int, ...] = (),
    first_block_cache: bool = False,
) -> torch.nn.Module:
    """The module that runs ``role``, over the attributes of ``source`` (a diffusers pipeline, or just
    the modules that role needs); in eval mode. With ``deep_cache_branches`` the UNet also returns
    their features; with ``first_block_cache`` FLUX's transformer also returns its residuals (and has
    its halves). Its ``output_names`` are the role's outputs, in the order it returns them."""
    unet_roles = {UNET: None} | {f"{UNET}_shallow_{b}": b for b in deep_cache_branches}
    if role in (TEXT_ENCODER, TEXT_ENCODER_2):
        encoder = getattr(source, role)
        if architecture == "flux":
            module = FluxTextEncoder(encoder, pooled=role == TEXT_ENCODER)
        else:
            module = TextEncoder(encoder, architecture == "sdxl", pooled=role == TEXT_ENCODER_2)
    elif role == VAE_ENCODER:
        module = VaeEncoder(source.vae)
    elif role == VAE_DECODER:
        module = VaeDecoder(source.vae)
    elif role == UNET:
        module = DeepCacheUnet(source.unet, deep_cache_branches) if deep_cache_branches else Unet(source.unet)
    elif role in unet_roles:
        module = ShallowUnet(source.unet, unet_roles[role])
    elif role == TRANSFORMER:
        whole = FullTransformer if first_block_cache else FluxTransformer
        module = whole(source.transformer)
    elif role == TRANSFORMER_HEAD:
        module = FirstBlock(source.transformer)
    elif role == TRANSFORMER_TAIL:
        module = RemainingBlocks(source.transformer)
    else:
        raise ValueError(f"unknown network role {role!r}")
    # A network exported with LoRA adapters takes their weights as its last input.
    scales = lora_scales_of(getattr(source, ROLE_SOURCES[base_role(role)][0]))
    if scales is not None:
        module = LoraNetwork(module, scales)
    module.output_names = network_tensors(architecture, (), deep_cache_branches, first_block_cache)[role][1]
    return module.eval()


def role_modules(
    source: Any, architecture: str, deep_cache_branches: tuple[int, ...] = (), first_block_cache: bool = False
) -> dict[str, torch.nn.Module]:
    """Every network of ``architecture`` (``sd``, ``sdxl``, ``flux``) as its role's module, with the
    step-caching networks asked for."""
    roles = network_tensors(architecture, (), deep_cache_branches, first_block_cache)
    caches = (deep_cache_branches, first_block_cache)
    return {role: role_module(source, architecture, role, *caches) for role in roles}


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def call_network(
    module: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str], device: torch.device
) -> list[torch.Tensor]:
    """Run a role's module on the contract's inputs (by position, in the role's input order: the
    order of ``inputs``): floating inputs in the module's precision on its device, except the timestep
    and guidance, which stay float32 as diffusers passes them (:data:`FP32_INPUTS`); the ``outputs``
    asked back as float32 (the contract's type, whatever precision the module runs in)."""
    dtype = module_dtype(module)
    half = {name for name, value in inputs.items() if value.is_floating_point() and name not in FP32_INPUTS}
    feed = [value.to(device=device, dtype=dtype if name in half else None) for name, value in inputs.items()]
    with torch.no_grad():
        result = module(*feed)
    results = [result] if isinstance(result, torch.Tensor) else list(result)
    names = list(getattr(module, "output_names", outputs))
    if len(results) != len(names) or not set(outputs) <= set(names):
        raise ValueError(f"the network returns {names}, asked for {outputs}")
    produced = dict(zip(names, results, strict=True))
    return [produced[name].float() for name in outputs]


def torch_runner(modules: dict[str, torch.nn.Module], device: str | torch.device = "cpu") -> Any:
    """A tensor runner (torch in, torch out, see :class:`~triton_inpaint.networks.runners.RunnerComponents`)
    over role modules, by role name."""
    device = torch.device(device)

    def run(model: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> list[torch.Tensor]:
        return call_network(modules[model], inputs, outputs, device)

    return run


def _class_path(module: torch.nn.Module) -> str:
    package = type(module).__module__.split(".")[0]
    return f"{package}.{type(module).__name__}"


def _load_class(path: str) -> type:
    package, name = path.rsplit(".", 1)
    if package not in ("diffusers", "transformers"):
        raise ValueError(f"{NETWORK_FILE}: module class {path!r} is not a diffusers or transformers class")
    return getattr(importlib.import_module(package), name)


def save_network(
    pipeline: Any,
    architecture: str,
    role: str,
    directory: Path,
    precision: str,
    deep_cache_branches: tuple[int, ...] = (),
    shared: Path | None = None,
    first_block_cache: bool = False,
) -> None:
    """Write what ``role`` needs to run under the ``gpu-torch`` runtime into ``directory``, in
    ``precision`` (the network's own: triton_inpaint.networks.precision): its modules' weights, or with
    ``shared`` (a DeepCache shallow UNet) where the UNet's weights were saved, so they are on disk once."""
    directory.mkdir(parents=True, exist_ok=True)
    classes, dtypes = {}, {}
    for attribute in ROLE_SOURCES[base_role(role)]:
        module = getattr(pipeline, attribute)
        classes[attribute] = _class_path(module)
        dtype = PRECISIONS[precision]
        dtypes[attribute] = str(dtype).removeprefix("torch.")
        if shared is not None:
            continue
        # Saved as loaded, in shards of at most 2 GB, then converted shard by shard: the pipeline's own
        # module stays untouched (the export checks against it) and no second copy is held in memory.
        module.save_pretrained(directory / attribute, safe_serialization=True, max_shard_size="2GB")
        if dtype != module_dtype(module):
            for shard in sorted((directory / attribute).glob("*.safetensors")):
                _convert_shard(shard, dtype)
    description = {
        "role": role,
        "architecture": architecture,
        "precision": precision,
        "modules": classes,
        "dtypes": dtypes,  # as stored: loading asks for them, not for float32 first and a cast after
        "deep_cache_branches": list(deep_cache_branches),
        "first_block_cache": first_block_cache,
    }
    if shared is not None:
        description["weights_from"] = os.path.relpath(shared, directory)
    (directory / NETWORK_FILE).write_text(json.dumps(description, indent=2) + "\n")


def _convert_shard(path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    converted = {name: t.to(dtype) if t.is_floating_point() else t for name, t in tensors.items()}
    partial = path.with_suffix(".partial")
    save_file(converted, str(partial), metadata={"format": "pt"})
    partial.replace(path)


def load_network(
    directory: Path, device: str | torch.device = "cpu", precision: str | None = None
) -> tuple[str, torch.nn.Module]:
    """(role, module) of a network saved by :func:`save_network`, on ``device``, in the precision it was
    saved for unless ``precision`` says otherwise."""
    description = json.loads((directory / NETWORK_FILE).read_text())
    weights = directory / description.get("weights_from", ".")
    modules = {}
    for attribute, class_path in description["modules"].items():
        cls = _load_class(class_path)
        if precision is None:
            dtype = getattr(torch, description["dtypes"][attribute])
        else:
            dtype = PRECISIONS[precision]
        # Loaded straight into that dtype: left to themselves, both libraries would build the module
        # in float32 (twice the memory of fp16 weights) and the cast would come after.
        keyword = "torch_dtype" if class_path.startswith("diffusers.") else "dtype"
        modules[attribute] = cls.from_pretrained(weights / attribute, **{keyword: dtype})
    role = description["role"]
    branches = tuple(description.get("deep_cache_branches", ()))
    first_block = bool(description.get("first_block_cache", False))
    module = role_module(SimpleNamespace(**modules), description["architecture"], role, branches, first_block)
    inner = module.inner if isinstance(module, LoraNetwork) else module
    if hasattr(inner, "prune"):  # a step-caching network: this process holds only the layers it runs
        inner.prune()
    return role, module.to(device=device)
