"""`timm-snnet` command line. Each subcommand lives in the module that does the work.

A module in `COMMAND_MODULES` exposes `add_commands(subparsers)`; each parser it adds sets `func=callable(args)`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

COMMAND_MODULES = ('timm_snnet.run', 'timm_snnet.sweep', 'timm_snnet.hub', 'timm_snnet.convert', 'timm_snnet.export')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-snnet', description='Stitchable Neural Networks for timm.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    subparsers.required = True
    table = subparsers.add_parser('configs', help='print the config table of a model (id, path, GFLOPs, params)')
    table.add_argument('--model', default='snnet_deit_tsb', help='registered snnet model name')
    table.set_defaults(func=_print_configs)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.add_commands(subparsers)
    return parser


def _print_configs(args: argparse.Namespace) -> int:
    import timm

    import timm_snnet  # noqa: F401

    model = timm.create_model(args.model)
    configs = model.stitch_configs()
    width = max(len(model.describe(c)) for c in configs)
    print(f'{"id":>3}  {"path":<{width}} {"GFLOPs":>8} {"params (M)":>11}')
    for c in configs:
        print(f'{c.id:>3}  {model.describe(c):<{width}} {c.gflops:>8.2f} {c.params / 1e6:>11.2f}')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if extra and not getattr(args, 'accepts_extra', False):
        build_parser().error(f'unrecognized arguments: {" ".join(extra)}')
    if getattr(args, 'accepts_extra', False):
        args.extra = extra
    return int(args.func(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
