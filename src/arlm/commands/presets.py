"""List the named presets."""

from __future__ import annotations

import argparse

from arlm.config import preset_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No flags."""


def run(args: argparse.Namespace) -> int:
    """Print one preset name a line."""
    for name in preset_names():
        print(name)
    return 0
