"""Run timm's own scripts (train.py, validate.py, benchmark.py) unmodified, with the SN-Net models registered.

timm has no plugin discovery and pip does not ship its scripts, so this imports `timm_snnet` (which registers the
`snnet_*` models) and then runs the given script as `__main__`, as `python SCRIPT.py ARGS...` would:

    timm-snnet run train.py --model snnet_deit_tsb ...
    python -m timm_snnet.cli.run validate.py --model snnet_deit_tsb ...
    torchrun --nproc_per_node=8 -m timm_snnet.cli.run train.py --model snnet_deit_tsb ...
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Optional, Sequence

import timm_snnet  # noqa: F401  (registers the snnet_* models)
from timm_snnet._distill import check_train_args

from ._args import add_command, check_model_kwargs

__all__ = ['check_script', 'run_script', 'add_commands', 'main']

_USAGE = ('usage: python -m timm_snnet.cli.run SCRIPT.py [ARGS...]\n'
          "SCRIPT.py is one of timm's scripts (train.py, validate.py, benchmark.py) from a checkout of "
          'https://github.com/huggingface/pytorch-image-models; pip does not ship them.')


def check_script(script: str, args: Sequence[str] = ()) -> str:
    """The script's absolute path, once its command line passed the checks that would otherwise fail inside it with a
    traceback (a ValueError / FileNotFoundError, one line): a missing script, malformed `--model-kwargs`, and for
    train.py a distillation that would not teach."""
    path = os.path.abspath(script)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no script at {script!r}: pass the path of train.py, validate.py or benchmark.py from '
                                f'a checkout of https://github.com/huggingface/pytorch-image-models (pip does not '
                                f'ship them)')
    check_model_kwargs(os.path.basename(path), list(args))
    if os.path.basename(path) == 'train.py':  # refuse a distillation that would not teach, before any set-up
        summary = check_train_args(args)
        if summary and int(os.environ.get('RANK', '0')) == 0:
            print(f'timm-snnet run: {summary}', file=sys.stderr)
    return path


def run_script(script: str, args: Sequence[str] = (), checked: bool = False) -> None:
    """Import the plugin, then run `script` as `__main__` with `sys.argv = [script, *args]`, untouched (after
    `check_script`, unless `checked`)."""
    path = os.path.abspath(script) if checked else check_script(script, args)
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = [script, *args]
    if sys.path:
        sys.path[0] = os.path.dirname(path)  # as `python SCRIPT.py` sets it
    else:
        sys.path.insert(0, os.path.dirname(path))
    try:
        runpy.run_path(path, run_name='__main__')
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None:
            sys.path[0] = saved_path0


def _run(args: argparse.Namespace) -> int:
    argv = [*args.args, *getattr(args, 'extra', [])]
    check_script(args.script, argv)
    args.script_started = True  # from here on, errors are the script's own (cli.main keeps their traceback)
    run_script(args.script, argv, checked=True)
    return 0


def add_commands(subparsers) -> None:
    p = add_command(
        subparsers, 'run', _run, accepts_extra=True,
        help="run timm's train.py / validate.py / benchmark.py with the snnet models registered",
        description=_USAGE.split('\n', 1)[1])
    p.add_argument('script', help="path to timm's train.py, validate.py or benchmark.py")
    p.add_argument('args', nargs=argparse.REMAINDER, help="the script's own arguments, passed untouched")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_USAGE, file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    try:
        check_script(argv[0], argv[1:])
    except (ValueError, FileNotFoundError) as e:  # a refused set-up; the script's own errors keep their traceback
        print(f'timm-snnet run: {" ".join(str(e).split())}', file=sys.stderr)
        return 2
    run_script(argv[0], argv[1:], checked=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
