"""Sweep across processes (`timm_snnet._dist`): 2 gloo ranks against 1 process on this machine, side by side.

Each candidate runs `timm_snnet.sweep` in fresh spawned processes on the same generated ImageFolder and random
checkpoint: 1 rank with 1 thread, 2 ranks with 1 thread each, and 1 rank with 2 threads (what one process would use
of two cores). The sweep phase is timed on rank 0 from a barrier after the imports and group start to the end of
`sweep()` (wall clock: the ranks run in parallel); the whole run, spawn to join, is timed too. Candidates run in
interleaved rounds; a ratio is the median of per-round ratios. The correct counts of every candidate must be equal.

    python -m benchmarks.sweep_dist [--rounds 3] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import save_file

import timm_snnet  # noqa: F401  (registers the models)
from timm_snnet import sweep

from .common import Options, make_options

# name -> (ranks, torch threads per rank)
CANDIDATES = {'1 rank x 1 thread': (1, 1), '2 ranks x 1 thread': (2, 1), '1 rank x 2 threads': (1, 2)}
CLASSES = 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _image_folder(root: Path, per_class: int, size: int) -> Path:
    """DIR/val/class_<c>/<i>.png, noisy patches of one colour per class."""
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        folder = root / 'val' / f'class_{c}'
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(0, 255, 3)
        for i in range(per_class):
            image = np.clip(colour + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(folder / f'{i}.png')
    return root


def _workload(opts: Options) -> dict[str, Any]:
    """Smoke: tiny DeiT anchors, all 23 stitches on 21 images. Else snnet_deit_tsb (at --img-size if set), every
    6th stitch on 64 images."""
    if opts.model_kwargs:
        return dict(model='snnet_deit_tsb', kwargs=dict(opts.model_kwargs), stitches='all', per_class=4, batch=4)
    kwargs = {'img_size': opts.img_size} if opts.img_size else {}
    return dict(model='snnet_deit_tsb', kwargs=kwargs, stitches=','.join(map(str, range(0, 71, 6))),
                per_class=13, batch=8)


def _worker(rank: int, world: int, threads: int, port: int, job: dict, out: str) -> None:
    torch.set_num_threads(threads)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    dist.init_process_group('gloo')  # started here, so that the timed part excludes imports and rendezvous
    dist.barrier()
    start = time.perf_counter()
    result = sweep(job['model'], job['checkpoint'], job['data'], out, stitches=job['stitches'],
                   batch_size=job['batch'], device='cpu', model_kwargs=job['kwargs'], num_classes=CLASSES, workers=0,
                   progress=False, log=lambda msg: None)
    seconds = time.perf_counter() - start
    dist.destroy_process_group()
    if rank == 0:
        counts = [[r['id'], r['top1_correct'], r['top5_correct'], r['num_images']] for r in result['rows']]
        Path(out, 'timing.json').write_text(json.dumps(dict(seconds=seconds, counts=counts)))


def _run(world: int, threads: int, job: dict, out: Path) -> tuple[float, float, list]:
    start = time.perf_counter()
    mp.start_processes(_worker, args=(world, threads, _free_port(), job, str(out)), nprocs=world, join=True,
                       start_method='spawn')
    total = time.perf_counter() - start
    timing = json.loads((out / 'timing.json').read_text())
    return timing['seconds'], total, timing['counts']


def run_sweep_dist(opts: Options, log: Callable[[str], None]) -> dict[str, Any]:
    work = _workload(opts)
    with tempfile.TemporaryDirectory(prefix='bench_sweep_dist_') as tmp:
        tmp = Path(tmp)
        model = timm.create_model(work['model'], num_classes=CLASSES, **work['kwargs'])
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / 'ckpt.safetensors'))
        job = dict(model=work['model'], kwargs=work['kwargs'], stitches=work['stitches'], batch=work['batch'],
                   checkpoint=str(tmp / 'ckpt.safetensors'),
                   data=str(_image_folder(tmp / 'data', work['per_class'], 48)))  # the eval transform resizes
        # --smoke leaves out 1 rank x 2 threads (two OpenMP threads on shared cores take seconds per tiny op)
        candidates = dict(list(CANDIDATES.items())[:2 if opts.model_kwargs else 3])
        sweep_s: dict[str, list[float]] = {k: [] for k in candidates}
        total_s: dict[str, list[float]] = {k: [] for k in candidates}
        counts: dict[str, list] = {}
        for r in range(opts.rounds):
            for name, (world, threads) in candidates.items():
                log(f'  sweep_dist round {r + 1}: {name}')
                t, total, counts[name] = _run(world, threads, job, tmp / f'out_{r}_{world}_{threads}')
                sweep_s[name].append(t)
                total_s[name].append(total)
    one, two, wide = CANDIDATES
    ratio = lambda a, b, d: statistics.median(x / y for x, y in zip(d[a], d[b])) if b in d else None  # noqa: E731
    return dict(model=work['model'], images=CLASSES * work['per_class'], batch=work['batch'],
                stitches=len(next(iter(counts.values()))), rounds=opts.rounds, cores=os.cpu_count(),
                load_avg=os.getloadavg(), sweep_s=sweep_s, total_s=total_s,
                ratio_2_ranks_vs_1=ratio(two, one, sweep_s), ratio_2_ranks_vs_1_total=ratio(two, one, total_s),
                ratio_2_ranks_vs_2_threads=ratio(two, wide, sweep_s),
                identical_counts=all(c == counts[one] for c in counts.values()))


def summary_line(r: Optional[dict]) -> list[str]:
    if not r:
        return []
    return [f'| sweep | `torchrun` sweep, 2 gloo ranks / 1 process (1 thread each), {r["stitches"]} stitches x '
            f'{r["images"]} images, batch {r["batch"]} | sweep phase {r["ratio_2_ranks_vs_1"]:.2f} (ideal 0.5 on two '
            f'idle cores), whole run with startup {r["ratio_2_ranks_vs_1_total"]:.2f}'
            + (f'; vs 1 process with 2 threads {r["ratio_2_ranks_vs_2_threads"]:.2f}'
               if r['ratio_2_ranks_vs_2_threads'] is not None else '')
            + f'; load average {r["load_avg"][0]:.1f}; counts identical: '
            f'{"yes" if r["identical_counts"] else "**no**"} | - | |']


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--smoke', action='store_true', help='tiny anchors, one round')
    p.add_argument('--img-size', type=int, default=112, help='DeiT input size (default 112)')
    args = p.parse_args(argv)
    opts = make_options(True, 1, 'snnet_deit_tsb', smoke=args.smoke)
    if not args.smoke:
        opts.rounds, opts.img_size = args.rounds, args.img_size
    result = run_sweep_dist(opts, print)
    print(json.dumps(result, indent=1))
    print('\n'.join(summary_line(result)))
    return 0 if result['identical_counts'] else 1


if __name__ == '__main__':
    raise SystemExit(main())
