"""The ``microcond`` command: argument parsing and wiring of the stages, no logic of its own.

Each subcommand has one ``_add_<name>`` function that declares its flags and one ``_run_<name>``
function that calls the stage. Stages are imported inside ``_run_*`` so that torch-free commands
(``scan``, ``report``) start without importing torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

EPILOG_INDENT = "  "


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(EPILOG_INDENT + line for line in lines)


def _subparser(sub: argparse._SubParsersAction, name: str, help: str, examples: list[str]) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=_examples(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# ---------------------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub,
        "demo",
        "Run the end-to-end demo: micro-conditioning through a tiny SDXL-layout UNet.",
        ["microcond demo", "microcond demo --seed 1"],
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random UNet and noise (default 0)")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from microcond.demo import run_demo

    run_demo(seed=args.seed)
    return 0


# ---------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microcond",
        description=textwrap.dedent(
            """\
            Train and sample diffusion models conditioned on how each training image was made
            (SDXL micro-conditioning: original size, crop, target size). Sizes are (height,
            width) and crops (top, left), in pixels."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples("microcond demo", "microcond demo --help"),
    )
    from microcond import __version__

    parser.add_argument("--version", action="version", version=f"microcond {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``microcond`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as err:
        # A user mistake: one line, what was expected and found, non-zero exit.
        if os.environ.get("MICROCOND_DEBUG"):
            raise
        print(f"microcond {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"microcond {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
