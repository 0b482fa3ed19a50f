"""What every measure shares: the run options, the models and inputs they build, and the timing.

Timing is torch.utils.benchmark (warm-up, a fixed thread count, medians of blocked runs). With one thread the clock is
that thread's CPU time (`time.thread_time`); candidates that are compared run in interleaved rounds, and a ratio is the
median of the per-round ratios. `run.py` imports the measures; they import this module, never `run.py`.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import timm
import torch
from timm.models._input import get_model_input_config
from torch.utils import benchmark

import timm_snnet  # noqa: F401  (registers the snnet_* models)


@dataclass
class Options:
    quick: bool
    threads: int
    rounds: int
    models: tuple[str, ...]
    img_size: Optional[int]  # None: each model's native size
    b3_every: int  # time every n-th stitched config
    b4_batch: int
    b5_images: int
    only: tuple[str, ...] = ()  # measures to run (default all)
    model_kwargs: Optional[dict] = None  # create_model kwargs (tiny anchors for --smoke)


# --smoke: every measure runs once, on DeiT anchors of the same class at tiny widths (seconds, not minutes)
SMOKE_KWARGS = dict(img_size=32,
                    anchor_kwargs=[dict(patch_size=8, embed_dim=e, depth=4, num_heads=2) for e in (16, 32, 48)])


def make_options(quick: bool, threads: int, models: Optional[str], only: tuple[str, ...] = (),
                 smoke: bool = False) -> Options:
    if smoke:
        return Options(True, threads, 1, ('snnet_deit_tsb',), None, 12, 2, 4, only, SMOKE_KWARGS)
    default = ('snnet_deit_tsb',) if quick or only == ('B4',) else tuple(timm.list_models('snnet_*'))
    names = tuple(models.split(',')) if models else default
    if quick:
        return Options(True, threads, 2, names, 112, 6, 2, 10, only)
    return Options(False, threads, 3, names, None, 1, 2, 100, only)


# --- timing --------------------------------------------------------------------------------------------------------
def clock(threads: int) -> Callable[[], float]:
    """The calling thread's CPU time when torch runs single-threaded, else wall time."""
    return time.thread_time if threads == 1 else time.perf_counter


def measure(fn: Callable[[], Any], threads: int, min_run_time: float = 0.05) -> float:
    """Median seconds per call: torch.utils.benchmark, warm-up included, `threads` torch threads."""
    timer = benchmark.Timer(stmt='fn()', globals={'fn': fn}, num_threads=threads, timer=clock(threads))
    return timer.blocked_autorange(min_run_time=min_run_time).median


def paired(fns: dict[Any, Callable[[], Any]], rounds: int, threads: int) -> dict[Any, list[float]]:
    """Interleaved rounds: each round times every candidate once."""
    times: dict[Any, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(measure(fn, threads))
    return times


def ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def inference(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run():
        with torch.inference_mode():
            return fn()
    return run


def create(name: str, opts: Options, **kwargs: Any) -> torch.nn.Module:
    if opts.img_size:
        kwargs['img_size'] = opts.img_size
    return timm.create_model(name, **{**(opts.model_kwargs or {}), **kwargs}).eval()


def images(model: torch.nn.Module, batch: int) -> torch.Tensor:
    size = get_model_input_config(model)['input_size']
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))
