"""What every command shares: a parser whose errors are one line, the `--model-kwargs` type, and the types of the
file arguments (sweep table, checkpoint, image folder, plain file), checked while argparse parses: a careless input
is one line `timm-snnet CMD: error: ...` with exit status 2, before any model is built."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, NoReturn, Optional

import timm
from timm.models import parse_model_name

from .._inputs import check_checkpoint, check_file, check_image_folder, parse_kwarg
from .._results import load_sweep

__all__ = ['CommandError', 'Parser', 'add_command', 'model_kwarg', 'add_model_kwargs', 'check_model_kwargs',
           'sweep_table', 'checkpoint', 'checkpoint_file', 'image_folder', 'existing_file']

Command = Callable[[argparse.Namespace], Optional[int]]


class CommandError(SystemExit):
    """An error whose one-line message was printed: exit status 2 for a user error, 1 for an internal one (`str()` is
    the message)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(status)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): `PROG: error: MESSAGE (see PROG -h)`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        line = f'{self.prog}: error: {" ".join(message.split())} (see {self.prog} -h)'
        print(line, file=sys.stderr)
        raise CommandError(line)


def add_command(subparsers: Any, name: str, func: Command, help: str, description: Optional[str] = None,
                **defaults: Any) -> argparse.ArgumentParser:
    """The parser of one subcommand: `func(args)` runs it (its return value is the exit status, None for 0)."""
    p = subparsers.add_parser(name, help=help, description=description)
    p.set_defaults(func=func, **defaults)
    return p


def _anchor_names(value: Any) -> None:
    """`anchors=` names timm models: each must be registered (or an hf-hub: / local-dir: name)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(n, str) for n in value):
        raise argparse.ArgumentTypeError(
            f"anchors= takes a list of timm model names, e.g. anchors=\"('resnet18','resnet50')\", got {value!r}")
    for name in value:
        source, arch = parse_model_name(name)
        if source is None and not timm.is_model(arch):
            raise argparse.ArgumentTypeError(f"unknown timm model {name!r} in anchors=; list names with "
                                             f"timm.list_models('PATTERN')")


def model_kwarg(token: str) -> tuple[str, Any]:
    """argparse type of one `--model-kwargs` token: `KEY=VALUE` -> (key, literal value)."""
    try:
        key, value = parse_kwarg(token)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if key == 'anchors':
        _anchor_names(value)
    return key, value


class _Kwargs(argparse.Action):
    """Collects `model_kwarg` pairs into a dict (a repeated flag adds to it)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest, None) or {}), **dict(values)})


def add_model_kwargs(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument('--model-kwargs', nargs='*', default={}, type=model_kwarg, action=_Kwargs, metavar='KEY=VALUE',
                   help=help)


def check_model_kwargs(script: str, argv: list[str]) -> None:
    """The `--model-kwargs` tokens of a timm script's command line (nargs='*', as train.py reads them), checked with
    `model_kwarg`: timm's own parser raises a traceback on a malformed one."""
    tokens, taking = [], False
    for token in argv:
        if token == '--':
            break
        if token.startswith('--model-kwargs='):
            tokens.append(token.split('=', 1)[1])
        taking = token == '--model-kwargs' or (taking and not token.startswith('-'))
        if taking and token != '--model-kwargs':
            tokens.append(token)
    for token in tokens:
        try:
            model_kwarg(token)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f'{script} --model-kwargs: {e}') from None


def _checked(check: Callable[[str], Any], name: str) -> Callable[[str], str]:
    """An argparse type that runs `check` on the value and keeps the value as given."""
    def convert(value: str) -> str:
        try:
            check(value)
        except (ValueError, OSError) as e:
            raise argparse.ArgumentTypeError(' '.join(str(e).split())) from None
        return value

    convert.__name__ = name
    return convert


sweep_table = _checked(load_sweep, 'sweep_table')
checkpoint = _checked(check_checkpoint, 'checkpoint')
checkpoint_file = _checked(lambda v: check_checkpoint(v, folder=False), 'checkpoint_file')
image_folder = _checked(check_image_folder, 'image_folder')


def existing_file(what: str) -> Callable[[str], str]:
    return _checked(lambda v: check_file(v, what), 'existing_file')
