"""The four networks of a Stable Diffusion checkpoint, behind one small interface.

The denoising pipeline is written once against :class:`SDComponents`. What runs the networks is a
*runner*: a function ``run(model, inputs, output) -> array`` over the exported models' tensor names.
In Triton the runner is a BLS call; in tests and offline tools it is an onnxruntime session; for the
reference comparison it is the torch module itself. Tensor names are the ONNX graphs' names, which are
also the Triton models' names, so nothing maps names between stages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

TEXT_ENCODER = "text_encoder"
VAE_ENCODER = "vae_encoder"
VAE_DECODER = "vae_decoder"
UNET = "unet"
SUBMODELS = (TEXT_ENCODER, VAE_ENCODER, VAE_DECODER, UNET)

# Input and output tensor names of each exported network.
TENSORS: dict[str, tuple[tuple[str, ...], str]] = {
    TEXT_ENCODER: (("input_ids",), "last_hidden_state"),
    VAE_ENCODER: (("sample",), "latent_parameters"),
    VAE_DECODER: (("latent_sample",), "sample"),
    UNET: (("sample", "timestep", "encoder_hidden_states"), "noise_pred"),
}

Runner = Callable[[str, dict[str, np.ndarray], str], np.ndarray]


class SDComponents(Protocol):
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, 77) -> CLIP last hidden state (B, 77, D)."""

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> latent distribution parameters (B, 2C, h, w)."""

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """UNet input (B, C_in, h, w), timesteps (B, 1), text states -> predicted noise (B, C, h, w)."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, C, h, w) -> image (B, 3, H, W) in about [-1, 1]."""


def _np(tensor: torch.Tensor, dtype: type = np.float32) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy().astype(dtype, copy=False))


class RunnerComponents:
    """:class:`SDComponents` over a runner that executes the exported networks by name.

    ``model_names`` maps the four roles to the names the runner knows them by (the Triton model
    names, e.g. ``tiny_unet``); by default the role is the name.
    """

    def __init__(self, run: Runner, model_names: dict[str, str] | None = None) -> None:
        self._run = run
        self._names = model_names or {role: role for role in SUBMODELS}

    def _call(self, role: str, *arrays: np.ndarray) -> torch.Tensor:
        input_names, output_name = TENSORS[role]
        result = self._run(self._names[role], dict(zip(input_names, arrays, strict=True)), output_name)
        return torch.from_numpy(np.asarray(result))

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._call(TEXT_ENCODER, _np(input_ids, np.int64))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self._call(VAE_ENCODER, _np(image))

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self._call(UNET, _np(sample), _np(timestep), _np(encoder_hidden_states))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self._call(VAE_DECODER, _np(latents))


def onnx_runner(onnx_files: dict[str, Path], threads: int = 0) -> Runner:
    """A runner over onnxruntime CPU sessions, one per exported network."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {
        name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for name, path in onnx_files.items()
    }

    def run(model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        return sessions[model].run([output], inputs)[0]

    return run


class TorchComponents:
    """The diffusers torch modules themselves: the reference the exported graphs are checked against."""

    def __init__(self, pipeline: object) -> None:
        self._pipe = pipeline

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._pipe.text_encoder(input_ids)[0]

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self._pipe.vae.encode(image).latent_dist.parameters

    @torch.no_grad()
    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self._pipe.unet(
            sample, timestep.reshape(-1), encoder_hidden_states=encoder_hidden_states
        ).sample

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self._pipe.vae.decode(latents).sample
