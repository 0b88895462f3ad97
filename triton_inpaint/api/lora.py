"""LoRA adapters a request applies: their text form on the wire and how they become per-adapter scales.

A request names adapters the deployment declared for its model (the registry's ``[[models.lora]]``) and
a weight for each, as the hosted API's ``lora: [{model, weight}]``. Between the client, the gateway and
Triton the list travels as one text input, ``ID=WEIGHT`` items joined by commas (``ID`` alone means
weight 1), so it fits the ensemble's one-string inputs and a perf_analyzer input file. Ids cannot hold
``=`` or ``,`` (see :data:`ID_CHARACTERS`), so the text form is unambiguous.

Torch-free: the client, the gateway and the denoise model all parse and check with this one module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from triton_inpaint.api.errors import InvalidInputError

FIELD = "lora"
# The hosted API's range for a LoRA weight; negative weights steer away from the adapter's style.
WEIGHT_RANGE = (-4.0, 4.0)
DEFAULT_WEIGHT = 1.0
MAX_PER_REQUEST = 8
# Model ids as the registry writes them: source:name@version (see export/registry.py's ID_PATTERN).
ID_CHARACTERS = re.compile(r"^[A-Za-z0-9:._\-@]+$")


@dataclass(frozen=True)
class LoraUse:
    """One adapter of a request and the weight it is applied at."""

    model: str
    weight: float = DEFAULT_WEIGHT


def check_uses(uses: Iterable[LoraUse]) -> tuple[LoraUse, ...]:
    """The adapters checked on their own (count, id characters, weight range, no repeats); whether the
    model serves them is :func:`adapter_scales`'s question."""
    uses = tuple(uses)
    if len(uses) > MAX_PER_REQUEST:
        raise InvalidInputError(FIELD, f"at most {MAX_PER_REQUEST} adapters a request, got {len(uses)}")
    seen: set[str] = set()
    low, high = WEIGHT_RANGE
    for index, use in enumerate(uses):
        where = f"{FIELD}[{index}]"
        if not ID_CHARACTERS.match(use.model):
            raise InvalidInputError(
                f"{where}.model", f"must be an adapter id such as 'local:watercolor@1', got {use.model!r}"
            )
        if use.model in seen:
            raise InvalidInputError(f"{where}.model", f"{use.model!r} is named twice; give it once")
        seen.add(use.model)
        if not (math.isfinite(use.weight) and low <= use.weight <= high):
            raise InvalidInputError(
                f"{where}.weight", f"must be a number in [{low}, {high}], got {use.weight}"
            )
    return uses


def parse_lora(text: str | None) -> tuple[LoraUse, ...]:
    """``"local:a@1=0.8,local:b@1"`` -> the uses, checked; None or blank: none."""
    if text is None or not text.strip():
        return ()
    uses = []
    for index, item in enumerate(text.split(",")):
        model, separator, weight = item.strip().partition("=")
        if not model:
            raise InvalidInputError(FIELD, f"item {index + 1} ({item.strip()!r}) names no adapter; "
                                           "write ID=WEIGHT, e.g. local:watercolor@1=0.8")  # fmt: skip
        try:
            value = float(weight) if separator else DEFAULT_WEIGHT
        except ValueError:
            raise InvalidInputError(
                f"{FIELD}[{index}].weight", f"must be a number in {list(WEIGHT_RANGE)}, got {weight!r}"
            ) from None
        uses.append(LoraUse(model.strip(), value))
    return check_uses(uses)


def format_lora(uses: Iterable[LoraUse]) -> str:
    """The text form of ``uses`` (``repr`` of the weight keeps every float exact)."""
    return ",".join(f"{use.model}={use.weight!r}" for use in uses)


def adapter_scales(uses: Sequence[LoraUse], served: Sequence[str]) -> tuple[float, ...]:
    """One weight per adapter the model serves, in its order (0 for those the request leaves out);
    an adapter the model does not serve is refused with the ones it does listed."""
    scales = [0.0] * len(served)
    for index, use in enumerate(uses):
        if use.model not in served:
            offered = ", ".join(served) or "none (its registry entry declares no [[models.lora]])"
            raise InvalidInputError(
                f"{FIELD}[{index}].model",
                f"{use.model!r} is not an adapter of this model; it serves: {offered}",
            )
        scales[served.index(use.model)] = float(use.weight)
    return tuple(scales)


def lora_text(value: object) -> str | None:
    """A request's ``lora`` in the text form, given as that text, or as items that are :class:`LoraUse`,
    ``(model, weight)`` pairs, the hosted API's ``{"model": ..., "weight": ...}`` objects or anything
    with ``model`` and ``weight`` attributes."""
    if value is None or isinstance(value, str):
        return value
    uses = []
    for item in value:  # type: ignore[attr-defined]
        if isinstance(item, LoraUse):
            uses.append(item)
        elif isinstance(item, dict):
            uses.append(LoraUse(str(item.get("model", "")), float(item.get("weight", DEFAULT_WEIGHT))))
        elif hasattr(item, "model") and hasattr(item, "weight"):  # the gateway's task items
            uses.append(LoraUse(str(item.model), float(item.weight)))
        else:
            model, weight = item
            uses.append(LoraUse(str(model), float(weight)))
    return format_lora(check_uses(uses))


def lora_items(text: str | None) -> list[dict[str, object]]:
    """The hosted API's ``lora`` list (``[{"model": ..., "weight": ...}]``) for the text form."""
    return [{"model": use.model, "weight": use.weight} for use in parse_lora(text)]
