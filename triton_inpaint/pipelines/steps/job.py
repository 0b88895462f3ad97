"""What every family's denoising job shares: one request's loop state, its step cache, and the
protocol the in-flight batcher drives (:class:`~triton_inpaint.pipelines.batching.DenoiseJob`).

A family's job adds only what differs: the denoiser's inputs for the current step
(``denoiser_inputs``), the step itself once the prediction is in (``advance``: guidance, the scheduler,
latent blending), the preview estimate and the decode. Whether a step runs the whole denoiser or reuses
earlier work (:mod:`triton_inpaint.pipelines.steps.step_cache`) is decided here, once, for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from triton_inpaint.api.imaging import Box
from triton_inpaint.pipelines.batching import PREDICTION, NetworkCall
from triton_inpaint.pipelines.steps.soft_inpainting import SoftInpainting
from triton_inpaint.pipelines.steps.step_cache import StepCache


@dataclass(kw_only=True)
class LoopState:
    """What a request's loop starts with, whatever the family (``start`` of each pipeline makes it).

    ``conditions``: the denoiser's per-row inputs that stay the same every step (text states, pooled
    embeddings, guidance, adapter weights...); ``box``: the part of the input image the result covers;
    ``vae_tile``: the VAE's tile side when it must run in tiles; ``soft``: soft inpainting's change map;
    ``cache``: the request's step cache (None: every step in full)."""

    scheduler: Any
    timesteps: torch.Tensor
    latents: torch.Tensor
    conditions: dict[str, torch.Tensor]
    box: Box
    vae_tile: int | None = None
    soft: SoftInpainting | None = None
    cache: StepCache | None = None


class DenoisingJob:
    """One request's denoising loop, a step at a time: a diffusers loop body split where its denoiser
    is called, so that the call can carry other requests' rows too (see
    :mod:`triton_inpaint.pipelines.batching`)."""

    denoiser: str  # the role of the family's whole denoiser: unet or transformer

    def __init__(self, pipeline: Any, state: LoopState) -> None:
        self.pipeline = pipeline
        self.scheduler = state.scheduler
        self.timesteps = state.timesteps
        self.latents = state.latents
        self.conditions = state.conditions
        self.box = state.box
        self.vae_tile = state.vae_tile
        self.soft = state.soft
        self.cache = state.cache
        self.index = 0
        self._inputs: dict[str, torch.Tensor] | None = None  # this step's, made once
        self._role = self.denoiser  # the network of the call in flight

    @property
    def done(self) -> bool:
        return self.index >= len(self.timesteps)

    @property
    def cached_steps(self) -> int:
        """Steps so far that reused earlier work instead of running the whole denoiser."""
        return 0 if self.cache is None else self.cache.cached_steps

    # -- the batcher's protocol ----------------------------------------------------------------------

    def call(self) -> NetworkCall:
        if self._inputs is None:
            # Made exactly once per step: some schedulers record that the input was scaled.
            self._inputs = self.denoiser_inputs()
        if self.cache is None:
            call = NetworkCall(self.denoiser, self._inputs)
        else:
            call = self.cache.call(self.index, self._inputs)
        self._role = call.role
        return call

    def run(self, call: NetworkCall) -> dict[str, torch.Tensor]:
        # Unchecked: the call may carry other requests' rows; each job checks its own in take().
        return self.pipeline.components.run_network(call.role, call.inputs, call.outputs, check=False)

    def take(self, outputs: dict[str, torch.Tensor]) -> bool:
        # A non-finite prediction fails this request alone, naming the network (never a black image).
        self.pipeline.components.check_finite(self._role, outputs)
        prediction = outputs[PREDICTION] if self.cache is None else self.cache.take(outputs)
        if prediction is None:
            return False
        self._inputs = None
        self.advance(prediction)
        self.index += 1
        return True

    # -- what each family says -----------------------------------------------------------------------

    def denoiser_inputs(self) -> dict[str, torch.Tensor]:
        """This step's inputs of the whole denoiser, by the network's tensor names, batch first."""
        raise NotImplementedError

    def advance(self, prediction: torch.Tensor) -> None:
        """Take the step ``self.index`` with the denoiser's prediction for this job's rows."""
        raise NotImplementedError

    def preview_latents(self) -> torch.Tensor:
        """The latents a progress preview shows, (B, C, h, w)."""
        raise NotImplementedError

    def finish(self) -> tuple[np.ndarray, Box]:
        """Decode: the generated images and the box of the input they belong to."""
        raise NotImplementedError
