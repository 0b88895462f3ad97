"""The networks of a checkpoint (SD 1.5/2, SDXL or FLUX Fill), behind one small interface.

The denoising pipelines are written against :class:`SDComponents` and :class:`FluxComponents`. What
runs the networks is a *runner*: a function ``run(model, inputs, outputs) -> arrays`` over the exported
models' tensor names. In Triton the runner is a BLS call; in tests and offline tools it is an
onnxruntime session; for the reference comparison it is the torch module itself. Tensor names are the
ONNX graphs' names, which are also the Triton models' names, so nothing maps names between stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from triton_inpaint.api.contract import Runner
from triton_inpaint.api.errors import NonFiniteOutputError
from triton_inpaint.api.roles import (  # noqa: F401 - the names every runner user imports from here
    FLUX_TENSORS,
    SD_TENSORS,
    SDXL_TENSORS,
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    TRANSFORMER,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
    network_tensors,
)


class SDComponents(Protocol):
    def encode_text(
        self, input_ids: torch.Tensor, encoder: str = TEXT_ENCODER, lora_scales: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Token ids (B, 77) -> the encoder's outputs, in the order its tensor list names them;
        ``lora_scales`` (B, adapters) for an encoder exported with LoRA adapters."""

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> latent distribution parameters (B, 2C, h, w)."""

    def predict_noise(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The UNet's inputs by their names in :data:`SD_TENSORS` / :data:`SDXL_TENSORS` (input
        (B, C_in, h, w), timesteps (B, 1), text states, SDXL's extra conditions) -> noise."""

    def run_network(
        self, role: str, inputs: dict[str, torch.Tensor], outputs: tuple[str, ...], check: bool = True
    ) -> dict[str, torch.Tensor]:
        """Any of the denoiser's networks (the UNet, a DeepCache shallow UNet) by role, its inputs by
        tensor name, the ``outputs`` asked by name; refused when not finite unless ``check`` is False."""

    def check_finite(self, role: str, outputs: dict[str, torch.Tensor]) -> None:
        """Raise NonFiniteOutputError, naming the network and its precision, on NaN or Inf."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, C, h, w) -> image (B, 3, H, W) in about [-1, 1]."""


