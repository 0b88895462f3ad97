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

from triton_inpaint.client.gateway_client import GatewayClient
from triton_inpaint.client.inpaint_client import (
    PROTOCOLS,
    InpaintClient,
    InpaintError,
    ModelUnavailableError,
    ServerUnreachableError,
)
from triton_inpaint.imaging import DEFAULT_QUALITY, QUALITY_RANGE
from triton_inpaint.masks import MASK_BLUR_RANGE, MASK_EXPAND_RANGE, MASK_MARGIN_RANGE
from triton_inpaint.params import (
    DEFAULT_STRENGTH,
    GUIDANCE_RANGE,
    NUM_IMAGES_RANGE,
    SEED_RANGE,
    STEPS_RANGE,
    STRENGTH_RANGE,
)
from triton_inpaint.schedulers import scheduler_names

API_KEY_ENV = "TRITON_INPAINT_API_KEY"


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SystemExit(f"error: {flag} {path}: {exc.strerror}") from None


def _inpaint(args: argparse.Namespace) -> int:
    image = _read(args.image, "--image")
    mask = None if args.mask is None else _read(args.mask, "--mask")
    result, code = _ask(
        args,
        lambda client: client.inpaint(
            args.model,
            image,
            mask,
            args.prompt,
            negative_prompt=args.negative_prompt,
            steps=args.steps,
            strength=args.strength,
            guidance_scale=args.guidance,
            seed=args.seed,
            scheduler=args.scheduler,
            width=args.width,
            height=args.height,
            mask_invert=args.mask_invert or None,
            mask_expand=args.mask_expand,
            mask_blur=args.mask_blur,
            mask_margin=args.mask_margin,
            num_images=args.num_images,
            output_format=args.output_format,
            output_quality=args.quality,
            mask_model=args.mask_model,
            mask_prompt=args.mask_prompt,
        ),
    )
    if result is None:
        return code
    if args.mask_out is not None and result.mask:
        _write(args.mask_out, result.mask)
        print(f"mask -> {args.mask_out}")
    elif args.mask_out is not None:  # the gateway returns the mask only when it made it
        print("mask: the uploaded one was used; nothing written to --mask-out", file=sys.stderr)
    for path, data, seed in zip(
        output_paths(args.out, len(result.images)), result.images, result.seeds, strict=True
    ):
        _write(path, data)
        print(f"seed {seed} -> {path}")
    return 0


def _ask(args: argparse.Namespace, call: Callable[[Any], Any]) -> tuple[Any, int]:
    """(result, 0), or (None, exit code) after printing the error: 2 refused, 3 no server answers.

    The call goes to Triton (``--url``) or, with ``--gateway``, to the HTTP gateway: same calls.
    """
    if args.gateway:
        target = f"the gateway at {args.gateway}"
        client = GatewayClient(args.gateway, args.api_key or os.environ.get(API_KEY_ENV))
    else:
        target = f"Triton at {args.url} over {args.protocol}"
        client = None
    try:
        with client or InpaintClient(args.url, args.protocol) as opened:
            return call(opened), 0
    except ServerUnreachableError as exc:
        print(f"error: cannot reach {target}: {exc}", file=sys.stderr)
        return None, 3
    except ModelUnavailableError as exc:  # temporary, like an unreachable server: retry later
        print(f"error: {exc}", file=sys.stderr)
        return None, 3
    except InpaintError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, 2
    except Exception as exc:  # anything else on the way: say what and where, no traceback
        print(f"error: cannot reach {target}: {exc}", file=sys.stderr)
        return None, 3


