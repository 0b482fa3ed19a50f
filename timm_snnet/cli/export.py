"""`timm-snnet export | profile`: one stitch as a plain timm model or ONNX file; latency of every stitch."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch
from timm.models import save_for_hf
from timm.models._hub import save_config_for_hf
from torch import nn

from .._latency import example_input, merge_latency, profile, profile_header, resolve_device
from .._load import load_snnet, model_from_checkpoint
from .._onnx import check_onnx, export_onnx
from .._results import jsonable, load_sweep, write_results
from .._selection import parse_stitches
from .._utils import atomic_folder, folder_lock
from ._args import add_command, add_model_kwargs, checkpoint, sweep_table


def _load(args: argparse.Namespace) -> nn.Module:
    if args.pretrained:
        kwargs = {**args.model_kwargs, **({'num_classes': args.num_classes} if args.num_classes else {})}
        return load_snnet(args.model, pretrained=True, **kwargs)
    return model_from_checkpoint(args.model, args.checkpoint, args.model_kwargs, args.num_classes)


def _pick(model: nn.Module, args: argparse.Namespace) -> int:
    if args.stitch is not None:
        return model.check_id(args.stitch)
    rows = load_sweep(args.sweep)['rows'] if args.sweep else None
    return model.select_stitch(max_gflops=args.max_gflops, max_latency_ms=args.max_latency_ms, table=rows,
                               latency=args.latency)


def _write_folder(output: Path, write: Callable[[Path], None]) -> None:
    """Write into a new sibling folder, then move it into place: a failure leaves nothing half written."""
    with atomic_folder(output) as folder:
        write(folder)


def _cmd_export(args: argparse.Namespace) -> int:
    model = _load(args)
    k = _pick(model, args)
    stitch = model.export_stitch(k).eval()
    c = model.stitch_configs()[k]
    output = Path(args.output)
    note = ''
    if args.format == 'onnx':
        def write(folder: Path) -> None:
            nonlocal note
            export_onnx(stitch, folder / 'model.onnx', opset=args.opset)
            save_config_for_hf(stitch, folder / 'config.json')
            if not args.no_verify:
                diff = check_onnx(folder / 'model.onnx', stitch, example_input(stitch, 2))
                if diff > args.atol:
                    raise RuntimeError(f'onnxruntime differs from eager by {diff:.2e} (> --atol {args.atol})')
                note = f'; onnxruntime matches eager within {diff:.1e}'
        _write_folder(output, write)
        how = f'onnxruntime.InferenceSession("{output / "model.onnx"}"); preprocessing in config.json'
    else:
        _write_folder(output, lambda folder: save_for_hf(stitch, folder, safe_serialization=True))
        how = f'timm.create_model("local-dir:{output}", pretrained=True)'
    print(f'wrote {output}: config {k} `{model.describe(c)}`, {c.params / 1e6:.2f}M params, {c.gflops:.3f} GFLOPs'
          f'{note}\nload it with {how}')
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:

    try:
        batch_sizes = sorted({int(b) for b in args.batch_sizes.split(',')})
    except ValueError:
        raise ValueError(f'--batch-sizes takes a comma list of integers, e.g. 1,8; got {args.batch_sizes!r}') from None
    if not batch_sizes or batch_sizes[0] < 1:
        raise ValueError(f'--batch-sizes must be positive, got {args.batch_sizes!r}')
    if args.threads is not None and args.threads < 1:
        raise ValueError(f'--threads must be >= 1, got {args.threads}')
    if args.rounds < 1 or args.warmup < 0:
        raise ValueError(f'--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}')
    device = resolve_device(args.device)
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise ValueError(f'--device {args.device} asked for MPS, but torch sees none; use --device cpu')
    model = _load(args)
    stitches = parse_stitches(args.stitches, model.num_configs)
    if args.output:
        _check_profile_output(Path(args.output), args.overwrite)  # before profiling, and again before writing
    else:
        load_sweep(args.merge)  # a missing or foreign --merge fails before profiling
    threads = args.threads or torch.get_num_threads()
    rows = profile(model, stitches, batch_sizes, device, threads, args.compile, args.warmup, args.rounds,
                   args.min_run_time)
    info = profile_header(args.model, args.model_kwargs, device, batch_sizes, threads, args.compile, args.warmup,
                          args.rounds)
    out = Path(args.merge or args.output)
    out = out.parent if args.merge and not out.is_dir() else out
    with folder_lock(out):  # a sweep of the same folder merges its rows under this lock too
        if args.merge:
            result = merge_latency(args.merge, rows, info, args.model)
        else:
            _check_profile_output(out, args.overwrite)
            big = [b for b in batch_sizes if b != 1]
            result = dict(model=args.model, model_kwargs=jsonable(args.model_kwargs),
                          checkpoint=dict(path=str(Path(args.checkpoint).resolve())) if args.checkpoint else None,
                          device=str(device), device_name=info['device_name'], batch_size=max(big) if big else 1,
                          anchors=[c.id for c in model.stitch_configs() if c.is_anchor], profile=info, rows=rows)
        write_results(out, result)
    print(f'wrote {out / "sweep.json"} and {out / "sweep.csv"} ({len(rows)} configs, batch sizes '
          f'{",".join(map(str, batch_sizes))}, {info["device_name"]}); pick one with '
          f'`timm-snnet select {out / "sweep.json"} --max-latency-ms MS`')
    return 0


def _check_profile_output(out: Path, overwrite: bool) -> None:
    """--output replaces a sweep.json only with --overwrite, and only one that profile wrote (no accuracies)."""
    path = out / 'sweep.json'
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f'--output {out} is a file; pass a folder for sweep.json and sweep.csv')
    if not path.exists():
        return
    recorded = load_sweep(path)
    if 'profile' not in recorded or 'data' in recorded or any('top1' in r for r in recorded['rows']):
        raise FileExistsError(f'{path} was not written by profile (it may hold accuracies): profile never replaces '
                              f'it; add the latencies with --merge {path}, or pass another --output')
    if not overwrite:
        raise FileExistsError(f'{path} exists: pass --overwrite to replace it, --merge {path} to add these latencies '
                              f'to it, or another --output')


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--model', required=True, help='registered SN-Net, e.g. snnet_deit_tsb')
    src = p.add_mutually_exclusive_group()  # neither: --model local-dir:DIR / hf-hub:ORG/NAME holds its weights
    src.add_argument('--checkpoint', type=checkpoint,
                     help='train.py checkpoint, .safetensors, or a folder from convert / save_snnet')
    src.add_argument('--pretrained', action='store_true', help="the SN-Net's published weights (Hub)")
    p.add_argument('--num-classes', type=int, default=None)
    add_model_kwargs(p, 'create_model kwargs the checkpoint was trained with')


def add_commands(subparsers) -> None:
    p = add_command(
        subparsers, 'export', _cmd_export,
        help='write one stitch as a standalone model (safetensors + config.json, or ONNX)',
        description='Export one config of an SN-Net as a plain timm model holding only its path\'s weights. Pick it '
                    'by id or by budget (FLOPs, or latency from a sweep.json / the stored stitch table).')
    _source_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument('--stitch', type=int, help='config id (see `timm-snnet configs`)')
    which.add_argument('--max-gflops', type=float, help='the best config within this many GFLOPs')
    which.add_argument('--max-latency-ms', type=float, help='the best config within this latency (needs --sweep '
                                                            'or a model with a stored stitch table)')
    p.add_argument('--sweep', type=sweep_table, help='sweep.json whose rows rank the configs (top-1, latency)')
    p.add_argument('--latency', default='b1', choices=('b1', 'bN'), help='latency column for --max-latency-ms')
    p.add_argument('--format', default='safetensors', choices=('safetensors', 'onnx'))
    p.add_argument('--output', required=True, help='new (or empty) output folder')
    p.add_argument('--opset', type=int, default=None, help='ONNX opset (default: the exporter\'s)')
    p.add_argument('--atol', type=float, default=1e-4, help='max abs onnxruntime vs eager difference (onnx)')
    p.add_argument('--no-verify', action='store_true', help='skip the onnxruntime check (onnx)')

    p = add_command(
        subparsers, 'profile', _cmd_profile,
        help='measure every config\'s latency on this device -> sweep.json rows (latency_ms_bN)',
        description='Latency of each config on cpu, cuda or mps with torch.utils.benchmark (warm-up, interleaved '
                    'rounds, medians). Writes OUT/sweep.json in the sweep format, or merges the latencies into an '
                    'existing sweep.json, so `select --max-latency-ms` and `plot --x latency` work.')
    _source_args(p)
    p.add_argument('--stitches', default='all', help="config ids: 'all' (default), '0-70', '3' or '0-2,5'")
    p.add_argument('--device', default=None, help='cpu, cuda[:N] or mps (default: cuda if available, else cpu)')
    p.add_argument('--batch-sizes', default='1,8', help='comma list (default 1,8); the largest is latency_ms_bN')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    p.add_argument('--compile', action='store_true', help='time torch.compile of each exported stitch')
    p.add_argument('--warmup', type=int, default=3, help='untimed calls per config and batch size first')
    p.add_argument('--rounds', type=int, default=3, help='interleaved rounds; the median is reported')
    p.add_argument('--min-run-time', type=float, default=0.1, help='seconds per timing (blocked_autorange)')
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument('--output', help='folder for sweep.json and sweep.csv')
    out.add_argument('--merge', type=sweep_table, help='existing sweep.json (or its folder) to put the latencies into')
    p.add_argument('--overwrite', action='store_true',
                   help="replace OUT/sweep.json if profile wrote it (a sweep's file is never replaced: use --merge)")
