"""``triton-inpaint inpaint``: one request from files on disk to a file on disk."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from triton_inpaint.api.commands import CommandError, ExitCode
from triton_inpaint.api.schema import INPAINT, MASK, MASK_SOURCES, Control, RequestSchema
from triton_inpaint.client.gateway_client import GatewayClient
from triton_inpaint.client.inpaint_client import (
    PROTOCOLS,
    DeadlineExceededError,
    InpaintClient,
    InpaintError,
    ModelNotServedError,
    ModelUnavailableError,
    ServerUnreachableError,
)
from triton_inpaint.client.streaming import Progress

API_KEY_ENV = "TRITON_INPAINT_API_KEY"


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"{flag} {path}: {exc.strerror}") from None


def _controls(args: argparse.Namespace, schema: RequestSchema) -> dict[str, Any]:
    """The controls given on the command line (absent flags are not in ``args``), files read."""
    values = {}
    for control in schema:
        if hasattr(args, control.name):
            value = getattr(args, control.name)
            values[control.name] = _read(value, control.cli_flag) if control.kind is bytes else value
    return values


def _inpaint(args: argparse.Namespace) -> int:
    controls = _controls(args, INPAINT)
    image, mask, prompt = (controls.pop(name, None) for name in ("image", "mask", "prompt"))
    streamed = {"on_progress": _show_progress} if args.progress else {}
    result = _ask(
        args, lambda client: client.inpaint(args.model, image, mask, prompt, **streamed, **controls)
    )
    if args.progress:
        print(file=sys.stderr)  # ends the progress line
    if args.mask_out is not None and result.mask:
        write_whole(args.mask_out, result.mask)
        print(f"mask -> {args.mask_out}")
    elif args.mask_out is not None:  # the gateway returns the mask only when it made it
        print("mask: the uploaded one was used; nothing written to --mask-out", file=sys.stderr)
    if controls.get("dry_run"):
        print("dry run: the request passed every check; no images were made")
        return 0
    for path, data, seed in zip(
        output_paths(args.out, len(result.images)), result.images, result.seeds, strict=True
    ):
        write_whole(path, data)
        print(f"seed {seed} -> {path}")
    return 0


def _show_progress(progress: Progress) -> None:
    """One line on stderr, rewritten in place on a terminal, one line per step elsewhere (a log)."""
    text = f"step {progress.step} of {progress.total}"
    if sys.stderr.isatty():
        print(f"\r{text}", end="", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def _ask(args: argparse.Namespace, call: Callable[[Any], Any]) -> Any:
    """``call(client)`` against Triton (``--url``) or, with ``--gateway``, the HTTP gateway (same
    calls); a failure becomes a CommandError with the exit code that says what to do about it."""
    if getattr(args, "gateway", None):  # `models` asks Triton only
        target = f"the gateway at {args.gateway}"
        client = GatewayClient(args.gateway, args.api_key or os.environ.get(API_KEY_ENV))
    else:
        target = f"Triton at {args.url} over {args.protocol}"
        client = None
    try:
        with client or InpaintClient(args.url, args.protocol) as opened:
            return call(opened)
    except ServerUnreachableError as exc:
        raise CommandError(f"cannot reach {target}: {exc}", ExitCode.UNAVAILABLE) from None
    except DeadlineExceededError as exc:  # the server answers; the request outlasted the wait
        raise CommandError(f"{target}: {exc}", ExitCode.UNAVAILABLE) from None
    except ModelUnavailableError as exc:  # temporary, like an unreachable server: retry later
        raise CommandError(str(exc), ExitCode.UNAVAILABLE) from None
    except ModelNotServedError as exc:
        raise CommandError(f"{exc} (see `triton-inpaint models`)", ExitCode.NOT_SERVED) from None
    except InpaintError as exc:
        raise CommandError(f"refused by {target}: {exc}", ExitCode.BAD_INPUT) from None
    except ValueError as exc:  # a call the client refuses to make, e.g. progress over Triton's HTTP
        raise CommandError(str(exc), ExitCode.BAD_INPUT) from None


def _add_target(parser: argparse.ArgumentParser) -> None:
    """--url/--protocol for Triton, or --gateway/--api-key for the HTTP gateway."""
    parser.add_argument(
        "--url",
        default="127.0.0.1:8001",
        help="Triton HOST:PORT (gRPC port, or HTTP with --protocol http); over gRPC also a name resolving to "
        "several Tritons, e.g. dns:///NAME:PORT of a headless Service, spread over one request at a time",
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    parser.add_argument(
        "--gateway", default=None, help="send to the HTTP gateway at http://HOST:PORT instead of Triton"
    )
    parser.add_argument("--api-key", default=None, help=f"the gateway's API key (default: ${API_KEY_ENV})")


def write_whole(path: Path, data: bytes) -> None:
    """Write through a temporary name: never leave a half-written result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def output_paths(out: Path, count: int) -> list[Path]:
    """``--out`` names the first image; the others get -1, -2, ... before the extension."""
    return [out] + [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, count)]


def _models(args: argparse.Namespace) -> int:
    models = _ask(args, lambda client: client.list_models())
    print(json.dumps([dataclasses.asdict(m) for m in models], indent=2))
    return 0


