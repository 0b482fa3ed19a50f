"""`timm-snnet convert --from official-v1|official-v2`: the authors' released checkpoints as a Hub folder."""
from __future__ import annotations

import argparse

from .._convert import CONVERTERS, OFFICIAL_V1, convert
from .._releases import HUB_RELEASES
from ._args import add_command, add_model_kwargs, checkpoint_file

DESCRIPTION = ("Map an official SN-Net v1 release (snnet_deit.pth -> snnet_deit_tsb, snnet_swin.pth -> snnet_swin_tsb, "
               "resnet_18_50.pth -> snnet_resnet, resnet18_swin_ti.pth -> snnet_resnet18_swin_ti, "
               "levit_192_256_release.pth -> snnet_levit_192_256) or v2 release (snnetv2_deit3_{s_b,s_l,b_l}.pth -> "
               "snnetv2_deit3_{s_b,s_l,b_l}) into this package's layout, with the compatibility settings that "
               "reproduce the authors' networks. Fails if any key is left unmapped or missing.")


def _cmd_convert(args: argparse.Namespace) -> int:
    out, report = convert(args.checkpoint, args.model, args.output, args.source_format, **args.model_kwargs)
    dropped = ', '.join(f'{n} {what}' for what, n in report['dropped'].items()) or 'nothing'
    compat = ', '.join(f'{k}={v}' for k, v in report['compat'].items()) or 'none'
    print(f'converted {args.checkpoint}: {report["tensors"]} tensors mapped ({report["stitching_layers"]} stitching '
          f'layers), dropped {dropped}, 0 unmapped, 0 missing\ncompatibility settings: {compat}\nwrote {out}: load '
          f"it with timm.create_model('local-dir:{out}', pretrained=True) or publish it with "
          f'`timm-snnet push --model {args.model} --checkpoint {out} --repo-id ORG/NAME`')
    return 0


def add_commands(subparsers) -> None:
    p = add_command(subparsers, 'convert', _cmd_convert, description=DESCRIPTION,
                    help="convert the authors' SN-Net v1 / v2 checkpoints into a folder for `push` and local-dir:")
    p.add_argument('checkpoint', type=checkpoint_file,
                   help='official .pth (read with weights_only=True) or its state dict as .safetensors')
    p.add_argument('--from', dest='source_format', required=True, choices=sorted(CONVERTERS),
                   help='checkpoint layout')
    p.add_argument('--model', required=True, choices=sorted({*OFFICIAL_V1, *HUB_RELEASES}))
    p.add_argument('--output', required=True, help='new folder: config.json + model.safetensors')
    add_model_kwargs(p, 'create_model kwargs (e.g. smaller anchors for tests); compatibility settings are automatic')
