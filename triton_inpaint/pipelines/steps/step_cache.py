"""Step caching: steps of a request that reuse work of earlier steps instead of running the whole
denoiser, as the hosted API's ``acceleration`` and ``acceleratorOptions`` ask (the request's fields:
:class:`~triton_inpaint.api.params.CacheSettings`). What they mean for a model is decided before any
network runs (:func:`plan_cache`); each request's job then holds one :class:`StepCache` (its state: the
cached feature or residuals), which says which network call each of its steps makes, so requests with
and without caching, on full and cached steps, batch per network in one server.

Two caches, one per kind of denoiser:

- **DeepCache** (UNet families): every ``interval``-th step runs the full UNet, which also returns the
  feature of the request's branch; the steps between run only the UNet's shallow layers from that
  feature (:mod:`triton_inpaint.networks.deep_cache`). Which steps are full is
  ``DeepCacheSDHelper``'s rule, on the positions of the request's timesteps in its scheduler's schedule.
- **First-block cache** (FLUX): every step runs the transformer's first block; when its residual moved
  less than ``threshold`` (relative mean absolute difference) from the one of the last step computed in
  full, the rest of the transformer is skipped and its residual from that step added back (diffusers'
  ``apply_first_block_cache``).

The window fields (``cacheStartStep``/``cacheStopStep`` or their percentages) say where in the schedule
a step may be cached: outside it every step is computed in full. ``cacheMaxConsecutiveSteps`` forces a
full step after that many cached ones. Both count the steps the request takes (after strength cuts the
schedule), from 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.params import CacheSettings
from triton_inpaint.api.roles import (
    HEAD_OUTPUTS,
    HEAD_RESIDUAL,
    LORA_SCALES,
    SPLIT_TRANSFORMER_TENSORS,
    TAIL_RESIDUAL,
    TRANSFORMER,
    TRANSFORMER_HEAD,
    TRANSFORMER_TAIL,
    UNET,
    deep_feature,
    shallow_role,
)
from triton_inpaint.pipelines.batching import PREDICTION, NetworkCall

ACCELERATION_LEVELS = ("none", "low", "medium", "high")
SKIP_MODES = ("uniform",)
# What each acceleration preset turns on, per kind of denoiser: DeepCache's interval (branch 0, the
# published setting: 2.3x at interval 3 and 3.2x at 5 on SD 2.1), or the first-block cache's threshold
# (diffusers' default 0.05 is "low"; 0.2 is the threshold ParaAttention publishes for FLUX.1-dev).
DEEP_CACHE_PRESETS = {"low": 2, "medium": 3, "high": 5}
FIRST_BLOCK_PRESETS = {"low": 0.05, "medium": 0.12, "high": 0.2}
DEFAULT_INTERVAL = 3
DEFAULT_THRESHOLD = 0.05  # diffusers' FirstBlockCacheConfig default


@dataclass(frozen=True)
class CachePlan:
    """A request's step caching, decided before any network runs."""

    kind: str  # "deep_cache" or "first_block"
    branch: int = 0  # DeepCache
    interval: int = DEFAULT_INTERVAL  # DeepCache
    threshold: float = DEFAULT_THRESHOLD  # first-block cache
    start: int = 0  # first step that may be cached
    stop: int | None = None  # steps from here on are computed in full; None: to the end
    max_consecutive: int | None = None  # at most this many cached steps in a row

    def may_cache(self, index: int) -> bool:
        return index >= self.start and (self.stop is None or index < self.stop)


def plan_cache(
    settings: CacheSettings, architecture: str, steps: int, branches: tuple[int, ...], first_block: bool
) -> CachePlan | None:
    """What ``settings`` ask of a model of ``architecture`` (``sd``, ``sdxl``, ``flux``) that serves the
    DeepCache ``branches`` and (FLUX) the first-block cache, for a request taking ``steps`` steps; None:
    no caching. A field the model cannot honour is refused, naming it."""
    if settings.tea_cache:
        raise InvalidInputError(
            "tea_cache",
            "TeaCache is not served: its FLUX rescaling has no reference that runs here to check it "
            "against; use fbcache (first-block cache, FLUX) or deep_cache (UNet models) instead",
        )
    level = (settings.acceleration or "none").strip().lower()
    if level not in ACCELERATION_LEVELS:
        raise InvalidInputError(
            "acceleration", f"must be one of {', '.join(ACCELERATION_LEVELS)}, got {settings.acceleration!r}"
        )
    flux = architecture == "flux"
    if flux:
        plan = _first_block_plan(settings, level, first_block)
    else:
        plan = _deep_cache_plan(settings, level, branches)
    window = _window(settings, steps)
    if plan is None:
        if settings.tea_cache_distance is not None:
            raise InvalidInputError("tea_cache_distance", "TeaCache is not served (see tea_cache)")
        return None
    return CachePlan(**{**plan.__dict__, **window})


