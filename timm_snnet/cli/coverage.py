"""`timm-snnet coverage`: the share of timm's pretrained tags that can be SN-Net anchors, by class."""
from __future__ import annotations

import argparse

from .._coverage import coverage
from ._args import add_command


def _cmd_coverage(args: argparse.Namespace) -> int:
    result = coverage(args.models or None, progress=not args.no_progress)
    print(result.table(args.top))
    return 0


def add_commands(subparsers) -> None:
    p = add_command(
        subparsers, 'coverage', _cmd_coverage,
        help="share of timm's pretrained weights that can be SN-Net anchors, by model class",
        description="Build every timm architecture with pretrained weights on the meta device (no downloads), and "
                    "count its pretrained tags by class: which classes can be anchors, and the largest still missing.")
    p.add_argument('models', nargs='*', help='architectures to check (default: all with pretrained weights)')
    p.add_argument('--top', type=int, default=15, help='classes to list (default 15)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
