"""The requests, declared once: every control of an inpainting or masking request, with its type, range
or choices, default, description and its names in the gateway's Runware- and Eden-style tasks and the
CLI.

Everything else is derived from these declarations: the Triton tensor contract (``contract.py``), the
validation every Triton model runs (:meth:`Control.check`), the client's keyword arguments, the CLI
flags and their help, the gateway's pydantic task models, and the tables in ``docs/``. Adding a control
is its declaration here plus the function that implements it.

This module imports nothing beyond the standard library (and the scheduler name table), so clients
and the gateway can use it without the model stack.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.schedulers import SCHEDULERS

# Scheduler names users may send (``schedulers.py`` maps each to its diffusers class).
SCHEDULER_NAMES: tuple[str, ...] = tuple(spec.name for spec in SCHEDULERS)
MASKING_MODELS: tuple[str, ...] = ("face", "face_mesh", "eyes", "nose", "lips", "hands", "person")
SEED_MAX = 2**63 - 1

# Where a control is read: the ensemble step whose Triton model implements it.
PREPROCESS, DENOISE, POSTPROCESS, MASKING = "preprocess", "denoise", "postprocess", "masking"

_TRITON_TYPES = {bytes: "TYPE_STRING", str: "TYPE_STRING", int: "TYPE_INT32", float: "TYPE_FP32",
                 bool: "TYPE_BOOL"}  # fmt: skip
_KIND_WORDS = {int: "an integer", float: "a number"}


@dataclass(frozen=True)
class Control:
    """One input of a request.

    ``default`` is what an absent value means where that is fixed; ``default_text`` says it in words
    where the served model decides (``the model's``). ``runware``/``eden`` are the field's names in the
    gateway's two task styles (None: not offered there; ``a.b``: field ``b`` of the object ``a``);
    ``flag`` is the CLI option (``--`` + the name with dashes unless given; controls that share a flag
    take one comma-separated value each, in their order here); ``eden_default`` is the Eden-style
    task's own default where it differs.
    """

    name: str
    kind: type  # bytes (an encoded image), str, int, float or bool
    description: str
    stage: str
    required: bool = False
    bounds: tuple[float, float] | None = None
    multiple_of: int | None = None
    choices: tuple[str, ...] | None = None
    aliases: Mapping[str, str] | None = None  # other accepted spellings of a choice (upper-case keys)
    default: Any = None
    default_text: str | None = None
    runware: str | None = None
    eden: str | None = None
    eden_default: Any = None
    flag: str | None = None
    open_choices: bool = False  # the choices are canonical spellings; the server accepts others too
    triton_type: str | None = None  # when not the kind's (seed is INT64)

    @property
    def data_type(self) -> str:
        """Triton's config type name (``TYPE_INT32``...)."""
        return self.triton_type or _TRITON_TYPES[self.kind]

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def shown_default(self) -> str:
        """The default as the docs and CLI help say it."""
        if self.default_text is not None:
            return self.default_text
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return str(self.default)

    @property
    def allowed(self) -> str:
        """The allowed values in words: ``1-100``, ``PNG, JPG, WEBP``, or the empty string."""
        if self.bounds is not None:
            low, high = self.bounds
            text = f"{low}-{high}"
            return text + (f", multiple of {self.multiple_of}" if self.multiple_of else "")
        if self.choices is not None:
            return ", ".join(self.choices)
        return ""

    def check(self, value: Any) -> Any:
        """``value`` as this control's Python type, within its range or choices, or the default when
        absent; otherwise :class:`InvalidInputError` naming the control and what it allows."""
        if value is None:
            if self.required:
                raise InvalidInputError(self.name, "is required")
            return self.default
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise InvalidInputError(self.name, f"must be {_KIND_WORDS[self.kind]}, got {value!r}")
            out_of_range = self.bounds is not None and not self.bounds[0] <= value <= self.bounds[1]
            if out_of_range or (self.kind is int and not float(value).is_integer()):
                within = f" in [{self.bounds[0]}, {self.bounds[1]}]" if self.bounds else ""
                raise InvalidInputError(self.name, f"must be {_KIND_WORDS[self.kind]}{within}, got {value}")
            if self.multiple_of and int(value) % self.multiple_of:
                raise InvalidInputError(self.name, f"must be a multiple of {self.multiple_of}, got {value}")
            return self.kind(value)
        if self.kind is bool:
            return bool(value)
        if self.kind is str and self.choices is not None and self.aliases is not None:
            # Choices that are spellings (formats): any case, aliases accepted, answered as the choice.
            key = str(value).strip().upper()
            if not key:
                return self.default
            found = self.aliases.get(key, key)
            if found not in self.choices:
                raise InvalidInputError(self.name, f"must be one of {', '.join(self.choices)}, got {value!r}")
            return found
        return value


@dataclass(frozen=True)
class RequestSchema:
    """The controls of one request type, in the order docs and signatures list them."""

    title: str
    controls: tuple[Control, ...]

    def __iter__(self) -> Iterator[Control]:
        return iter(self.controls)

    def __getitem__(self, name: str) -> Control:
        for control in self.controls:
            if control.name == name:
                return control
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(control.name for control in self.controls)

    def at(self, stage: str) -> tuple[Control, ...]:
        return tuple(control for control in self.controls if control.stage == stage)

    def check(self, values: Mapping[str, Any], stage: str | None = None) -> dict[str, Any]:
        """Every control (of ``stage``) checked: its value, or its default when absent."""
        controls = self.controls if stage is None else self.at(stage)
        return {control.name: control.check(values.get(control.name)) for control in controls}

    def check_each(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Only the controls named in ``values``, each checked."""
        return {name: self[name].check(value) for name, value in values.items()}

    def keywords(self, values: Mapping[str, Any], caller: str) -> dict[str, Any]:
        """``values`` with every name checked to be a control: a misspelt keyword fails loudly rather
        than being dropped."""
        unknown = sorted(set(values) - set(self.names))
        if unknown:
            raise TypeError(
                f"{caller}() got unexpected keyword argument(s) {', '.join(unknown)}; "
                f"the controls are: {', '.join(self.names)}"
            )
        return dict(values)


_MASK_BLUR = (0, 160)
_ACCELERATOR = "acceleratorOptions."
_CACHE_STEPS = (0, 100)  # step indices, as steps goes

# Step caching (triton_inpaint.api.acceleration): the hosted API's acceleration preset and the fields of
# its acceleratorOptions object. Absent fields are the preset's or the cache's defaults.
ACCELERATION_CONTROLS = (
    Control("acceleration", str, "step caching preset: none, low, medium or high (DeepCache on UNet models, "
            "the first-block cache on FLUX); faster, at a price in fidelity (docs/controls.md#step-caching)",
            DENOISE, choices=("none", "low", "medium", "high"), default_text="none", runware="acceleration"),
    Control("deep_cache", bool, "DeepCache (UNet models): the full UNet runs every deep_cache_interval "
            "steps, only its shallow layers in between, reusing the deep features", DENOISE,
            default_text="off, or the preset's", runware=_ACCELERATOR + "deepCache"),
    Control("deep_cache_interval", int, "DeepCache: run the full UNet every this many steps (1: every step)",
            DENOISE, bounds=(1, 20), default_text="3, or the preset's",
            runware=_ACCELERATOR + "deepCacheInterval"),
    Control("deep_cache_branch_id", int, "DeepCache: the UNet branch the cache starts from, 0 the shallowest "
            "(the fastest; the model lists the branches it serves)", DENOISE, bounds=(0, 11),
            default_text="the model's first (0)", runware=_ACCELERATOR + "deepCacheBranchId"),
    Control("deep_cache_skip_mode", str, "DeepCache: which steps run in full; uniform: every "
            "deep_cache_interval-th", DENOISE, choices=("uniform",), default_text="uniform",
            runware=_ACCELERATOR + "deepCacheSkipMode"),
    Control("fbcache", bool, "first-block cache (FLUX models): skip the transformer's other blocks on a step "
            "whose first block changed less than cache_distance since the last full step", DENOISE,
            default_text="off, or the preset's", runware=_ACCELERATOR + "fbcache"),
    Control("cache_distance", float, "first-block cache: the relative change of the first block's residual "
            "below which a step is skipped (higher: faster, further from uncached)", DENOISE,
            bounds=(0.0, 1.0), default_text="0.05, or the preset's", runware=_ACCELERATOR + "cacheDistance"),
    Control("tea_cache", bool, "TeaCache: not served (refused, naming fbcache and deep_cache instead)",
            DENOISE, default_text="off", runware=_ACCELERATOR + "teaCache"),
    Control("tea_cache_distance", float, "TeaCache's threshold: not served, as tea_cache", DENOISE,
            bounds=(0.0, 2.0), default_text="none", runware=_ACCELERATOR + "teaCacheDistance"),
    Control("cache_start_step", int, "step caching acts from this step on (0-based; earlier steps run in "
            "full)", DENOISE, bounds=_CACHE_STEPS, default_text="0", runware=_ACCELERATOR + "cacheStartStep"),
    Control("cache_stop_step", int, "step caching stops at this step (it and later steps run in full)",
            DENOISE, bounds=_CACHE_STEPS, default_text="the last step",
            runware=_ACCELERATOR + "cacheStopStep"),
    Control("cache_start_step_percentage", int, "as cache_start_step, in percent of the steps", DENOISE,
            bounds=(0, 100), default_text="0", runware=_ACCELERATOR + "cacheStartStepPercentage"),
    Control("cache_end_step_percentage", int, "as cache_stop_step, in percent of the steps", DENOISE,
            bounds=(0, 100), default_text="100", runware=_ACCELERATOR + "cacheEndStepPercentage"),
    Control("cache_max_consecutive_steps", int, "at most this many cached steps in a row, then a full one",
            DENOISE, bounds=(1, 100), default_text="no limit",
            runware=_ACCELERATOR + "cacheMaxConsecutiveSteps"),
)  # fmt: skip

INPAINT = RequestSchema(
    "inpainting request",
    (
        Control("image", bytes, "the image: encoded PNG, JPEG or WEBP", PREPROCESS, required=True,
                runware="seedImage", eden="image"),
        Control("mask", bytes, "the mask, same size: white regenerates, black keeps (optional when "
                "outpainting: the new border is masked)", PREPROCESS,
                runware="maskImage", eden="mask"),
        Control("mask_model", str, "instead of a mask: the server masks what this detector finds",
                PREPROCESS, choices=MASKING_MODELS, runware="maskModel"),
        Control("mask_prompt", str, "instead of a mask: the server masks what this names, e.g. eyes, "
                "background or (with CLIPSeg exported) any phrase such as hair", PREPROCESS,
                runware="maskPrompt", eden="masking_prompt"),
        Control("mask_invert", bool, "regenerate what the mask keeps (e.g. the background) instead of "
                "what it marks", PREPROCESS, default=False, runware="maskInvert"),
        Control("mask_expand", int, "grow the mask by this many pixels", PREPROCESS, bounds=(0, 64),
                default=0, runware="maskExpand", eden="mask_expand", eden_default=12),
        Control("mask_blur", int, "feather the mask edge over this many pixels", PREPROCESS,
                bounds=_MASK_BLUR, default=0, runware="maskBlur", eden="mask_blur", eden_default=24),
        *(Control(f"outpaint_{side}", int, f"outpainting: grow the canvas by this many pixels at the {side} "
                  "and generate the new border", PREPROCESS, bounds=(0, 2048), multiple_of=64, default=0,
                  runware=f"outpaint.{side}", flag="--outpaint")
          for side in ("top", "right", "bottom", "left")),
        Control("outpaint_blur", int, "outpainting: feather the seam this many pixels into the image",
                PREPROCESS, bounds=(0, 32), default=0, runware="outpaint.blur"),
        Control("prompt", str, "what to paint into the masked area (UTF-8)", DENOISE, required=True,
                runware="positivePrompt", eden="inpainting_prompt"),
        Control("negative_prompt", str, "what to steer away from (UTF-8)", DENOISE,
                runware="negativePrompt"),
        Control("steps", int, "denoising steps", DENOISE, bounds=(1, 100), default_text="the model's (20)",
                runware="steps"),
        Control("strength", float, "how much of the masked area is regenerated", DENOISE,
                bounds=(0.0, 1.0), default_text="the model's (0.8)", runware="strength"),
        Control("guidance_scale", float, "classifier-free guidance scale", DENOISE, bounds=(0.0, 50.0),
                default_text="the model's (7)", runware="CFGScale", flag="--guidance"),
        Control("seed", int, "the first image's seed; the seed used is returned", DENOISE,
                bounds=(0, SEED_MAX), default_text="random", runware="seed", eden="seed",
                triton_type="TYPE_INT64"),
        Control("scheduler", str, "the sampler (any case; aliases such as 'Euler ancestral' work)", DENOISE,
                choices=SCHEDULER_NAMES, open_choices=True, default_text="the model's", runware="scheduler"),
        Control("lora", str, "LoRA adapters of the model and their weights: ID=WEIGHT items joined by "
                "commas, weights in [-4, 4], an ID alone is weight 1 (the model's registry entry declares "
                "its adapters)", DENOISE, default_text="none", runware="lora"),
        Control("width", int, "processing width", DENOISE, bounds=(64, 2048), multiple_of=8,
                default_text="the model's native size", runware="width"),
        Control("height", int, "processing height", DENOISE, bounds=(64, 2048), multiple_of=8,
                default_text="the model's native size", runware="height"),
        Control("mask_margin", int, "inpaint only a crop this many pixels around the mask, at full "
                "model resolution", DENOISE, bounds=(32, 128), default_text="off", runware="maskMargin"),
        Control("soft_inpainting", bool, "soft inpainting (differential diffusion): a grey mask value sets "
                "how much each pixel may change, step by step, instead of only in the final blend; use "
                "with mask_blur for seams that blend", DENOISE, default=False, runware="softInpainting"),
        *ACCELERATION_CONTROLS,
        Control("num_images", int, "images to make, with seeds seed, seed+1, ...", DENOISE, bounds=(1, 4),
                default=1, runware="numberResults", eden="n_samples"),
        Control("dry_run", bool, "check everything a request can be refused for (images, mask, sizes, "
                "memory budget) and answer no images", DENOISE, default=False),
        Control("output_format", str, "the images' encoding; only PNG keeps every pixel outside the mask "
                "exact (JPG and WEBP re-encode the whole image with loss)", POSTPROCESS,
                choices=("PNG", "JPG", "WEBP"), aliases={"JPEG": "JPG"}, open_choices=True, default="PNG",
                runware="outputFormat"),
        Control("output_quality", int, "JPG and WEBP quality", POSTPROCESS, bounds=(1, 100), default=95,
                runware="outputQuality", flag="--quality"),
    ),
)  # fmt: skip

MASK = RequestSchema(
    "masking request",
    (
        Control("image", bytes, "the image: encoded PNG, JPEG or WEBP", MASKING, required=True,
                runware="inputImage"),
        Control("model", str, "the detector whose detections are masked", MASKING, choices=MASKING_MODELS,
                runware="model", flag="--detector"),
        Control("prompt", str, "instead of a model: what to mask, e.g. eyes or hair", MASKING,
                runware="maskPrompt"),
        Control("confidence", float, "minimum detection score", MASKING, bounds=(0.0, 1.0), default=0.25,
                runware="confidence"),
        Control("max_detections", int, "at most this many regions, best first", MASKING, bounds=(1, 20),
                default=6, runware="maxDetections"),
        Control("padding", int, "grow the mask by this many pixels", MASKING, bounds=(0, 256), default=4,
                runware="maskPadding"),
        Control("blur", int, "feather the mask over this many pixels", MASKING, bounds=_MASK_BLUR,
                default=4, runware="maskBlur"),
        Control("invert", bool, "select everything but the detections", MASKING, default=False,
                runware="invert"),
    ),
)  # fmt: skip

# The mask sources of an inpainting request, of which exactly one is sent.
MASK_SOURCES: tuple[str, ...] = ("mask", "mask_model", "mask_prompt")


def with_controls(
    schema: RequestSchema, skip: tuple[str, ...] = (), include: Callable[[Control], bool] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a ``(..., **controls)`` method the signature of its controls as keyword-only arguments, so
    ``help()``, IDEs and ``inspect`` list them, and append their table to its docstring."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(function)
        fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        chosen = [c for c in schema if c.name not in skip and (include is None or include(c))]
        keyword = inspect.Parameter.KEYWORD_ONLY
        keywords = [
            inspect.Parameter(c.name, keyword, annotation=_annotation(c), default=None) for c in chosen
        ]
        function.__signature__ = signature.replace(parameters=[*fixed, *keywords])  # type: ignore
        lines = [f"    {c.name}: {c.description}" + _in_parens(c.allowed) for c in chosen]
        listing = "\n\n    Controls (None: the default):\n" + "\n".join(lines)
        function.__doc__ = (function.__doc__ or "") + listing
        return function

    return decorate


def _in_parens(text: str) -> str:
    return f" ({text})" if text else ""


def _annotation(control: Control) -> str:
    return f"{control.kind.__name__} | None"
