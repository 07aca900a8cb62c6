"""Subcommands of the ``microcond`` command, by kind: each module has one ``add_<name>`` function
that declares a command's flags and one ``run_<name>`` function that calls its stage. Stages are
imported inside ``run_*`` so that torch-free commands (``scan``, ``report``) start without torch."""

from __future__ import annotations

import argparse

EPILOG_INDENT = "  "


def example_lines(*lines: str) -> str:
    return "examples:\n" + "\n".join(EPILOG_INDENT + line for line in lines)


def subparser(sub: argparse._SubParsersAction, name: str, help: str, examples: list[str]) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=example_lines(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