def _deep_cache_plan(settings: CacheSettings, level: str, branches: tuple[int, ...]) -> CachePlan | None:
    for field in ("fbcache", "cache_distance"):
        if getattr(settings, field) not in (None, False):
            raise InvalidInputError(
                field, "the first-block cache is for FLUX models (transformers); this model is a UNet: "
                "use deep_cache instead",
            )  # fmt: skip
    preset = DEEP_CACHE_PRESETS.get(level)
    wanted = settings.deep_cache if settings.deep_cache is not None else preset is not None
    if not wanted:
        return None
    if not branches:
        raise InvalidInputError(
            "deep_cache", "this model was exported without DeepCache's shallow networks; export it again "
            "(triton-inpaint export onnx/registry, which write them by default) to cache steps",
        )  # fmt: skip
    interval = settings.deep_cache_interval or preset or DEFAULT_INTERVAL
    branch = settings.deep_cache_branch_id if settings.deep_cache_branch_id is not None else branches[0]
    if branch not in branches:
        raise InvalidInputError(
            "deep_cache_branch_id",
            f"this model serves DeepCache branches {', '.join(map(str, branches))}, got {branch} "
            "(export --deep-cache-branches chooses them)",
        )
    mode = (settings.deep_cache_skip_mode or "uniform").strip().lower()
    if mode not in SKIP_MODES:
        raise InvalidInputError(
            "deep_cache_skip_mode",
            f"must be uniform (DeepCache's reference helper has no other working mode), got {mode!r}",
        )
    return CachePlan("deep_cache", branch=branch, interval=interval)


def _first_block_plan(settings: CacheSettings, level: str, served: bool) -> CachePlan | None:
    for field in ("deep_cache", "deep_cache_interval", "deep_cache_branch_id", "deep_cache_skip_mode"):
        if getattr(settings, field) not in (None, False):
            raise InvalidInputError(
                field, "DeepCache is for UNet models; this model is a FLUX transformer: use fbcache instead"
            )
    preset = FIRST_BLOCK_PRESETS.get(level)
    wanted = settings.fbcache if settings.fbcache is not None else preset is not None
    if not wanted:
        return None
    if not served:
        raise InvalidInputError(
            "fbcache", "this model was exported without the first-block cache's split transformer; export "
            "it again (triton-inpaint export onnx/registry write it by default) to cache steps",
        )  # fmt: skip
    threshold = settings.cache_distance if settings.cache_distance is not None else preset
    return CachePlan("first_block", threshold=DEFAULT_THRESHOLD if threshold is None else threshold)


def _window(settings: CacheSettings, steps: int) -> dict[str, int | None]:
    """Where caching may act, in the steps the request takes: start and stop from the step fields or
    (not both) from the percentages of ``steps``."""
    pairs = (
        ("cache_start_step", "cache_start_step_percentage"),
        ("cache_stop_step", "cache_end_step_percentage"),
    )
    for step_field, percent_field in pairs:
        if getattr(settings, step_field) is not None and getattr(settings, percent_field) is not None:
            raise InvalidInputError(percent_field, f"give {step_field} or {percent_field}, not both")
    start = settings.cache_start_step
    if start is None and settings.cache_start_step_percentage is not None:
        start = steps * settings.cache_start_step_percentage // 100
    stop = settings.cache_stop_step
    if stop is None and settings.cache_end_step_percentage is not None:
        stop = steps * settings.cache_end_step_percentage // 100
    if start is not None and stop is not None and stop <= start:
        field = "cache_stop_step" if settings.cache_stop_step is not None else "cache_end_step_percentage"
        raise InvalidInputError(
            field, f"must end the caching window after it starts (step {start}), got step {stop}"
        )
    return {"start": start or 0, "stop": stop, "max_consecutive": settings.cache_max_consecutive_steps}