class FluxComponents(Protocol):
    def encode_text(
        self, input_ids: torch.Tensor, encoder: str = TEXT_ENCODER, lora_scales: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """CLIP ids (B, 77) -> (pooled (B, D),); T5 ids (B, L) -> (states (B, L, D),)."""

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> latent distribution parameters (B, 2C, h, w)."""

    def predict_velocity(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The transformer's inputs by their names in :data:`FLUX_TENSORS` -> prediction (B, S, C)."""

    def run_network(
        self, role: str, inputs: dict[str, torch.Tensor], outputs: tuple[str, ...], check: bool = True
    ) -> dict[str, torch.Tensor]:
        """Any of the denoiser's networks (the transformer, its halves) by role (see SDComponents)."""

    def check_finite(self, role: str, outputs: dict[str, torch.Tensor]) -> None:
        """See SDComponents."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled, unpacked latents (B, C, h, w) -> image (B, 3, H, W) in about [-1, 1]."""


def _np(tensor: torch.Tensor) -> np.ndarray:
    dtype = np.float32 if tensor.is_floating_point() else np.int64
    return np.ascontiguousarray(tensor.detach().cpu().numpy().astype(dtype, copy=False))


class RunnerComponents:
    """:class:`SDComponents` and :class:`FluxComponents` over a runner that executes the exported
    networks by name.

    ``model_names`` maps the roles to the names the runner knows them by (the Triton model names,
    e.g. ``tiny_unet``); by default the role is the name. ``lora_roles``: the networks exported with
    LoRA adapters, which take the ``lora_scales`` input (:attr:`PipelineSpec.lora_roles`);
    ``deep_cache_branches`` and ``first_block_cache``: the step-caching networks exported beside the
    denoiser (:func:`~triton_inpaint.api.roles.network_tensors`); ``precisions``: each role's served
    precision, which a non-finite output's error names (:meth:`for_spec` reads all four). Without
    ``device`` the runner takes and returns numpy arrays (onnxruntime, BLS on the CPU runtime). With
    one it is a *tensor runner*: torch tensors in and out, so that on a GPU the latents and
    embeddings stay on ``device`` between calls (BLS over DLPack, or the torch modules themselves);
    the pipelines then work on that device.
    """

    def __init__(
        self,
        run: Runner,
        model_names: dict[str, str] | None = None,
        architecture: str = "sd",
        device: str | torch.device | None = None,
        lora_roles: tuple[str, ...] = (),
        deep_cache_branches: tuple[int, ...] = (),
        first_block_cache: bool = False,
        precisions: dict[str, str] | None = None,
    ) -> None:
        self._run = run
        self._tensors = network_tensors(architecture, lora_roles, deep_cache_branches, first_block_cache)
        self._lora_roles = lora_roles
        self._precisions = precisions or {}
        self._names = model_names or {role: role for role in self._tensors}
        self._tensor_runner = device is not None
        self.device = torch.device("cpu" if device is None else device)

    @classmethod
    def for_spec(
        cls,
        run: Runner,
        spec: Any,
        model_names: dict[str, str] | None = None,
        device: str | torch.device | None = None,
    ) -> RunnerComponents:
        """Components over every network an export with ``spec`` (its PipelineSpec) serves."""
        return cls(
            run, model_names, spec.architecture, device, spec.lora_roles, spec.deep_cache_branches,
            spec.first_block_cache, spec.precisions,
        )  # fmt: skip

    def _feed(self, tensor: torch.Tensor) -> Any:
        if not self._tensor_runner:
            return _np(tensor)
        dtype = torch.float32 if tensor.is_floating_point() else torch.int64
        return tensor.to(device=self.device, dtype=dtype).contiguous()

    def _call(
        self,
        role: str,
        tensors: list[torch.Tensor],
        outputs: tuple[str, ...] | None = None,
        check: bool = True,
    ) -> tuple[torch.Tensor, ...]:
        """One call of ``role``'s network; with ``check`` its outputs are refused when not finite
        (a batched denoiser call is checked by each job on its own rows instead, so that one request's
        overflow fails that request alone)."""
        input_names, output_names = self._tensors[role]
        feeds = [self._feed(tensor) for tensor in tensors]
        asked = list(output_names if outputs is None else outputs)
        results = self._run(self._names[role], dict(zip(input_names, feeds, strict=True)), asked)
        if self._tensor_runner:
            results = tuple(result.to(self.device) for result in results)
        else:
            results = tuple(torch.from_numpy(np.asarray(result)) for result in results)
        if check:
            self.check_finite(role, dict(zip(asked, results, strict=True)))
        return results

    def check_finite(self, role: str, outputs: dict[str, torch.Tensor]) -> None:
        """Raise :class:`NonFiniteOutputError` naming the network and its precision when any of
        ``outputs`` holds NaN or Inf: never decode an overflow into an image returned as a success."""
        bad = [name for name, value in outputs.items() if not bool(torch.isfinite(value).all())]
        if bad:
            raise NonFiniteOutputError(self._names.get(role, role), self._precisions.get(role, ""), bad)

    def encode_text(
        self, input_ids: torch.Tensor, encoder: str = TEXT_ENCODER, lora_scales: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        if encoder not in self._lora_roles:
            return self._call(encoder, [input_ids])
        if lora_scales is None:
            raise ValueError(f"{encoder} was exported with LoRA adapters: it needs lora_scales")
        return self._call(encoder, [input_ids, lora_scales])

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self._call(VAE_ENCODER, [image])[0]

    def run_network(
        self, role: str, inputs: dict[str, torch.Tensor], outputs: tuple[str, ...], check: bool = True
    ) -> dict[str, torch.Tensor]:
        """``role``'s ``outputs``; ``check=False`` leaves the finiteness check to the caller (a batched
        call's jobs, each on its own rows: :meth:`check_finite`)."""
        tensors = [inputs[name] for name in self._tensors[role][0]]
        return dict(zip(outputs, self._call(role, tensors, outputs, check), strict=True))

    def predict_noise(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.run_network(UNET, inputs, (self._tensors[UNET][1][0],))["noise_pred"]

    def predict_velocity(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.run_network(TRANSFORMER, inputs, ("noise_pred",))["noise_pred"]

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """One image at a time: the VAE's memory grows with its batch (quadratically with the size,
        through its attention), its results do not depend on it."""
        return torch.cat([self._call(VAE_DECODER, [latents[i : i + 1]])[0] for i in range(len(latents))])


def onnx_runner(onnx_files: dict[str, Path], threads: int = 0) -> Runner:
    """A runner over onnxruntime CPU sessions, one per exported network, opened as the server opens them
    (the graphs optimised at export, the same thread budget; 0 = automatic)."""
    from triton_inpaint.networks.ort_sessions import open_session

    sessions = {name: open_session(path, threads) for name, path in onnx_files.items()}

    def run(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        return sessions[model].run(outputs, inputs)

    return run


class TorchComponents(RunnerComponents):
    """The diffusers torch modules themselves, called as the exported graphs are
    (:mod:`triton_inpaint.networks.torch_networks`): the reference the exports and the runtimes are
    checked against."""

    def __init__(
        self,
        pipeline: object,
        device: str | torch.device = "cpu",
        deep_cache_branches: tuple[int, ...] = (),
        first_block_cache: bool = False,
    ) -> None:
        from triton_inpaint.networks.torch_networks import pipeline_architecture, role_modules, torch_runner

        architecture = pipeline_architecture(pipeline)
        modules = role_modules(pipeline, architecture, deep_cache_branches, first_block_cache)
        run = torch_runner(modules, device)
        super().__init__(
            run, architecture=architecture, device=device, deep_cache_branches=deep_cache_branches,
            first_block_cache=first_block_cache,
        )  # fmt: skip
