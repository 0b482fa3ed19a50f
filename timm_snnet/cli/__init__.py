"""`timm-snnet` command line: argparse, messages and exit codes. Each subcommand lives in its own module here.

A module in `COMMANDS` exposes `add_commands(subparsers)`; each parser it adds sets `func=callable(args)`. The library
raises (its own `SNNetError` family, ValueError, FileNotFoundError, ...); only this package turns errors into exit
codes: a usage or input error is one line and exit status 2 (argparse's own errors too, see `_args.Parser`), any other
error one line, a hint at --debug and exit status 1.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .._errors import SNNetError
from .._load import create_snnet
from . import convert, coverage, export, push, scripts, serve, servebench, sweep, zoo
from ._args import CommandError, Parser, add_command

COMMANDS = (scripts, sweep, push, convert, export, coverage, serve, servebench, zoo)
# what the library raises for bad input, its own errors and the built-in ones: one line `timm-snnet COMMAND: message`
# on stderr, exit status 2
USER_ERRORS = (SNNetError, ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
               ImportError)


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return ' '.join(text.split()) or type(e).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog='timm-snnet', description='Stitchable Neural Networks for timm.')
    parser.add_argument('--debug', action='store_true', help='show the full traceback of an error')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    subparsers.required = True
    table = add_command(subparsers, 'configs', _print_configs,
                        help='print the config table of a model (id, path, GFLOPs, params)')
    table.add_argument('--model', default='snnet_deit_tsb', help='registered snnet model name')
    for module in COMMANDS:
        module.add_commands(subparsers)
    return parser


def _print_configs(args: argparse.Namespace) -> int:
    model = create_snnet(args.model)
    configs = model.stitch_configs()
    width = max(len(model.describe(c)) for c in configs)
    print(f'{"id":>3}  {"path":<{width}} {"GFLOPs":>8} {"params (M)":>11}')
    for c in configs:
        print(f'{c.id:>3}  {model.describe(c):<{width}} {c.gflops:>8.2f} {c.params / 1e6:>11.2f}')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = '--debug' in argv[:argv.index('--')] if '--' in argv else '--debug' in argv
    if debug:  # accepted anywhere before `--`, not only before the command
        argv.remove('--debug')
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.debug = debug
    if extra and not getattr(args, 'accepts_extra', False):
        parser.error(f'unrecognized arguments: {" ".join(extra)}')
    if getattr(args, 'accepts_extra', False):
        args.extra = extra
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        if args.debug:
            raise
        message = f'timm-snnet {args.command}: {_one_line(e)}'
        print(message, file=sys.stderr)
        raise CommandError(message) from e
    except Exception as e:
        if args.debug or getattr(args, 'script_started', False):  # a timm script's own errors keep their traceback
            raise
        message = f'timm-snnet {args.command}: {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)'
        print(message, file=sys.stderr)
        raise CommandError(message, 1) from e


if __name__ == '__main__':
    sys.exit(main())