class StepCache:
    """One request's step-cache state: which network call each of its steps makes, and what it keeps
    between steps. :meth:`call` gives a step's next call, :meth:`take` its outputs; ``take`` returns the
    step's prediction once the step has all it needs (None: it needs another call)."""

    def __init__(self, plan: CachePlan) -> None:
        self.plan = plan
        self.cached_steps = 0  # steps that reused earlier work, for the bench and the metrics
        self._consecutive = 0

    def _may_reuse(self, index: int) -> bool:
        limit = self.plan.max_consecutive
        return self.plan.may_cache(index) and (limit is None or self._consecutive < limit)

    def _count(self, reused: bool) -> None:
        self.cached_steps += reused
        self._consecutive = self._consecutive + 1 if reused else 0

    def call(self, index: int, inputs: dict[str, torch.Tensor]) -> NetworkCall:
        raise NotImplementedError

    def take(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        raise NotImplementedError


class DeepCacheSteps(StepCache):
    """DeepCache for one request. ``positions``: each step's timestep's first index in the scheduler's
    whole schedule, which is what ``DeepCacheSDHelper`` counts steps by (a second-order scheduler's
    repeated timesteps share a position, as there)."""

    def __init__(self, plan: CachePlan, positions: list[int]) -> None:
        super().__init__(plan)
        self.positions = positions
        self.feature: torch.Tensor | None = None
        self._full = True

    def full(self, index: int) -> bool:
        if self.feature is None or not self._may_reuse(index):
            return True
        return (self.positions[index] - self.positions[0]) % self.plan.interval == 0

    def call(self, index: int, inputs: dict[str, torch.Tensor]) -> NetworkCall:
        feature = deep_feature(self.plan.branch)
        self._full = self.full(index)
        if self._full:
            return NetworkCall(UNET, inputs, (PREDICTION, feature))
        return NetworkCall(shallow_role(self.plan.branch), {**inputs, feature: self.feature}, (PREDICTION,))

    def take(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._full:
            self.feature = outputs[deep_feature(self.plan.branch)]
        self._count(not self._full)
        return outputs[PREDICTION]


def timestep_positions(schedule: torch.Tensor, timesteps: torch.Tensor) -> list[int]:
    """Each of ``timesteps``' first index in ``schedule`` (DeepCacheSDHelper's step count)."""
    everything = schedule.tolist()
    return [everything.index(value) for value in timesteps.tolist()]


class FirstBlockSteps(StepCache):
    """The first-block cache for one request. A step that may be cached runs the transformer's first
    block (the head, given the kept residual of the rest); each row whose first-block residual moved
    more than the threshold, relative to its residual at its last computed step, runs the rest (the
    tail) in a second call; the others take the head's prediction. A step that may not be cached (the
    first, or outside the window) runs the whole transformer in one call. diffusers decides for the
    whole batch of one call; here each row decides for itself, so an image of a request with several
    is the image a request of its seed alone makes (within the request, rows may differ)."""

    def __init__(self, plan: CachePlan) -> None:
        super().__init__(plan)
        self.head_residual: torch.Tensor | None = None  # per row, at its last computed step
        self.tail_residual: torch.Tensor | None = None
        self._phase = TRANSFORMER
        self._inputs: dict[str, torch.Tensor] = {}
        self._head: dict[str, torch.Tensor] = {}
        self._rows: torch.Tensor | None = None  # the rows that run the tail this step

    def call(self, index: int, inputs: dict[str, torch.Tensor]) -> NetworkCall:
        if self._phase == TRANSFORMER_TAIL:
            rows = self._rows
            tail_inputs = {name: self._head[name][rows] for name in HEAD_OUTPUTS}
            names = SPLIT_TRANSFORMER_TENSORS[TRANSFORMER_TAIL][0][len(HEAD_OUTPUTS) :]
            tail_inputs |= {name: inputs[name][rows] for name in (*names, LORA_SCALES) if name in inputs}
            return NetworkCall(TRANSFORMER_TAIL, tail_inputs, (PREDICTION, TAIL_RESIDUAL))
        self._inputs = inputs
        if self.tail_residual is None or not self._may_reuse(index):
            self._phase = TRANSFORMER
            return NetworkCall(TRANSFORMER, inputs, (PREDICTION, HEAD_RESIDUAL, TAIL_RESIDUAL))
        self._phase = TRANSFORMER_HEAD
        head_inputs = {**inputs, TAIL_RESIDUAL: self.tail_residual}
        return NetworkCall(TRANSFORMER_HEAD, head_inputs, (*HEAD_OUTPUTS, HEAD_RESIDUAL, PREDICTION))

    def take(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self._phase == TRANSFORMER:
            self.head_residual, self.tail_residual = outputs[HEAD_RESIDUAL], outputs[TAIL_RESIDUAL]
            self._count(False)
            return outputs[PREDICTION]
        if self._phase == TRANSFORMER_HEAD:
            moved = changed(outputs[HEAD_RESIDUAL], self.head_residual)
            self._rows = torch.nonzero(moved > self.plan.threshold).flatten()
            if len(self._rows) == 0:  # every row skips the rest
                self._count(True)
                return outputs[PREDICTION]
            self._head = outputs
            self._phase = TRANSFORMER_TAIL
            return None
        rows, head = self._rows, self._head
        prediction = head[PREDICTION].clone()
        prediction[rows] = outputs[PREDICTION]
        self.tail_residual = self.tail_residual.clone()
        self.tail_residual[rows] = outputs[TAIL_RESIDUAL]
        self.head_residual = self.head_residual.clone()
        self.head_residual[rows] = head[HEAD_RESIDUAL][rows]
        self._phase = TRANSFORMER_HEAD
        self._count(False)
        return prediction


def changed(residual: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Per row, the relative mean absolute difference of the first block's residual from ``before``
    (diffusers' FBCHeadBlockHook, row by row)."""
    dims = tuple(range(1, residual.dim()))
    return (residual - before).abs().mean(dim=dims) / before.abs().mean(dim=dims)


def start_cache(plan: CachePlan | None, scheduler: object, timesteps: torch.Tensor) -> StepCache | None:
    """The request's cache state for its job (None: every step in full)."""
    if plan is None:
        return None
    if plan.kind == "deep_cache":
        return DeepCacheSteps(plan, timestep_positions(scheduler.timesteps, timesteps))
    return FirstBlockSteps(plan)
