"""`timm-snnet zoo-plot MODEL`: one SN-Net's configs against timm's model zoo, and the timm models it dominates."""
from __future__ import annotations

import argparse

from .._zoo import zoo_plot
from ._args import add_command, existing_file, sweep_table


def _cmd_zoo_plot(args: argparse.Namespace) -> int:
    zoo_table = {} if args.zoo_table is None else {'zoo_table': args.zoo_table}
    summary = zoo_plot(args.model, args.output, table=args.table, **zoo_table,
                       zoo_filter=args.zoo_filter, max_gmacs=args.max_gmacs, overwrite=args.overwrite,
                       progress=not args.no_progress)
    print(f'wrote {args.output}/zoo.png and {args.output}/zoo.json: the {summary["stitches"]} stitches of '
          f'{args.model} dominate {summary["dominated"]} of {summary["zoo_models"]} timm models '
          f'(the anchors alone: {summary["dominated_by_anchors"]}; top-1 from {summary["snnet_source"]})')
    return 0


def add_commands(subparsers) -> None:
    p = add_command(
        subparsers, 'zoo-plot', _cmd_zoo_plot,
        help="one SN-Net's configs against timm's model zoo (GMACs vs ImageNet top-1): the timm models it dominates",
        description="Plot an SN-Net's configs (GMACs vs ImageNet-1k top-1) against timm's published results, and "
                    "count the timm models a stitch (a config that is not a plain anchor) dominates: no more GMACs "
                    "and no less top-1. The top-1 of a released SN-Net is the authors' published one; any other "
                    "needs --table. Writes OUTPUT/zoo.png and OUTPUT/zoo.json.")
    p.add_argument('model', help='an SN-Net with published results (snnet_swin_tsb, snnet_deit_tsb, ...) or, with '
                                 '--table, the SN-Net the table measured')
    p.add_argument('--output', required=True, help='folder for zoo.png and zoo.json')
    p.add_argument('--table', default=None, type=sweep_table,
                   help='the sweep.json of `timm-snnet sweep` (or its folder): its top-1 and GFLOPs per stitch')
    p.add_argument('--zoo-table', default=None, type=existing_file('a zoo table'),
                   help='a CSV model,img_size,top1,gmacs (default: the timm table that ships in the package)')
    p.add_argument('--zoo-filter', action='append', default=None, metavar='GLOB',
                   help='keep the zoo models whose model.tag matches GLOB (fnmatch, e.g. "*in1k"); repeatable')
    p.add_argument('--max-gmacs', type=float, default=None, help='keep the zoo models of at most this many GMACs')
    p.add_argument('--overwrite', action='store_true', help='replace an existing zoo.png / zoo.json (else refused)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
