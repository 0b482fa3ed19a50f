"""`timm-snnet init | sweep | plot | select`: calibrate the stitching layers, measure every stitch, plot, pick one."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Optional, Sequence

from safetensors.torch import save_file

from .._dist import env_rank
from .._evaluate import init_checkpoint, sweep
from .._load import create_snnet, model_from_checkpoint
from .._plot import X_AXES, plot_sweep
from .._results import ROW_KEYS, load_sweep
from .._selection import LATENCY_KEYS, select_stitch
from .._utils import atomic_file, check_new_file
from ._args import add_command, add_model_kwargs, checkpoint, existing_file, image_folder, sweep_table


def _model_kwargs_arg(p: argparse.ArgumentParser) -> None:
    add_model_kwargs(p, "create_model kwargs, as train.py's --model-kwargs (e.g. img_size=384 stitch_seed=1)")


def _overwrite_arg(p: argparse.ArgumentParser, what: str = '--output') -> None:
    p.add_argument('--overwrite', action='store_true', help=f'replace an existing {what} file (else refused)')


def _anchor_list(tokens: Optional[Sequence[str]]) -> Optional[list[Optional[str]]]:
    """--anchor-checkpoints tokens; `none` leaves that anchor as built."""
    return None if tokens is None else [None if t.lower() == 'none' else t for t in tokens]


def _cmd_init(args: argparse.Namespace) -> int:
    out = init_checkpoint(
        args.model, args.data_dir, args.output, model_kwargs=args.model_kwargs, num_classes=args.num_classes,
        pretrained_anchors=args.pretrained_anchors, anchor_checkpoints=_anchor_list(args.anchor_checkpoints),
        num_images=args.num_images, batch_size=args.batch_size, split=args.split, seed=args.seed,
        device=args.device, workers=args.workers, overwrite=args.overwrite)
    kw = ' '.join(shlex.quote(f'{k}={v!r}') for k, v in args.model_kwargs.items()
                  if k != 'anchor_checkpoints')  # the init file holds the anchors
    classes = f' --num-classes {args.num_classes}' if args.num_classes else ''
    # train.py builds its data pipeline from --img-size, and never passes it to the model: a model built at another
    # size through --model-kwargs img_size=N needs both
    size = args.model_kwargs.get('img_size')
    size = f' --img-size {size if isinstance(size, int) else size[-1]}' if size else ''
    print(f'wrote {out}\ntrain with: timm-snnet run train.py {shlex.quote(str(args.data_dir))} --model {args.model} '
          f'--initial-checkpoint {shlex.quote(str(out))}{classes}{size} ...{f" --model-kwargs {kw}" if kw else ""}')
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.save_model:
        check_new_file(args.save_model, args.overwrite)  # before the sweep, not after it
    result = sweep(
        args.model, args.checkpoint, args.data_dir, args.output, stitches=args.stitches, batch_size=args.batch_size,
        device=args.device, model_kwargs=args.model_kwargs, num_classes=args.num_classes, split=args.split,
        use_ema=args.use_ema, workers=args.workers, latency_warmup=args.latency_warmup,
        latency_iters=args.latency_iters, threads=args.threads)
    if env_rank() != 0:  # under torchrun rank 0 wrote the files and reports them
        return 0
    out = Path(args.output)
    print(f'wrote {out / "sweep.json"} and {out / "sweep.csv"} ({len(result["rows"])} stitches)')
    if args.save_model:
        model = model_from_checkpoint(args.model, args.checkpoint, args.model_kwargs, args.num_classes, args.use_ema)
        model.set_stitch_table(result['rows'])
        with atomic_file(args.save_model, args.overwrite) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        print(f'wrote {args.save_model} (weights with the sweep table, for select_stitch after loading)')
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    print(f'wrote {plot_sweep(args.sweep, args.output, x=args.x, reference=args.reference, overwrite=args.overwrite)}')
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    budget = dict(max_gflops=args.max_gflops, max_latency_ms=args.max_latency_ms, min_top1=args.min_top1,
                  latency=args.latency)
    if args.sweep:
        rows = load_sweep(args.sweep)['rows']
        best = select_stitch(rows, **budget)
    elif args.model:
        model = (model_from_checkpoint(args.model, args.checkpoint, args.model_kwargs, args.num_classes)
                 if args.checkpoint else create_snnet(args.model, args.model_kwargs, args.num_classes))
        rows = model.stitch_table or [dict(id=c.id, path=model.describe(c), gflops=c.gflops, params=c.params)
                                      for c in model.stitch_configs()]
        best = model.select_stitch(**budget, table=rows)
    else:
        raise ValueError('select needs a sweep.json (positional) or --model [--checkpoint]')
    row = next(r for r in rows if r['id'] == best)
    extra = '\t'.join(f'{k}={row[k]:g}' for k in ROW_KEYS[2:] if isinstance(row.get(k), (int, float)))
    print(f'{best}\t{row.get("path", "")}\t{extra}')
    return 0


def add_commands(subparsers) -> None:
    p = add_command(subparsers, 'init', _cmd_init,
                    help='least-squares init of the stitching layers -> .safetensors for train.py')
    p.add_argument('--model', required=True, help='registered snnet model, e.g. snnet_deit_tsb')
    p.add_argument('--data-dir', required=True, type=image_folder, help='ImageFolder root (uses DIR/train if present)')
    p.add_argument('--output', required=True, help='output .safetensors (train.py --initial-checkpoint)')
    p.add_argument('--pretrained-anchors', action='store_true', help="load each anchor's timm pretrained weights")
    p.add_argument('--anchor-checkpoints', nargs='+', default=None, metavar='CKPT',
                   help='one per anchor, smallest first: train.py checkpoint (ema:PATH for its EMA weights), '
                        '.safetensors, hf-hub:ORG/NAME or local-dir:DIR; none leaves an anchor as built. Loaded '
                        'strictly; pass --num-classes when the anchors were trained on other than 1000 classes')
    p.add_argument('--num-images', type=int, default=100, help='calibration images (default 100, as the paper)')
    p.add_argument('--num-classes', type=int, default=None, help='as train.py --num-classes')
    p.add_argument('--batch-size', type=int, default=25)
    p.add_argument('--split', default='train')
    p.add_argument('--seed', type=int, default=0, help='seed of the calibration image sample')
    p.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    p.add_argument('--workers', type=int, default=2)
    _overwrite_arg(p)
    _model_kwargs_arg(p)

    p = add_command(
        subparsers, 'sweep', _cmd_sweep, help='measure top-1/top-5/GFLOPs/params/latency of every stitch',
        description='Evaluate each stitch into OUT/sweep.json and OUT/sweep.csv (resumable). Under `torchrun '
                    '--nproc_per_node N [--nnodes M ...] -m timm_snnet.cli sweep ...` the images are split across '
                    'the ranks (gloo on CPU, nccl on CUDA: cuda:LOCAL_RANK) with the exact one-process counts; rank '
                    '0 writes, and latency is left to `timm-snnet profile` (per device). Sweeps of other --stitches '
                    'into one OUT may run at once: each write merges under a lock, every row is kept.')
    p.add_argument('--model', required=True)
    p.add_argument('--checkpoint', type=checkpoint, help='train.py checkpoint (.pth.tar), .safetensors or SN-Net '
                                                         'folder; none for --model local-dir:DIR / hf-hub:ORG/NAME')
    p.add_argument('--data-dir', required=True, type=image_folder, help='ImageFolder root (uses DIR/val if present)')
    p.add_argument('--output', required=True, help='output dir for sweep.json and sweep.csv')
    p.add_argument('--stitches', default='all', help="config ids: 'all' (default), '0-70', '3' or '0-2,5'")
    p.add_argument('--batch-size', type=int, default=64, help='eval batch, and the N of latency_ms_bN')
    p.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--split', default='validation')
    p.add_argument('--use-ema', action='store_true', help="evaluate the checkpoint's EMA weights (validate.py)")
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--latency-warmup', type=int, default=5)
    p.add_argument('--latency-iters', type=int, default=20)
    p.add_argument('--threads', type=int, default=1,
                   help='torch CPU threads while timing latency (default 1: at the default count on a busy machine '
                        'latency is noise); evaluation keeps the process default')
    p.add_argument('--save-model', default=None, metavar='PATH.safetensors',
                   help='also write the weights with the sweep table attached (model.stitch_table)')
    _overwrite_arg(p, '--save-model')
    _model_kwargs_arg(p)

    p = add_command(subparsers, 'plot', _cmd_plot, help='Pareto plot (PNG) of a sweep')
    p.add_argument('sweep', type=sweep_table, help='OUT/sweep.json or OUT/')
    p.add_argument('--output', default=None, help='PNG path (default OUT/pareto_<x>.png)')
    p.add_argument('--x', default='gflops', choices=sorted(X_AXES), help='x axis (default gflops)')
    p.add_argument('--reference', default=None, type=existing_file('a reference file'),
                   help='official points, JSONL with cfg_id, flops, acc1')
    _overwrite_arg(p)

    p = add_command(subparsers, 'select', _cmd_select,
                    help='best stitch within a budget (prints: id, path, measurements)')
    p.add_argument('sweep', nargs='?', default=None, type=sweep_table,
                   help='OUT/sweep.json (else --model, FLOPs or its stored table)')
    p.add_argument('--model', default=None)
    p.add_argument('--checkpoint', default=None, type=checkpoint, help='weights whose stored stitch table to use')
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--max-gflops', type=float, default=None)
    p.add_argument('--max-latency-ms', type=float, default=None)
    p.add_argument('--latency', default='b1', choices=sorted(LATENCY_KEYS), help='latency column for the budget')
    p.add_argument('--min-top1', type=float, default=None)
    _model_kwargs_arg(p)
