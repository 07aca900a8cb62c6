"""The ``microcond`` command: argument parsing and wiring of the stages, no logic of its own."""

from microcond.cli.main import main

__all__ = ["main"]
