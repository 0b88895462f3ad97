"""The ``triton-inpaint`` command: subcommands are implemented by the packages that own them."""

from __future__ import annotations

import argparse
import os
import sys

from triton_inpaint import __version__
from triton_inpaint.api.commands import TRACEBACK_ENV, CommandError, ExitCode, use_help_formatter


def build_parser() -> argparse.ArgumentParser:
    from triton_inpaint.client import cli as client_cli
    from triton_inpaint.export import cli as export_cli
    from triton_inpaint.gateway import cli as gateway_cli
    from triton_inpaint.server import cli as serve_cli
    from triton_inpaint.tools import autoscaling, benchmark, demo, gpu_bench, replica_bench

    parser = argparse.ArgumentParser(
        prog="triton-inpaint", description="Self-hosted inpainting on NVIDIA Triton Inference Server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    demo.add_subcommands(subparsers)
    export_cli.add_subcommands(subparsers)
    serve_cli.add_subcommands(subparsers)
    client_cli.add_subcommands(subparsers)
    gateway_cli.add_subcommands(subparsers)
    benchmark.add_subcommands(subparsers)
    gpu_bench.add_subcommands(subparsers)
    replica_bench.add_subcommands(subparsers)
    autoscaling.add_subcommands(subparsers)
    use_help_formatter(parser)
    return parser


def _quiet_libraries() -> None:
    """Our own progress lines say what is happening; the libraries' loading chatter only hides them."""
    for name, value in (
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("HF_HUB_OFFLINE", "1"),
    ):
        os.environ.setdefault(name, value)


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.code)
    except (ValueError, FileNotFoundError) as exc:
        # Bad arguments found past argparse (a checkpoint folder that is not one, a bad name): no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - a bug: one line for the person, the traceback on request
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc} (a bug; run again with {TRACEBACK_ENV}=1 to "
            "see where, and report it)",
            file=sys.stderr,
        )
        return int(ExitCode.BUG)


if __name__ == "__main__":
    sys.exit(main())
