"""The public request parameters of one inpainting request: names, ranges, defaults, validation.

This is the single place where ranges live. The Triton models validate with it, the CLI builds its
help text from it, and the README documents what it says.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from triton_inpaint.errors import InvalidInputError
from triton_inpaint.masks import check_mask_margin

STEPS_RANGE = (1, 100)
STRENGTH_RANGE = (0.0, 1.0)
GUIDANCE_RANGE = (0.0, 50.0)
SEED_RANGE = (0, 2**63 - 1)
SIZE_MULTIPLE = 8
SIZE_RANGE = (64, 2048)

NUM_IMAGES_RANGE = (1, 4)

DEFAULT_STEPS = 20
DEFAULT_STRENGTH = 0.8
DEFAULT_GUIDANCE = 7.0


def check_range(field: str, value: float, bounds: tuple[float, float], kind: str) -> None:
    lo, hi = bounds
    if not lo <= value <= hi:
        raise InvalidInputError(field, f"must be {kind} in [{lo}, {hi}], got {value}")


def random_seed(count: int = 1) -> int:
    """A fresh seed for requests that did not send one (room left for ``count`` consecutive seeds);
    returned to the caller so the request can be replayed."""
    return secrets.randbelow(SEED_RANGE[1] - count + 2)


@dataclass(frozen=True)
class DenoiseParams:
    """Controls of the denoising loop, validated; ``None`` inputs take the model's defaults."""

    prompt: str
    negative_prompt: str | None  # None when absent: SDXL then guides away from zeros, not from ""
    steps: int
    strength: float
    guidance_scale: float
    seed: int
    scheduler: str | None
    width: int | None
    height: int | None
    num_images: int = 1
    mask_margin: int | None = None

    @property
    def seeds(self) -> list[int]:
        """One seed per image: seed, seed+1, ...; image i replays alone with seeds[i]."""
        return [self.seed + i for i in range(self.num_images)]

    @classmethod
    def from_inputs(
        cls,
        prompt: str | None,
        negative_prompt: str | None = None,
        steps: int | None = None,
        strength: float | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
        width: int | None = None,
        height: int | None = None,
        num_images: int | None = None,
        mask_margin: int | None = None,
        default_steps: int = DEFAULT_STEPS,
        default_guidance: float = DEFAULT_GUIDANCE,
        default_strength: float = DEFAULT_STRENGTH,
    ) -> DenoiseParams:
        if prompt is None:
            raise InvalidInputError("prompt", "is required")
        steps = default_steps if steps is None else int(steps)
        check_range("steps", steps, STEPS_RANGE, "an integer")
        strength = default_strength if strength is None else float(strength)
        check_range("strength", strength, STRENGTH_RANGE, "a number")
        guidance_scale = default_guidance if guidance_scale is None else float(guidance_scale)
        check_range("guidance_scale", guidance_scale, GUIDANCE_RANGE, "a number")
        num_images = 1 if num_images is None else int(num_images)
        check_range("num_images", num_images, NUM_IMAGES_RANGE, "an integer")
        seed = random_seed(num_images) if seed is None else int(seed)
        check_range("seed", seed, (SEED_RANGE[0], SEED_RANGE[1] - num_images + 1), "an integer")
        for field, value in (("width", width), ("height", height)):
            if value is None:
                continue
            check_range(field, int(value), SIZE_RANGE, "an integer")
            if int(value) % SIZE_MULTIPLE:
                raise InvalidInputError(field, f"must be a multiple of {SIZE_MULTIPLE}, got {value}")
        return cls(
            prompt=prompt,
            negative_prompt=negative_prompt,
            steps=steps,
            strength=strength,
            guidance_scale=guidance_scale,
            seed=seed,
            scheduler=scheduler or None,
            width=None if width is None else int(width),
            height=None if height is None else int(height),
            num_images=num_images,
            mask_margin=check_mask_margin(mask_margin),
        )