def _add_target(parser: argparse.ArgumentParser) -> None:
    """--url/--protocol for Triton, or --gateway/--api-key for the HTTP gateway."""
    parser.add_argument(
        "--url", default="127.0.0.1:8001", help="Triton HOST:PORT (gRPC port, or HTTP with --protocol http)"
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    parser.add_argument(
        "--gateway", default=None, help="send to the HTTP gateway at http://HOST:PORT instead of Triton"
    )
    parser.add_argument("--api-key", default=None, help=f"the gateway's API key (default: ${API_KEY_ENV})")


def _write(path: Path, data: bytes) -> None:
    """Write through a temporary name: never leave a half-written result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def output_paths(out: Path, count: int) -> list[Path]:
    """``--out`` names the first image; the others get -1, -2, ... before the extension."""
    return [out] + [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, count)]


def _models(args: argparse.Namespace) -> int:
    try:
        with InpaintClient(args.url, args.protocol) as client:
            models = client.list_models()
    except (ServerUnreachableError, OSError) as exc:
        print(f"error: cannot reach Triton at {args.url} over {args.protocol}: {exc}", file=sys.stderr)
        return 3
    print(json.dumps([dataclasses.asdict(m) for m in models], indent=2))
    return 0


def _mask(args: argparse.Namespace) -> int:
    image = _read(args.image, "--image")
    result, code = _ask(
        args,
        lambda client: client.mask(
            image,
            args.detector,
            args.prompt,
            confidence=args.confidence,
            max_detections=args.max_detections,
            padding=args.padding,
            blur=args.blur,
            invert=args.invert or None,
        ),
    )
    if result is None:
        return code
    _write(args.out, result.mask)
    which = {"model": args.detector} if args.prompt is None else {"prompt": args.prompt}
    print(json.dumps({**which, "mask": str(args.out), "detections": result.detections}))
    return 0


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    from triton_inpaint.masking import (
        CONFIDENCE_RANGE,
        DEFAULT_BLUR,
        DEFAULT_CONFIDENCE,
        DEFAULT_MAX_DETECTIONS,
        DEFAULT_PADDING,
        MASKING_MODELS,
        MAX_DETECTIONS_RANGE,
        PADDING_RANGE,
    )

    mask = subparsers.add_parser(
        "mask",
        help="make a mask with a detector (or a mask prompt) through a running Triton server; "
        "prints the detections as JSON",
    )
    _add_target(mask)
    which = mask.add_mutually_exclusive_group(required=True)
    which.add_argument("--detector", choices=MASKING_MODELS, help="masking model")
    which.add_argument("--prompt", help="a mask prompt such as 'face', 'eyes', 'hands' or 'background'")
    mask.add_argument("--image", type=Path, required=True, help="input image (PNG, JPEG or WEBP)")
    mask.add_argument("--out", type=Path, required=True, help="where to write the mask (PNG)")
    mask.add_argument(
        "--confidence",
        type=float,
        default=None,
        help=f"minimum score {CONFIDENCE_RANGE[0]}-{CONFIDENCE_RANGE[1]} (default {DEFAULT_CONFIDENCE})",
    )
    mask.add_argument(
        "--max-detections",
        type=int,
        default=None,
        help=f"{MAX_DETECTIONS_RANGE[0]}-{MAX_DETECTIONS_RANGE[1]} (default {DEFAULT_MAX_DETECTIONS})",
    )
    mask.add_argument(
        "--padding",
        type=int,
        default=None,
        help=f"grow the mask by {PADDING_RANGE[0]}-{PADDING_RANGE[1]} px (default {DEFAULT_PADDING})",
    )
    mask.add_argument(
        "--blur",
        type=int,
        default=None,
        help=f"feather the mask over {MASK_BLUR_RANGE[0]}-{MASK_BLUR_RANGE[1]} px (default {DEFAULT_BLUR})",
    )
    mask.add_argument("--invert", action="store_true", help="select everything but the detections")
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
        help="inpaint an image through a running Triton server",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_target(parser)
    parser.add_argument(
        "--model",
        required=True,
        help="model name given at export (e.g. 'tiny') or registry id (e.g. 'local:sd15-inpaint@1')",
    )
    parser.add_argument("--image", type=Path, required=True, help="input image (PNG, JPEG, WEBP)")
    mask_source = parser.add_mutually_exclusive_group(required=True)
    mask_source.add_argument(
        "--mask", type=Path, help="mask of the same size: white regenerates, black keeps"
    )
    mask_source.add_argument(
        "--mask-model",
        choices=MASKING_MODELS,
        help="instead of --mask: the server masks what this detector finds (needs 'export detectors')",
    )
    mask_source.add_argument(
        "--mask-prompt",
        help="instead of --mask: the server masks what this names, e.g. 'face', 'background' or, with "
        "CLIPSeg weights exported, any phrase such as 'hair'",
    )
    parser.add_argument("--mask-out", type=Path, default=None, help="also write the mask used (PNG) here")
    parser.add_argument("--prompt", required=True, help="what to paint into the masked area")
    parser.add_argument("--negative-prompt", default=None, help="what to steer away from")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"denoising steps, {STEPS_RANGE[0]}-{STEPS_RANGE[1]} (default: the model's, 20)",
    )
    parser.add_argument(
        "--strength",
        type=float,
        default=None,
        help=f"{STRENGTH_RANGE[0]}-{STRENGTH_RANGE[1]}: how much the masked area changes "
        f"(default {DEFAULT_STRENGTH})",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help=f"guidance scale {GUIDANCE_RANGE[0]}-{GUIDANCE_RANGE[1]} (default: the model's, 7)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"{SEED_RANGE[0]}-{SEED_RANGE[1]}; random when absent; the seed used is printed",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        help=f"one of: {', '.join(scheduler_names())} (default: the checkpoint's)",
    )
    parser.add_argument(
        "--width", type=int, default=None, help="processing width, multiple of 8 (default: native)"
    )
    parser.add_argument(
        "--height", type=int, default=None, help="processing height, multiple of 8 (default: native)"
    )
    parser.add_argument(
        "--mask-invert",
        action="store_true",
        help="regenerate what the mask keeps (e.g. the background) instead of what it marks",
    )
    parser.add_argument(
        "--mask-expand",
        type=int,
        default=None,
        help=f"grow the mask by {MASK_EXPAND_RANGE[0]}-{MASK_EXPAND_RANGE[1]} px (default 0)",
    )
    parser.add_argument(
        "--mask-blur",
        type=int,
        default=None,
        help=f"feather the mask edge over {MASK_BLUR_RANGE[0]}-{MASK_BLUR_RANGE[1]} px (default 0)",
    )
    parser.add_argument(
        "--mask-margin",
        type=int,
        default=None,
        help=f"{MASK_MARGIN_RANGE[0]}-{MASK_MARGIN_RANGE[1]} px: inpaint only a crop around "
        "the mask, at full model resolution (default off)",
    )
    parser.add_argument(
        "--num-images",
        type=int,
        default=None,
        help=f"{NUM_IMAGES_RANGE[0]}-{NUM_IMAGES_RANGE[1]} images with seeds seed, seed+1, ... (default 1)",
    )
    parser.add_argument("--output-format", default=None, help="PNG, JPG or WEBP (default PNG)")
    parser.add_argument(
        "--quality",
        type=int,
        default=None,
        help=f"{QUALITY_RANGE[0]}-{QUALITY_RANGE[1]} for JPG and WEBP (default {DEFAULT_QUALITY})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="where to write the first image; others get -1, -2, ... before the extension",
    )
    parser.set_defaults(handler=_inpaint)
