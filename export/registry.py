"""The model registry: one TOML file listing the checkpoints a deployment serves.

    [[models]]
    id = "local:sd15-inpaint@1"          # source:id@version, as the reference APIs name models
    checkpoint = "/models/sd15-inpainting" # a diffusers folder ...
    # tiny = "sd15-inpaint"                # ... or a tiny random-weight checkpoint of this family
    family = "sd15-inpaint"                # optional; checked against the checkpoint
    default_steps = 30                     # optional defaults for requests that leave them out
    default_guidance = 7.5
    default_scheduler = "DPM++ 2M"
    # name = "sd15"                        # optional Triton name; derived from the id otherwise
    # aliases = ["runware:100@1"]          # optional: other ids requests may use for this model

    [[models.lora]]                        # optional, repeatable: LoRA adapters requests may apply
    id = "local:watercolor@1"              # the id requests name it by (lora: [{model, weight}])
    file = "/models/loras/watercolor.safetensors"  # diffusers or kohya format, as diffusers loads it

``triton-inpaint export registry`` builds every entry into one model repository; the id, family,
native resolution and defaults are written into each ensemble's config, where clients read them.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.schedulers import resolve_scheduler
from triton_inpaint.api.schema import INPAINT
from triton_inpaint.export.repository import ExportOptions, check_name, export_checkpoint
from triton_inpaint.export.tiny import write_tiny_checkpoint
from triton_inpaint.pipelines.spec import FAMILIES

ID_PATTERN = re.compile(r"^[a-z0-9]+:[A-Za-z0-9._\-]+@[A-Za-z0-9._\-]+$")
KEYS = {
    "id",
    "name",
    "checkpoint",
    "tiny",
    "family",
    "default_steps",
    "default_guidance",
    "default_scheduler",
    "aliases",
    "lora",
}
LORA_KEYS = {"id", "file"}


class RegistryError(ValueError):
    """A registry entry is wrong; the message names the file, the entry and the field."""


@dataclass(frozen=True)
class RegistryEntry:
    id: str
    name: str
    checkpoint: Path | None
    tiny: str | None
    family: str | None
    default_steps: int | None
    default_guidance: float | None
    default_scheduler: str | None
    aliases: tuple[str, ...] = ()
    lora: tuple[tuple[str, Path], ...] = ()  # (id, file) per adapter, in the order declared


def name_for(model_id: str) -> str:
    """A Triton-safe model name from an id: ``local:sd15-inpaint@1`` -> ``local_sd15-inpaint_1``."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", model_id)


def _entry(raw: dict, where: str, base: Path) -> RegistryEntry:
    def fail(field: str, message: str) -> RegistryError:
        return RegistryError(f"{where}: {field}: {message}")

    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key; allowed: {', '.join(sorted(KEYS))}")
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not ID_PATTERN.match(model_id):
        raise fail(
            "id", f"must look like 'source:name@version' (e.g. 'local:sd15-inpaint@1'), got {model_id!r}"
        )
    name = raw.get("name") or name_for(model_id)
    try:
        check_name(name)
    except ValueError as exc:
        raise fail("name", str(exc).removeprefix("--name ")) from None
    if ("checkpoint" in raw) == ("tiny" in raw):
        raise fail("checkpoint", "give exactly one of 'checkpoint' (a diffusers folder) or 'tiny' (a family)")
    tiny = raw.get("tiny")
    if tiny is not None and tiny not in FAMILIES:
        raise fail("tiny", f"must be one of {', '.join(FAMILIES)}, got {tiny!r}")
    family = raw.get("family")
    if family is not None and family not in FAMILIES:
        raise fail("family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    # The defaults a request may override are held to the ranges a request's own values are.
    for key, control in (("default_steps", "steps"), ("default_guidance", "guidance_scale")):
        try:
            INPAINT[control].check(raw.get(key))
        except InvalidInputError as exc:
            raise fail(key, exc.reason) from None
    scheduler = raw.get("default_scheduler")
    if scheduler is not None:
        try:
            scheduler = resolve_scheduler(str(scheduler)).name
        except ValueError as exc:
            raise fail("default_scheduler", str(exc).removeprefix("scheduler: ")) from None
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and ID_PATTERN.match(a) for a in aliases):
        raise fail("aliases", f"must be a list of ids like 'runware:100@1', got {aliases!r}")
    checkpoint = raw.get("checkpoint")
    lora = _adapters(raw.get("lora", []), fail, base)
    return RegistryEntry(
        id=model_id,
        name=name,
        checkpoint=None if checkpoint is None else (base / checkpoint).resolve(),
        tiny=tiny,
        family=family,
        default_steps=raw.get("default_steps"),
        default_guidance=None if raw.get("default_guidance") is None else float(raw["default_guidance"]),
        default_scheduler=scheduler,
        aliases=tuple(aliases),
        lora=lora,
    )


