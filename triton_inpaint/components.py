"""The networks of a checkpoint (SD 1.5/2, SDXL or FLUX Fill), behind one small interface.

The denoising pipelines are written against :class:`SDComponents` and :class:`FluxComponents`. What
runs the networks is a *runner*: a function ``run(model, inputs, outputs) -> arrays`` over the exported
models' tensor names. In Triton the runner is a BLS call; in tests and offline tools it is an
onnxruntime session; for the reference comparison it is the torch module itself. Tensor names are the
ONNX graphs' names, which are also the Triton models' names, so nothing maps names between stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from triton_inpaint.contract import Runner

TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"
VAE_ENCODER = "vae_encoder"
VAE_DECODER = "vae_decoder"
UNET = "unet"
TRANSFORMER = "transformer"

# Input and output tensor names of each exported network, per family. SDXL's text encoders return the
# penultimate hidden states (and the second one its pooled projection); its UNet takes the pooled text
# embeddings and the size/crop time ids as extra conditions.
SD_TENSORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TEXT_ENCODER: (("input_ids",), ("last_hidden_state",)),
    VAE_ENCODER: (("sample",), ("latent_parameters",)),
    VAE_DECODER: (("latent_sample",), ("sample",)),
    UNET: (("sample", "timestep", "encoder_hidden_states"), ("noise_pred",)),
}
SDXL_TENSORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TEXT_ENCODER: (("input_ids",), ("hidden_states",)),
    TEXT_ENCODER_2: (("input_ids",), ("hidden_states", "text_embeds")),
    VAE_ENCODER: SD_TENSORS[VAE_ENCODER],
    VAE_DECODER: SD_TENSORS[VAE_DECODER],
    UNET: (("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"), ("noise_pred",)),
}
# FLUX: CLIP gives only its pooled output, T5 the sequence; the transformer takes packed latents with
# the packed mask and masked-image latents, the guidance value, and the text and image position ids
# (with a batch axis, which diffusers' transformer does not have, so that Triton can batch them).
FLUX_TENSORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TEXT_ENCODER: (("input_ids",), ("pooler_output",)),
    TEXT_ENCODER_2: (("input_ids",), ("last_hidden_state",)),
    VAE_ENCODER: SD_TENSORS[VAE_ENCODER],
    VAE_DECODER: SD_TENSORS[VAE_DECODER],
    TRANSFORMER: (
        (
            "hidden_states",
            "timestep",
            "guidance",
            "pooled_projections",
            "encoder_hidden_states",
            "txt_ids",
            "img_ids",
        ),
        ("noise_pred",),
    ),
}
_TENSORS = {"sd": SD_TENSORS, "sdxl": SDXL_TENSORS, "flux": FLUX_TENSORS}


def network_tensors(architecture: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per network role, its (input names, output names); ``architecture`` is ``sd``, ``sdxl`` or
    ``flux`` (:attr:`PipelineSpec.architecture`)."""
    return _TENSORS[architecture]


class SDComponents(Protocol):
    def encode_text(self, input_ids: torch.Tensor, encoder: str = TEXT_ENCODER) -> tuple[torch.Tensor, ...]:
        """Token ids (B, 77) -> the encoder's outputs, in the order its tensor list names them."""

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> latent distribution parameters (B, 2C, h, w)."""

    def predict_noise(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The UNet's inputs by their names in :data:`SD_TENSORS` / :data:`SDXL_TENSORS` (input
        (B, C_in, h, w), timesteps (B, 1), text states, SDXL's extra conditions) -> noise."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, C, h, w) -> image (B, 3, H, W) in about [-1, 1]."""


class FluxComponents(Protocol):
    def encode_text(self, input_ids: torch.Tensor, encoder: str = TEXT_ENCODER) -> tuple[torch.Tensor, ...]:
        """CLIP ids (B, 77) -> (pooled (B, D),); T5 ids (B, L) -> (states (B, L, D),)."""

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> latent distribution parameters (B, 2C, h, w)."""

    def predict_velocity(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The transformer's inputs by their names in :data:`FLUX_TENSORS` -> prediction (B, S, C)."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled, unpacked latents (B, C, h, w) -> image (B, 3, H, W) in about [-1, 1]."""


