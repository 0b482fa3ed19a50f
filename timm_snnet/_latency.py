"""Latency: the one device-synchronised timer, `profile` (every stitch at several batch sizes, interleaved rounds)
and merging its rows into a sweep."""
from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Any, Callable, Optional, Sequence, Union

import torch
from timm.models._input import get_model_input_config
from torch import nn
from tqdm.auto import tqdm

from ._results import load_sweep

__all__ = ['device_sync', 'device_name', 'resolve_device', 'example_input', 'measure_latency', 'profile',
           'profile_header', 'merge_latency']

PathLike = Union[str, os.PathLike]


def device_sync(device: torch.device) -> Callable[[], None]:
    if device.type == 'cuda':
        return torch.cuda.synchronize
    if device.type == 'mps':
        return torch.mps.synchronize
    return lambda: None


def _timed(fn: Callable[[], Any], threads: int, min_run_time: float) -> float:
    """Median seconds per call (torch.utils.benchmark, blocked runs after its own block-size estimate)."""
    # imported when timing: torch.utils.benchmark loads torch's C++ extension tooling, slow to import, and that logs
    # a CUDA_HOME warning on machines with a CUDA toolkit but no CUDA runtime: quiet for the import only
    log = logging.getLogger('torch.utils.cpp_extension')
    level, log.level = log.level, logging.ERROR
    try:
        from torch.utils import benchmark
    finally:
        log.setLevel(level)

    timer = benchmark.Timer(stmt='fn()', globals={'fn': fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def profile(
        model: nn.Module,
        stitches: Optional[Sequence[int]] = None,
        batch_sizes: Sequence[int] = (1, 8),
        device: Union[str, torch.device] = 'cpu',
        threads: Optional[int] = None,
        compile: bool = False,
        warmup: int = 3,
        rounds: int = 3,
        min_run_time: float = 0.1,
        progress: bool = True,
) -> list[dict]:
    """Median latency (ms) of each config at each batch size on `device`: rows `latency_ms_b{n}` in the sweep format.

    Eager configs run as `model(x, stitch_id=k)` in interleaved rounds (each round times every config and batch
    size once; the result is the median over rounds). With `compile`, each config is exported and compiled on its
    own (`torch.compile` of `export_stitch(k)`), warmed up, then timed in rounds over the batch sizes.
    """
    device = torch.device(device)
    stitches = list(range(model.num_configs)) if stitches is None else [model.check_id(k) for k in stitches]
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f'batch sizes must be positive integers, got {list(batch_sizes)}')
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    sync = device_sync(device)
    model = model.to(device).eval()
    inputs = {b: example_input(model, b) for b in batch_sizes}

    def runner(net: nn.Module, b: int, **kw: Any) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                net(inputs[b], **kw)
            sync()
        return run

    times: dict[tuple[int, int], list[float]] = {(k, b): [] for k in stitches for b in batch_sizes}
    groups = [[k] for k in stitches] if compile else [stitches]
    bar = tqdm(total=len(times) * rounds, desc='profile', unit='run', disable=not progress)
    for group in groups:
        if compile:
            net = torch.compile(model.export_stitch(group[0]).eval())
            fns = {(group[0], b): runner(net, b) for b in batch_sizes}
        else:
            fns = {(k, b): runner(model, b, stitch_id=k) for k in group for b in batch_sizes}
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        for _ in range(rounds):
            for key, fn in fns.items():
                times[key].append(_timed(fn, threads, min_run_time))
                bar.update()
    bar.close()
    configs = model.stitch_configs()
    rows = []
    for k in stitches:
        c = configs[k]
        row = dict(id=k, path=model.describe(c), gflops=round(c.gflops, 6), params=int(c.params))
        row.update({f'latency_ms_b{b}': round(1e3 * statistics.median(times[(k, b)]), 4) for b in batch_sizes})
        big = [b for b in batch_sizes if b != 1]
        if big:
            row['latency_ms_bN'] = row[f'latency_ms_b{max(big)}']
        rows.append(row)
    return rows


def profile_header(model_name: str, model_kwargs: dict, device: torch.device, batch_sizes: Sequence[int],
                   threads: int, compile: bool, warmup: int, rounds: int) -> dict[str, Any]:

    return dict(device=str(device), device_name=device_name(device), batch_sizes=list(batch_sizes), threads=threads,
                compile=compile, warmup=warmup, rounds=rounds, stat='median', timer='torch.utils.benchmark',
                torch=torch.__version__, date=time.strftime('%Y-%m-%d %H:%M:%S %Z'))


def merge_latency(sweep_json: PathLike, rows: Sequence[dict], profile_info: dict, model_name: str) -> dict[str, Any]:
    """Put profiled latencies into an existing sweep.json (its rows keep their accuracies); returns the result."""

    result = load_sweep(sweep_json)
    if result.get('model') and result['model'] != model_name:
        raise ValueError(f'{sweep_json} was measured on {result["model"]}, not {model_name}')
    big = [b for b in profile_info['batch_sizes'] if b != 1]
    n = result.get('batch_size')
    if n is not None and big and max(big) != n:
        raise ValueError(f'{sweep_json} holds latency_ms_bN at batch {n}, but the largest profiled batch is '
                         f'{max(big)}: profile with --batch-sizes 1,{n}')
    by_id = {r['id']: r for r in rows}
    for row in result['rows']:
        new = by_id.get(row['id'])
        if new is None:
            continue
        if 'path' in row and row['path'] != new['path']:
            raise ValueError(f'{sweep_json}: row {row["id"]} is {row["path"]!r} but config {row["id"]} of this model '
                             f'is {new["path"]!r}: the sweep was measured on another model')
        row.update({k: v for k, v in new.items() if k.startswith('latency_ms_')})
    result['profile'] = profile_info
    if n is None and big:
        result['batch_size'] = max(big)
    return result


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, input_size: Sequence[int], batch_size: int, device: torch.device,
                    warmup: int = 5, iters: int = 20) -> float:
    """Median milliseconds per forward of the active stitch at `batch_size`, on `device`."""
    model.eval()
    x = torch.randn(batch_size, *input_size, device=device)
    sync = device_sync(device)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(max(1, iters)):
        start = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{device.type} ({torch.get_num_threads()} threads)'


def resolve_device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f'bad --device {name!r}: {e}') from e
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {name} asked for CUDA, but torch sees no GPU; use --device cpu')
    return device


def example_input(model: nn.Module, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """A random batch at the model's input size, on its device and in its dtype."""
    param = next(model.parameters())
    size = get_model_input_config(model)['input_size']
    x = torch.randn(batch_size, *size, generator=torch.Generator().manual_seed(seed))
    return x.to(param.device, param.dtype)