def _adapters(
    raw: object, fail: Callable[[str, str], RegistryError], base: Path
) -> tuple[tuple[str, Path], ...]:
    """The entry's ``[[models.lora]]`` tables: ids unique, files present."""
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise fail("lora", "must be [[models.lora]] tables with id and file")
    adapters: list[tuple[str, Path]] = []
    for number, item in enumerate(raw, 1):
        where = f"lora #{number}"
        unknown = sorted(set(item) - LORA_KEYS)
        if unknown:
            raise fail(where, f"unknown key {unknown[0]!r}; allowed: id, file")
        adapter_id, file = item.get("id"), item.get("file")
        if not isinstance(adapter_id, str) or not ID_PATTERN.match(adapter_id):
            raise fail(f"{where}: id", f"must look like 'local:watercolor@1', got {adapter_id!r}")
        if adapter_id in {known for known, _ in adapters}:
            raise fail(f"{where}: id", f"{adapter_id!r} appears twice")
        if not isinstance(file, str) or not (base / file).is_file():
            raise fail(f"{where}: file", f"no such file: {file!r} (relative paths are from the registry)")
        adapters.append((adapter_id, (base / file).resolve()))
    if len(adapters) > 16:
        raise fail("lora", f"at most 16 adapters a model, got {len(adapters)}")
    return tuple(adapters)


def load_registry(path: Path) -> list[RegistryEntry]:
    """Parse and check the whole file before anything is built; relative paths are from the file."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise RegistryError(f"{path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: not valid TOML ({exc})") from None
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise RegistryError(f"{path}: needs at least one [[models]] entry")
    entries = [_entry(raw, f"{path} [[models]] #{i + 1}", path.parent) for i, raw in enumerate(models)]
    for field in ("id", "name"):
        seen: set[str] = set()
        for entry in entries:
            value = getattr(entry, field)
            if value in seen:
                raise RegistryError(f"{path}: {field} {value!r} appears twice")
            seen.add(value)
    # A request's model id must name one model: aliases are unique and never another entry's id.
    claimed = {entry.id: entry.id for entry in entries}
    for entry in entries:
        for alias in entry.aliases:
            if alias in claimed:
                raise RegistryError(f"{path}: {entry.id}: alias {alias!r} already names {claimed[alias]}")
            claimed[alias] = entry.id
    return entries


def export_registry(
    registry: Path, repository: Path, cache: Path, log: Callable[[str], None] = print, **options: object
) -> list[tuple[RegistryEntry, str, int]]:
    """Build every entry into ``repository``; tiny checkpoints are written under ``cache``.

    Returns (entry, family, native resolution) per model.
    """
    from triton_inpaint.pipelines.spec import PipelineSpec

    entries = load_registry(registry)
    built = []
    for number, entry in enumerate(entries, 1):
        log(f"[{number}/{len(entries)}] {entry.id} -> {entry.name}")
        checkpoint = entry.checkpoint
        if entry.tiny is not None:
            checkpoint = write_tiny_checkpoint(entry.tiny, cache / entry.name, seed=0)
        export_options = ExportOptions(
            model_id=entry.id,
            default_steps=entry.default_steps,
            default_guidance=entry.default_guidance,
            default_scheduler=entry.default_scheduler,
            family=entry.family,
            model_aliases=entry.aliases,
            lora=entry.lora,
            **options,
        )
        export_checkpoint(checkpoint, entry.name, repository, export_options, log=lambda m: log(f"      {m}"))
        spec = PipelineSpec.load(repository / f"{entry.name}_denoise" / "1")
        if entry.family is not None and entry.family != spec.family:
            raise RegistryError(
                f"{registry}: {entry.id}: family says {entry.family}, the checkpoint is {spec.family}"
            )
        built.append((entry, spec.family, spec.native_resolution))
    return built
