"""The `pyfs` subcommands that talk to a mounted filesystem (placeholder)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the control subcommands on the `pyfs` parser."""