def _np(tensor: torch.Tensor, dtype: type = np.float32) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy().astype(dtype, copy=False))


class RunnerComponents:
    """:class:`SDComponents` and :class:`FluxComponents` over a runner that executes the exported
    networks by name.

    ``model_names`` maps the roles to the names the runner knows them by (the Triton model names,
    e.g. ``tiny_unet``); by default the role is the name.
    """

    def __init__(
        self, run: Runner, model_names: dict[str, str] | None = None, architecture: str = "sd"
    ) -> None:
        self._run = run
        self._tensors = network_tensors(architecture)
        self._names = model_names or {role: role for role in self._tensors}

    def _call(self, role: str, arrays: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
        input_names, output_names = self._tensors[role]
        results = self._run(
            self._names[role], dict(zip(input_names, arrays, strict=True)), list(output_names)
        )
        return tuple(torch.from_numpy(np.asarray(result)) for result in results)

    def encode_text(self, input_ids: torch.Tensor, encoder: str = TEXT_ENCODER) -> tuple[torch.Tensor, ...]:
        return self._call(encoder, [_np(input_ids, np.int64)])

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self._call(VAE_ENCODER, [_np(image)])[0]

    def predict_noise(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._call(UNET, [_np(inputs[name]) for name in self._tensors[UNET][0]])[0]

    def predict_velocity(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._call(TRANSFORMER, [_np(inputs[name]) for name in self._tensors[TRANSFORMER][0]])[0]

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """One image at a time: the VAE's memory grows with its batch (quadratically with the size,
        through its attention), its results do not depend on it."""
        return torch.cat([self._call(VAE_DECODER, [_np(latents[i : i + 1])])[0] for i in range(len(latents))])


def onnx_runner(onnx_files: dict[str, Path], threads: int = 0) -> Runner:
    """A runner over onnxruntime CPU sessions, one per exported network, opened as the server opens them
    (the graphs optimised at export, the same thread budget; 0 = automatic)."""
    from triton_inpaint.ort_sessions import open_session

    sessions = {name: open_session(path, threads) for name, path in onnx_files.items()}

    def run(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        return sessions[model].run(outputs, inputs)

    return run


class TorchComponents:
    """The diffusers torch modules themselves: the reference the exported graphs are checked against."""

    def __init__(self, pipeline: object) -> None:
        self._pipe = pipeline
        self._flux = getattr(pipeline, "transformer", None) is not None
        self._sdxl = not self._flux and getattr(pipeline, "text_encoder_2", None) is not None

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, encoder: str = TEXT_ENCODER) -> tuple[torch.Tensor, ...]:
        module = getattr(self._pipe, encoder)
        if self._flux:
            output = module(input_ids, output_hidden_states=False)
            return (output.pooler_output if encoder == TEXT_ENCODER else output[0],)
        if not self._sdxl:
            return (module(input_ids)[0],)
        output = module(input_ids, output_hidden_states=True)
        if encoder == TEXT_ENCODER_2:
            return output.hidden_states[-2], output.text_embeds
        return (output.hidden_states[-2],)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self._pipe.vae.encode(image).latent_dist.parameters

    @torch.no_grad()
    def predict_noise(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        added = None
        if self._sdxl:
            added = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}
        return self._pipe.unet(
            inputs["sample"],
            inputs["timestep"].reshape(-1),
            encoder_hidden_states=inputs["encoder_hidden_states"],
            added_cond_kwargs=added,
        ).sample

    @torch.no_grad()
    def predict_velocity(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._pipe.transformer(
            hidden_states=inputs["hidden_states"],
            timestep=inputs["timestep"].reshape(-1),
            guidance=inputs["guidance"].reshape(-1),
            pooled_projections=inputs["pooled_projections"],
            encoder_hidden_states=inputs["encoder_hidden_states"],
            txt_ids=inputs["txt_ids"][0],
            img_ids=inputs["img_ids"][0],
            return_dict=False,
        )[0]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self._pipe.vae.decode(latents).sample
