"""`timm-snnet` command line: argparse, messages and exit codes. Each subcommand lives in its own module here.

A module in `COMMANDS` exposes `add_commands(subparsers)`; each parser it adds sets `func=callable(args)`. The library
raises (ValueError, SNNetLoadError, FileNotFoundError, ...); only this package turns errors into exit codes.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import timm

from .. import SNNetLoadError
from .._anchors import AnchorCheckpointError
from .._convert import ConversionError
from . import convert, coverage, export, push, run, sweep

COMMANDS = (run, sweep, push, convert, export, coverage)
# what the library raises for bad input: reported as `timm-snnet COMMAND: message` on stderr, exit status 1
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, ImportError,
               SNNetLoadError, AnchorCheckpointError, ConversionError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-snnet', description='Stitchable Neural Networks for timm.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    subparsers.required = True
    table = subparsers.add_parser('configs', help='print the config table of a model (id, path, GFLOPs, params)')
    table.add_argument('--model', default='snnet_deit_tsb', help='registered snnet model name')
    table.set_defaults(func=_print_configs)
    for module in COMMANDS:
        module.add_commands(subparsers)
    return parser


def _print_configs(args: argparse.Namespace) -> int:
    model = timm.create_model(args.model)
    configs = model.stitch_configs()
    width = max(len(model.describe(c)) for c in configs)
    print(f'{"id":>3}  {"path":<{width}} {"GFLOPs":>8} {"params (M)":>11}')
    for c in configs:
        print(f'{c.id:>3}  {model.describe(c):<{width}} {c.gflops:>8.2f} {c.params / 1e6:>11.2f}')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, 'accepts_extra', False):
        parser.error(f'unrecognized arguments: {" ".join(extra)}')
    if getattr(args, 'accepts_extra', False):
        args.extra = extra
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        raise SystemExit(f'timm-snnet {args.command}: {e}') from e


if __name__ == '__main__':
    sys.exit(main())
