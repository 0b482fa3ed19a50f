"""`timm-snnet push`: an SN-Net checkpoint to a Hub repo (safetensors, config.json, model card)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .._load import model_from_checkpoint
from .._publish import push_snnet, save_snnet
from .._results import load_sweep
from .._utils import file_sha256
from ._args import add_command, add_model_kwargs, checkpoint, existing_file, sweep_table

DESCRIPTION = ("Load a checkpoint into an SN-Net and push it with timm's save_for_hf (safetensors only), a config.json "
               'that timm.create_model("hf-hub:REPO", pretrained=True) builds it from, and a model card with the '
               'per-stitch table and Pareto plot. Log in first (`hf auth login` or HF_TOKEN).')


def _cmd_push(args: argparse.Namespace) -> int:
    if args.dry_run and not args.save_dir:
        raise ValueError('--dry-run needs --save-dir DIR (where the repo folder is written)')
    model = model_from_checkpoint(args.model, args.checkpoint, args.model_kwargs, args.num_classes, args.use_ema)
    if args.sweep and args.checkpoint and Path(args.checkpoint).is_file():
        measured = (load_sweep(args.sweep).get('checkpoint') or {}).get('sha256')
        if measured and measured != file_sha256(Path(args.checkpoint)):
            print(f'warning: {args.sweep} was measured on another checkpoint (sha256 {measured[:12]}...)')
    if args.dry_run:
        folder = save_snnet(model, args.save_dir, sweep=args.sweep, card=args.card, repo_id=args.repo_id)
        print(f'wrote {folder} ({", ".join(sorted(p.name for p in folder.iterdir()))}); nothing uploaded')
        return 0
    info = push_snnet(model, args.repo_id, sweep=args.sweep, card=args.card, private=args.private,
                      revision=args.revision, save_dir=args.save_dir,
                      **({'commit_message': args.commit_message} if args.commit_message else {}))
    print(f'pushed {args.model} to {info.repo_url} ({info.oid[:12]}); load it with '
          f"timm.create_model('hf-hub:{args.repo_id}', pretrained=True)")
    return 0


def add_commands(subparsers) -> None:
    p = add_command(subparsers, 'push', _cmd_push, description=DESCRIPTION,
                    help='push an SN-Net to the Hugging Face Hub (model.safetensors, config.json, model card)')
    p.add_argument('--model', required=True, help='registered SN-Net, e.g. snnet_deit_tsb')
    p.add_argument('--checkpoint', type=checkpoint,
                   help='train.py checkpoint (.pth.tar/.pth, loaded with weights_only=True), .safetensors, or a '
                        'folder written by `timm-snnet convert` (none for --model local-dir:DIR)')
    p.add_argument('--repo-id', required=True, help='ORG/NAME on the Hub')
    p.add_argument('--sweep', type=sweep_table,
                   help='OUT/sweep.json of `timm-snnet sweep`: its rows go into the card and the model')
    p.add_argument('--card', type=existing_file('a model card'),
                   help='model-card inputs: markdown with YAML front matter (e.g. hub/cards/MODEL.md)')
    p.add_argument('--private', action='store_true', help='create the repo private')
    add_model_kwargs(p, 'create_model kwargs the checkpoint was trained with (e.g. stitch_id=20)')
    p.add_argument('--num-classes', type=int, help='classes of the checkpoint, if not 1000')
    p.add_argument('--use-ema', action='store_true', help="load the checkpoint's EMA weights")
    p.add_argument('--revision', help='branch to push to (default main)')
    p.add_argument('--commit-message')
    p.add_argument('--save-dir', help='also keep the repo folder here (must be new or empty)')
    p.add_argument('--dry-run', action='store_true', help='write the folder to --save-dir, upload nothing')