def _mask(args: argparse.Namespace) -> int:
    controls = _controls(args, MASK)
    image = controls.pop("image")
    result = _ask(args, lambda client: client.mask(image, **controls))
    write_whole(args.out, result.mask)
    which = {name: controls[name] for name in ("model", "prompt") if controls.get(name) is not None}
    print(json.dumps({**which, "mask": str(args.out), "detections": result.detections}))
    return 0


def control_help(control: Control) -> str:
    """A flag's help: what it does, what it allows and its default, all from the declaration."""
    listed_by_argparse = control.choices is not None and not control.open_choices
    allowed = f"; {control.allowed}" if control.allowed and not listed_by_argparse else ""
    has_default = control.default is not None or control.default_text is not None
    shown = has_default and control.kind is not bool  # an on/off flag is off unless given
    default = f" (default: {control.shown_default})" if shown else ""
    return f"{control.description}{allowed}{default}"


def add_controls(
    parser: argparse.ArgumentParser,
    schema: RequestSchema,
    exclusive: tuple[str, ...],
    one_required: bool = True,
    **help_overrides: str,
) -> None:
    """One flag per control of ``schema``; the ``exclusive`` controls form an either-or group (one of
    them required unless ``one_required`` is false). Controls that share a flag (the outpainting sides)
    take one comma-separated value each, in their declared order.

    Absent flags stay out of the namespace (``argparse.SUPPRESS``), so the server's defaults apply.
    """
    group = parser.add_mutually_exclusive_group(required=one_required)
    sharing: dict[str, list[Control]] = {}
    for control in schema:
        sharing.setdefault(control.cli_flag, []).append(control)
    for flag, controls in sharing.items():
        if len(controls) > 1:
            parser.add_argument(flag, action=_Together, controls=controls, help=_together_help(controls))
            continue
        (control,) = controls
        target = group if control.name in exclusive else parser
        options: dict[str, Any] = {"dest": control.name, "default": argparse.SUPPRESS}
        options["help"] = help_overrides.get(control.name, control_help(control))
        if control.kind is bool:
            options["action"] = "store_true"
        else:
            options["type"] = Path if control.kind is bytes else control.kind
            if control.choices and not control.open_choices:
                options["choices"] = control.choices
            if control.required:
                options["required"] = True
        target.add_argument(flag, **options)


_KIND_NAMES = {int: "an integer", float: "a number", str: "text"}


class _Together(argparse.Action):
    """One flag for several controls: ``--outpaint 64,0,64,0`` sets outpaint_top... outpaint_left."""

    def __init__(self, option_strings: list[str], dest: str, controls: list[Control], **kwargs: Any) -> None:
        self.controls = controls
        names = ",".join(control.name.rsplit("_", 1)[-1].upper() for control in controls)
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, metavar=names, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        parts = str(values).split(",")
        if len(parts) != len(self.controls):
            raise argparse.ArgumentError(
                self, f"takes {len(self.controls)} comma-separated values ({self.metavar}), got {values!r}"
            )
        for control, part in zip(self.controls, parts, strict=True):
            try:
                setattr(namespace, control.name, control.kind(part.strip()))
            except ValueError:
                raise argparse.ArgumentError(
                    self, f"{control.name} must be {_KIND_NAMES[control.kind]}, got {part!r}"
                ) from None


def _together_help(controls: list[Control]) -> str:
    first = controls[0]
    allowed = f"; each {first.allowed}" if first.allowed else ""
    default = f" (default: {first.shown_default} each)" if first.default is not None else ""
    side = first.name.rsplit("_", 1)[-1]
    return f"{first.description.replace(f'the {side}', 'each side')}{allowed}{default}"


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    mask = subparsers.add_parser(
        "mask",
        help="make a mask with a detector (or a mask prompt) through a running Triton server; "
        "prints the detections as JSON",
    )
    _add_target(mask)
    add_controls(mask, MASK, ("model", "prompt"), prompt="a mask prompt such as 'face', 'eyes' or 'hair'")
    mask.add_argument("--out", type=Path, required=True, help="where to write the mask (PNG)")
    mask.set_defaults(handler=_mask)

    models = subparsers.add_parser(
        "models",
        help="list the served inpainting models with their ids, families and defaults (JSON)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    models.add_argument("--url", default="127.0.0.1:8001", help="Triton HOST:PORT")
    models.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    models.set_defaults(handler=_models)

    parser = subparsers.add_parser(
        "inpaint",
        help="inpaint an image through a running Triton server (or the gateway)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_target(parser)
    parser.add_argument(
        "--model",
        required=True,
        help="model name given at export (e.g. 'tiny') or registry id (e.g. 'local:sd15-inpaint@1')",
    )
    add_controls(parser, INPAINT, MASK_SOURCES, one_required=False)  # outpainting needs no mask
    parser.add_argument("--mask-out", type=Path, default=None, help="also write the mask used (PNG) here")
    parser.add_argument(
        "--progress",
        action="store_true",
        help="show the denoising steps on stderr as they run (the model's streaming twin: over gRPC, or "
        "the gateway's server-sent events)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="where to write the first image; others get -1, -2, ... before the extension",
    )
    parser.set_defaults(handler=_inpaint)
