"""Command-line options that several commands share, defined once."""

from __future__ import annotations

import argparse
from pathlib import Path

from executor.config import DEFAULT_CONFIG_FILE


def add_node_options(parser: argparse.ArgumentParser) -> None:
    """``--config-file`` and ``--cgroup-parent``: where a node's config and slices are."""
    parser.add_argument(
        "--config-file",
        type=Path,
        default=DEFAULT_CONFIG_FILE,
        help=f"operator JSON config (default: {DEFAULT_CONFIG_FILE})",
    )
    parser.add_argument(
        "--cgroup-parent",
        type=Path,
        default=None,
        help="folder holding the workerd_N cgroup slices (default: the cgroup v2 mount root)",
    )
