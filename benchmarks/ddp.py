"""B10 (`make bench`): an SN-Net training step under DDP against a plain DeiT-Ti step wrapped the same way.

Two gloo ranks on this machine (torch.multiprocessing spawn, one torch thread each), plain DistributedDataParallel as
timm's train.py wraps a model, default AdamW, batch 2 per rank. Candidates, interleaved in rounds (each round runs
`steps` optimizer steps of every candidate, on both ranks in lockstep):
- `snnet_ti`: snnet_deit_tsb with the sampler forced onto the Ti anchor, with the communication hook the SN-Net
  installs on its DDP (only the sampled path's gradient slices are all-reduced);
- `snnet_ti_full`: the same DDP with the hook told to all-reduce every bucket whole (what DDP does without it);
- `plain_ti`: a copy of the Ti anchor (a plain timm DeiT-Ti) in its own DDP;
- `snnet_sb` / `snnet_sb_full`: the middle S -> B stitch, with and without skipping.
Timing is wall time per step on rank 0 (the ranks wait for each other in the all-reduce, so CPU time would miss the
communication); a ratio is the median of the per-round ratios. Bytes per step come from the hook's own counts.
"""
from __future__ import annotations

import copy
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .common import Options, create, images

MODEL = 'snnet_deit_tsb'
TARGET = 1.15
WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, opts: Options, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from timm_snnet import _training as training

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = create(MODEL, opts).train()
        configs = model.configs
        sb = [c.id for c in configs if (c.front, c.back) == (1, 2) and not c.is_anchor]
        ids = dict(ti=0, sb=sb[len(sb) // 2])
        plain = copy.deepcopy(model.anchors[0]).train()  # DeiT-Ti itself, the same timm class and config
        snnet_ddp, plain_ddp = DDP(model), DDP(plain)
        snnet_opt = torch.optim.AdamW(snnet_ddp.parameters(), lr=1e-6)
        plain_opt = torch.optim.AdamW(plain_ddp.parameters(), lr=1e-6)
        batch = 2
        x = images(model, batch) + rank  # different data per rank
        y = torch.zeros(batch, dtype=torch.long)

        def step(ddp: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(x), y).backward()
            opt.step()

        def snnet(path: str, full: bool) -> Callable[[], None]:
            def run() -> None:
                model.set_sampling_weights([float(i == ids[path]) for i in range(len(configs))], explicit=False)
                comm = training.path_comm(snnet_ddp)
                if comm is not None:
                    comm.enabled = not full
                step(snnet_ddp, snnet_opt)
            return run

        fns: dict[str, Callable[[], None]] = dict(
            snnet_ti=snnet('ti', False), plain_ti=lambda: step(plain_ddp, plain_opt), snnet_ti_full=snnet('ti', True),
            snnet_sb=snnet('sb', False), snnet_sb_full=snnet('sb', True))
        bytes_per_step: dict[str, tuple[int, int]] = {}
        for name, fn in fns.items():  # warm-up (first-step allocations, DDP's bucket rebuild); bytes of one step
            fn()
            comm = training.path_comm(snnet_ddp)
            before = (comm.bytes_reduced, comm.bytes_buckets, comm.bytes_full) if comm and 'snnet' in name else None
            fn()
            if before is not None:
                bytes_per_step[name] = tuple(a - b for a, b in zip(
                    (comm.bytes_reduced, comm.bytes_buckets, comm.bytes_full), before))
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(opts.rounds):
            for name, fn in fns.items():
                dist.barrier()
                per_step = []
                for _ in range(_steps(opts)):
                    start = time.perf_counter()
                    fn()
                    per_step.append(time.perf_counter() - start)
                times[name].append(statistics.median(per_step))
        comm = training.path_comm(snnet_ddp)
        path_bytes = {}
        for path, k in ids.items():
            off = {f'{m}.{p}' for m, p in model.off_path_names(k)}
            path_bytes[path] = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n not in off)
        if rank == 0:
            Path(out).write_text(json.dumps(dict(
                times=times, bytes=bytes_per_step, path_bytes=path_bytes, ids=ids, hook=comm is not None,
                snnet_params=sum(p.numel() for p in model.parameters()),
                plain_params=sum(p.numel() for p in plain.parameters()),
                input_size=list(x.shape[1:]), batch=batch)))
    finally:
        dist.destroy_process_group()


def _steps(opts: Options) -> int:
    return 1 if opts.model_kwargs else 2 if opts.quick else 3


def _ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def run_ddp(opts: Options, log: Callable[[str], None]) -> dict[str, Any]:
    """B10: spawn the two ranks, return times (ms), ratios and bytes per step."""
    import torch.multiprocessing as mp

    log(f'B10 {MODEL} DDP, {WORLD} gloo ranks')
    with tempfile.TemporaryDirectory() as tmp:
        out = f'{tmp}/ddp.json'
        mp.spawn(_worker, args=(_free_port(), opts, out), nprocs=WORLD, join=True)
        raw = json.loads(Path(out).read_text())
    t = raw['times']
    ms = {k: 1e3 * statistics.median(v) for k, v in t.items()}
    mib = {k: [b / 2 ** 20 for b in v] for k, v in raw['bytes'].items()}
    return dict(
        model=MODEL, world=WORLD, batch=raw['batch'], input_size=raw['input_size'], ids=raw['ids'], hook=raw['hook'],
        snnet_params=raw['snnet_params'], plain_params=raw['plain_params'], rounds=opts.rounds, steps=_steps(opts),
        step_ms=ms,
        ratio=_ratio(t['snnet_ti'], t['plain_ti']),  # the measure: goal <= 1.15
        ratio_before=_ratio(t['snnet_ti_full'], t['plain_ti']),
        sb_ratio_to_full=_ratio(t['snnet_sb'], t['snnet_sb_full']),
        # per step: [all-reduced by the hook, whole buckets touched by the path, DDP's full all-reduce], MiB
        mib_per_step=mib, path_mib={k: v / 2 ** 20 for k, v in raw['path_bytes'].items()},
        met=_ratio(t['snnet_ti'], t['plain_ti']) <= TARGET)


def summary_lines(r: dict) -> list[str]:
    ms, mib = r['step_ms'], r['mib_per_step']
    ti, sb = mib.get('snnet_ti', [float('nan')] * 3), mib.get('snnet_sb', [float('nan')] * 3)
    size = 'x'.join(map(str, r['input_size'][1:]))
    return [
        f'| B10 | DDP step ({r["world"]} gloo ranks, batch {r["batch"]}, {size}, default AdamW): SN-Net on the Ti '
        f'path / plain DeiT-Ti | {r["ratio"]:.3f} ({ms["snnet_ti"]:.0f} vs {ms["plain_ti"]:.0f} ms; before, every '
        f'bucket all-reduced: {r["ratio_before"]:.3f}, {ms["snnet_ti_full"]:.0f} ms). S -> B (id {r["ids"]["sb"]}) '
        f'{ms["snnet_sb"]:.0f} ms vs {ms["snnet_sb_full"]:.0f} ms all-reduced whole. All-reduced per step: Ti '
        f'{ti[0]:.1f} MiB (path {r["path_mib"]["ti"]:.1f}, whole buckets {ti[1]:.1f}), S -> B {sb[0]:.1f} MiB '
        f'(path {r["path_mib"]["sb"]:.1f}, whole buckets {sb[1]:.1f}), full {ti[2]:.1f} MiB | <= {TARGET} | '
        f'{"met" if r["met"] else "**missed**"} |']
