"""The denoising controls of one request, checked against their declaration in ``schema.INPAINT``.

The ranges, defaults and messages are the declaration's; what this adds is what depends on the served
model (its default steps, guidance, strength and scheduler) and on other controls (a seed leaves room
for ``num_images`` consecutive seeds).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.lora import LoraUse, parse_lora
from triton_inpaint.api.schema import DENOISE, INPAINT, SEED_MAX

SEED_RANGE = (0, SEED_MAX)
SIZE_MULTIPLE: int = INPAINT["width"].multiple_of  # type: ignore[assignment]

# A model's defaults when its registry entry sets none (the common Stable Diffusion ones).
DEFAULT_STEPS = 20
DEFAULT_STRENGTH = 0.8
DEFAULT_GUIDANCE = 7.0
_DENOISE_NAMES = frozenset(control.name for control in INPAINT.at(DENOISE))


# Drawn seeds stay below 2^53, the largest integer a JSON number keeps exactly in JavaScript (and so in
# every JSON client): a JS caller who replays a returned seed must get the same image. A seed the
# caller sends may use the whole range.
RANDOM_SEED_LIMIT = 2**53


def random_seed(count: int = 1) -> int:
    """A fresh seed for requests that did not send one (room left for ``count`` consecutive seeds, all
    below :data:`RANDOM_SEED_LIMIT`); returned to the caller so the request can be replayed."""
    return secrets.randbelow(RANDOM_SEED_LIMIT - count + 1)


@dataclass(frozen=True)
class CacheSettings:
    """The step-caching fields of a request as sent (the hosted API's ``acceleration`` and
    ``acceleratorOptions``; None: not sent), each checked against its declaration; what they mean for
    a model is :func:`triton_inpaint.pipelines.steps.step_cache.plan_cache`'s question."""

    acceleration: str | None = None
    deep_cache: bool | None = None
    deep_cache_interval: int | None = None
    deep_cache_branch_id: int | None = None
    deep_cache_skip_mode: str | None = None
    fbcache: bool | None = None
    cache_distance: float | None = None
    tea_cache: bool | None = None
    tea_cache_distance: float | None = None
    cache_start_step: int | None = None
    cache_stop_step: int | None = None
    cache_start_step_percentage: int | None = None
    cache_end_step_percentage: int | None = None
    cache_max_consecutive_steps: int | None = None

    @property
    def given(self) -> dict[str, object]:
        return {name: value for name, value in self.__dict__.items() if value is not None}


CACHE_FIELDS = tuple(CacheSettings.__dataclass_fields__)


@dataclass(frozen=True)
class DenoiseParams:
    """Controls of the denoising loop, validated; absent inputs take the model's defaults."""

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
    dry_run: bool = False
    lora: tuple[LoraUse, ...] = ()  # adapters and weights, checked on their own (the model: plan)
    soft_inpainting: bool = False  # the mask's grey levels applied per step (differential diffusion)
    cache: CacheSettings = CacheSettings()  # step caching as asked (the model decides: plan)

    @property
    def seeds(self) -> list[int]:
        """One seed per image: seed, seed+1, ...; image i replays alone with seeds[i]."""
        return [self.seed + i for i in range(self.num_images)]

    @classmethod
    def from_inputs(
        cls,
        prompt: str | None,
        default_steps: int = DEFAULT_STEPS,
        default_guidance: float = DEFAULT_GUIDANCE,
        default_strength: float = DEFAULT_STRENGTH,
        default_scheduler: str | None = None,
        **controls: Any,
    ) -> DenoiseParams:
        """The request's denoise-stage controls (``None`` or absent: the default), checked."""
        unknown = set(controls) - _DENOISE_NAMES
        if unknown:
            raise TypeError(f"not denoising controls: {', '.join(sorted(unknown))}")
        values = INPAINT.check({"prompt": prompt, **controls}, DENOISE)
        num_images = values["num_images"]
        seed = values["seed"]
        if seed is None:
            seed = random_seed(num_images)
        elif seed > SEED_MAX - num_images + 1:  # every image's seed must be a valid seed too
            raise InvalidInputError(
                "seed", f"must be an integer in [0, {SEED_MAX - num_images + 1}], got {seed}"
            )

        def given(name: str, default: Any) -> Any:
            return default if values[name] is None else values[name]

        return cls(
            prompt=values["prompt"],
            negative_prompt=values["negative_prompt"],
            steps=given("steps", default_steps),
            strength=given("strength", default_strength),
            guidance_scale=given("guidance_scale", default_guidance),
            seed=seed,
            scheduler=values["scheduler"] or default_scheduler,
            width=values["width"],
            height=values["height"],
            num_images=num_images,
            mask_margin=values["mask_margin"],
            dry_run=values["dry_run"],
            lora=parse_lora(values["lora"]),
            soft_inpainting=values["soft_inpainting"],
            cache=CacheSettings(**{name: values[name] for name in CACHE_FIELDS}),
        )
