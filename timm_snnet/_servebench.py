"""`timm-snnet serve-bench`: replay arrivals against fixed stitches and the load-adaptive server, score every answer.

- Arrivals: `read_trace` (CSV, first column the arrival time in ms; an optional `deadline_ms` column, as in the
  `t_ms,qos,deadline_ms` traces of serving papers), or `parse_load` (`poisson:RATE`, `ramp:R1,R2,...@PHASE_S`,
  `bursty:LOW,HIGH[,MEAN_LOW_S,MEAN_HIGH_S]`, a seeded two-state Markov-modulated Poisson process), then
  `transform` (window, time scale, rate scale). `production_trace` writes the diurnal-and-bursty trace we ship.
- `best_fixed`: the most accurate stitch that the latency table predicts holds the SLO at the arrivals' peak.
- `simulate`: the real `StitchController` (or a fixed stitch) on a simulated clock and the profiled latencies.
- `run_bench`: every arm on a local Ray Serve over HTTP, the same arrivals and images; `summarize`, `report` and
  `plot` make serve.json / serve.md / serve.png. Pure except `run_bench` (Ray, aiohttp) and `plot` (matplotlib).
"""
from __future__ import annotations

import asyncio
import bisect
import csv
import heapq
import io
import json
import math
import random
import statistics
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ._convert import official_rows
from ._latency import example_input
from ._load import load_snnet
from ._releases import OFFICIAL
from ._results import load_sweep, read_reference
from ._selection import pareto_front, parse_stitches
from ._serve import StitchController, build_app, load_latency_table, serving_table, start_serve, stop_serve

__all__ = ['Arrival', 'BenchConfig', 'read_trace', 'write_trace', 'parse_load', 'poisson', 'ramp', 'bursty',
           'production_trace', 'transform', 'peak_rate', 'best_fixed', 'parse_arms', 'simulate', 'summarize',
           'report', 'plot', 'run_bench', 'accuracy_rows']

DEADLINE_COLUMNS = ('deadline_ms', 'deadline')


@dataclass(frozen=True)
class Arrival:
    t_ms: float  # from the start of the load
    deadline_ms: Optional[float] = None


# --- arrivals --------------------------------------------------------------------------------------------------------
def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_trace(path: str | Path) -> list[Arrival]:
    """Arrivals of a CSV trace: the first column is the arrival time in ms; a column headed `deadline_ms` (or
    `deadline`) is a per-request deadline in ms (empty: none); other columns are ignored. Sorted by time."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f'cannot read trace {path}: {getattr(e, "strerror", None) or e}') from None
    out, deadline_col = [], None
    rows = csv.reader(io.StringIO(text))
    for n, row in enumerate(rows, 1):
        cells = [c.strip() for c in row]
        if not cells or not cells[0] or cells[0].startswith('#'):
            continue
        if not out and deadline_col is None and not _is_number(cells[0]):  # a header
            names = [c.lower() for c in cells]
            deadline_col = next((names.index(c) for c in DEADLINE_COLUMNS if c in names), -1)
            continue
        try:
            t = float(cells[0])
            d = cells[deadline_col] if deadline_col is not None and 0 <= deadline_col < len(cells) else ''
            deadline = float(d) if d else None
        except ValueError:
            raise ValueError(f'{path}:{n}: expected numbers (arrival time in ms, deadline in ms), got '
                             f'{",".join(cells)!r}') from None
        if not math.isfinite(t) or t < 0 or deadline is not None and not (math.isfinite(deadline) and deadline > 0):
            raise ValueError(f'{path}:{n}: arrival times must be >= 0 and deadlines > 0 (finite), got '
                             f'{",".join(cells)!r}')
        out.append(Arrival(t, deadline))
    if not out:
        raise ValueError(f'trace {path} holds no arrivals (CSV: first column the arrival time in ms)')
    return sorted(out, key=lambda a: a.t_ms)


def write_trace(path: str | Path, arrivals: Sequence[Arrival], qos: int = 0) -> None:
    """A trace CSV with the columns `t_ms,qos,deadline_ms`."""
    lines = ['t_ms,qos,deadline_ms'] + [f'{a.t_ms:.3f},{qos},{"" if a.deadline_ms is None else f"{a.deadline_ms:g}"}'
                                        for a in arrivals]
    Path(path).write_text('\n'.join(lines) + '\n')


def _piecewise(rates: Sequence[float], phase_s: float, rng: random.Random) -> list[Arrival]:
    """Poisson arrivals at a rate constant within each phase."""
    out = []
    for i, rate in enumerate(rates):
        t, end = i * phase_s, (i + 1) * phase_s
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= end:
                break
            out.append(Arrival(t * 1e3))
    return out


def poisson(rate: float, duration_s: float, seed: int = 0) -> list[Arrival]:
    return _piecewise([rate], duration_s, random.Random(seed))


def ramp(rates: Sequence[float], phase_s: float, seed: int = 0) -> list[Arrival]:
    return _piecewise(rates, phase_s, random.Random(seed))


def bursty(low: float, high: float, duration_s: float, mean_low_s: float = 8.0, mean_high_s: float = 2.0,
           seed: int = 0) -> list[Arrival]:
    """A two-state Markov-modulated Poisson process: rate `low` for exponential spells of mean `mean_low_s`, then
    `high` for spells of mean `mean_high_s`, starting low; one seeded RNG draws spells and arrivals."""
    rng, out, t, state = random.Random(seed), [], 0.0, 0
    while t < duration_s:
        end = min(t + rng.expovariate(1.0 / (mean_high_s if state else mean_low_s)), duration_s)
        rate = high if state else low
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= end:
                break
            out.append(Arrival(t * 1e3))
        t, state = end, 1 - state
    return out


def _floats(text: str, what: str, spec: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(',')]
    except ValueError:
        values = []
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f'bad --load {spec!r}: {what} must be non-negative numbers')
    return values


def parse_load(spec: str, duration_s: float = 60.0, seed: int = 0) -> list[Arrival]:
    """`poisson:RATE`, `ramp:R1,R2,...@PHASE_S` or `bursty:LOW,HIGH[,MEAN_LOW_S,MEAN_HIGH_S]` (rates in req/s)."""
    kind, _, args = spec.partition(':')
    usage = 'use poisson:RATE, ramp:R1,R2,...@PHASE_S or bursty:LOW,HIGH[,MEAN_LOW_S,MEAN_HIGH_S]'
    if kind == 'poisson':
        (rate,) = _floats(args, 'RATE', spec)[:1] or [0.0]
        return poisson(rate, duration_s, seed)
    if kind == 'ramp' and '@' in args:
        rates, phase = args.split('@', 1)
        (phase_s,) = _floats(phase, 'PHASE_S', spec)[:1]
        return ramp(_floats(rates, 'rates', spec), phase_s, seed)
    if kind == 'bursty':
        values = _floats(args, 'LOW,HIGH,MEAN_LOW_S,MEAN_HIGH_S', spec)
        if len(values) not in (2, 4) or len(values) == 4 and min(values[2:]) <= 0:
            raise ValueError(f'bad --load {spec!r}: {usage} (spell means > 0)')
        return bursty(*values[:2], duration_s, *values[2:], seed=seed)
    raise ValueError(f'bad --load {spec!r}: {usage}')


def production_trace(duration_s: float = 600.0, base: float = 4.0, peak: float = 24.0, period_s: float = 300.0,
                     mean_calm_s: float = 45.0, mean_burst_s: float = 4.0, deadline_ms: Optional[float] = None,
                     seed: int = 0) -> list[Arrival]:
    """A production-shaped trace: a diurnal swing (`base` x (1 +/- 0.5) over `period_s`) times Markov-modulated
    bursts to `peak` req/s (spells of mean `mean_calm_s` / `mean_burst_s`), drawn by thinning; seeded."""
    rng, out, t, burst = random.Random(seed), [], 0.0, False
    switch = rng.expovariate(1.0 / mean_calm_s)
    top = max(peak, 1.5 * base)
    while True:
        t += rng.expovariate(top)
        while t >= switch:
            burst = not burst
            switch += rng.expovariate(1.0 / (mean_burst_s if burst else mean_calm_s))
        if t >= duration_s:
            return out
        rate = peak if burst else base * (1.0 + 0.5 * math.sin(2 * math.pi * t / period_s))
        if rng.random() < rate / top:
            out.append(Arrival(round(t * 1e3, 3), deadline_ms))


def transform(arrivals: Sequence[Arrival], window: Optional[tuple[float, float]] = None, time_scale: float = 1.0,
              rate_scale: float = 1.0, duration_s: Optional[float] = None, seed: int = 0) -> list[Arrival]:
    """Window (seconds of the original; shifted to start at 0), then time compressed `time_scale` times, then
    thinned (scale < 1) or repeated (> 1: extra copies at random times before the next arrival) `rate_scale`
    times, keeping the shape in time, then cut at `duration_s`."""
    if time_scale <= 0 or rate_scale <= 0:
        raise ValueError(f'--time-scale and --rate-scale must be > 0, got {time_scale} and {rate_scale}')
    out = list(arrivals)
    if window is not None:
        lo, hi = window
        out = [Arrival(a.t_ms - lo * 1e3, a.deadline_ms) for a in out if lo * 1e3 <= a.t_ms < hi * 1e3]
    out = [Arrival(a.t_ms / time_scale, a.deadline_ms) for a in out]
    if rate_scale != 1.0:
        rng, scaled = random.Random(seed), []
        for i, a in enumerate(out):
            nxt = out[i + 1].t_ms if i + 1 < len(out) else a.t_ms
            copies = int(rate_scale) + (rng.random() < rate_scale - int(rate_scale))
            scaled += [a] + [Arrival(rng.uniform(a.t_ms, nxt), a.deadline_ms) for _ in range(copies - 1)] \
                if copies else []
        out = sorted(scaled, key=lambda a: a.t_ms)
    if duration_s is not None:
        out = [a for a in out if a.t_ms < duration_s * 1e3]
    if not out:
        raise ValueError('no arrivals left after --window / --duration / --rate-scale: widen the window')
    return out


def parse_window(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition(':')
    try:
        out = (float(lo), float(hi))
    except ValueError:
        out = (0.0, -1.0)
    if not sep or not 0 <= out[0] < out[1]:
        raise ValueError(f'bad --window {text!r}: use START_S:END_S with 0 <= START_S < END_S')
    return out


def peak_rate(arrivals: Sequence[Arrival], window_s: float = 2.0) -> float:
    """The most arrivals in any `window_s`-second window, per second."""
    t = [a.t_ms for a in arrivals]
    most = max((bisect.bisect_left(t, x + window_s * 1e3) - i for i, x in enumerate(t)), default=0)
    return most / window_s


# --- arms ----------------------------------------------------------------------------------------------------------
def _score(row: dict) -> float:
    return float(row['top1'] if isinstance(row.get('top1'), (int, float)) else row.get('gflops') or 0.0)


def best_fixed(rows: Sequence[dict], peak_rps: float, slo_ms: float, replicas: int = 1, max_batch_size: int = 8,
               margin: float = 0.2) -> int:
    """The most accurate stitch that keeps up with `peak_rps` within the SLO by the latency table: some batch size
    b <= `max_batch_size` forms within one batch time (b >= rate per replica x latency(b)) and two batch times (one
    ahead of a request, its own) fit the SLO less the controller's `margin`; else the fastest stitch."""
    per_replica = peak_rps / replicas
    budget = slo_ms * (1.0 - margin)
    table = StitchController(rows, slo_ms, max_batch_size=max_batch_size)  # its profiled curves, unscaled

    def holds(k: int) -> bool:
        return any(per_replica * table.predict_ms(k, b) / 1e3 <= b and 2 * table.predict_ms(k, b) <= budget
                   for b in range(1, max_batch_size + 1))

    ranked = sorted(rows, key=lambda r: (-_score(r), r.get('gflops') or 0.0, r['id']))
    return next((int(r['id']) for r in ranked if holds(int(r['id']))), table.fastest)


def parse_arms(spec: str, num_configs: int) -> list[str]:
    """`fixed:ID`, `best-fixed` and `adaptive` (comma list) as canonical names; ValueError on anything else."""
    out = []
    for part in (p.strip() for p in spec.split(',')):
        if part.startswith('fixed:'):
            k = part.removeprefix('fixed:')
            if not k.isdigit() or not 0 <= int(k) < num_configs:
                raise ValueError(f'bad arm {part!r}: the stitch id must be 0..{num_configs - 1}')
            part = f'fixed:{int(k)}'
        elif part not in ('best-fixed', 'adaptive'):
            raise ValueError(f'unknown arm {part!r}: use fixed:ID, best-fixed or adaptive (comma list)')
        if part not in out:
            out.append(part)
    return out


# --- the simulator ---------------------------------------------------------------------------------------------------
@dataclass
class _Replica:
    controller: Optional[StitchController]
    queue: list = field(default_factory=list)  # (arrival s, index, due s or None)
    busy_until: float = 0.0


def simulate(arrivals: Sequence[Arrival], rows: Sequence[dict], slo_ms: Optional[float] = None,
             stitch_id: Optional[int] = None, replicas: int = 1, max_batch_size: int = 8, batch_wait_ms: float = 2.0,
             overhead_ms: float = 0.0, noise: float = 0.0, controller: Optional[dict] = None,
             seed: int = 0) -> list[dict]:
    """Records (as `run_bench` makes them) of a simulated server: each replica runs one batch at a time (up to
    `max_batch_size` requests, after `batch_wait_ms`), a batch takes its profiled latency (times a lognormal
    `noise`), each request pays `overhead_ms` outside the replica; arrivals go to the replica with the shortest
    queue. With `slo_ms` the real `StitchController` picks each batch's stitch on the simulated clock."""
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    margin = (controller or {}).get('margin', 0.2)
    reps = [_Replica(StitchController(rows, slo_ms, max_batch_size=max_batch_size, clock=clock, **(controller or {}))
                     if slo_ms is not None else None) for _ in range(replicas)]
    table = StitchController(rows, slo_ms or 1.0, max_batch_size=max_batch_size)  # the profiled curves, unscaled
    rng = random.Random(seed)
    done: list[Any] = [None] * len(arrivals)
    events = [(a.t_ms / 1e3, 0, i) for i, a in enumerate(arrivals)]  # (time, kind 0 arrival / 1 wake-up, index)
    heapq.heapify(events)
    wait_s = batch_wait_ms / 1e3

    def start(rep: _Replica, t: float) -> None:
        """Run the next batch on `rep` at `t` if it is free and a batch is due."""
        if not rep.queue or rep.busy_until > t:
            return
        ready = rep.queue[0][0] + wait_s if len(rep.queue) < max_batch_size else t
        if ready > t:
            heapq.heappush(events, (ready, 1, -1))
            return
        batch, rep.queue = rep.queue[:max_batch_size], rep.queue[max_batch_size:]
        now[0] = t
        k = stitch_id
        if rep.controller is not None:
            dues = [d for _, _, d in batch if d is not None]
            queued = [d for _, _, d in rep.queue if d is not None]
            k = rep.controller.choose(len(batch), (t - batch[0][0]) * 1e3, len(rep.queue),
                                      deadline_ms=(min(dues) - t) * 1e3 if dues else None,
                                      queued_deadline_ms=(min(queued) - t) * 1e3 if queued else None)
        run = table.predict_ms(k, len(batch)) * (rng.lognormvariate(0.0, noise) if noise else 1.0)
        rep.busy_until = t + run / 1e3
        if rep.controller is not None:
            rep.controller.observe(k, len(batch), run)
        for _, i, _ in batch:
            done[i] = (rep.busy_until, k)
        heapq.heappush(events, (rep.busy_until, 1, -1))

    while events:
        t, kind, i = heapq.heappop(events)
        now[0] = t
        if kind == 0:
            rep = min(reps, key=lambda r: len(r.queue) + (r.busy_until > t))
            d = arrivals[i].deadline_ms
            rep.queue.append((t, i, None if d is None else t + d * (1.0 - margin) / 1e3))
            if rep.controller is not None:
                rep.controller.arrive()
        for rep in reps:
            start(rep, t)
    out = []
    for a, (end, k) in zip(arrivals, done):
        out.append(dict(t=a.t_ms / 1e3, latency_ms=(end - a.t_ms / 1e3) * 1e3 + overhead_ms, status=200,
                        stitch_id=k, deadline_ms=a.deadline_ms, end=end))
    return out


# --- results -------------------------------------------------------------------------------------------------------
def _pct(values: Sequence[float], q: float) -> Optional[float]:
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q * len(v)))], 2) if v else None


def _met(r: dict, slo_ms: float) -> bool:
    """Answered within the SLO and within its own deadline, if it had one."""
    limit = slo_ms if r.get('deadline_ms') is None else min(slo_ms, r['deadline_ms'])
    return r['status'] == 200 and r['latency_ms'] <= limit


def summarize(name: str, records: Sequence[dict], slo_ms: float, accuracy: dict[int, float],
              gflops: dict[int, float], duration_s: float, bin_s: float = 2.0) -> dict[str, Any]:
    """One arm: counts, SLO attainment (late or failed requests miss), mean top-1 of the answering stitches,
    latency percentiles over every request, throughput, switches (changes of stitch between consecutive answers)
    and a per-`bin_s` series (offered load, p95, mean GFLOPs of the answers)."""
    ok = [r for r in records if r['status'] == 200]
    top1 = [accuracy[r['stitch_id']] for r in ok if r['stitch_id'] in accuracy]
    lat = [r['latency_ms'] for r in records]
    by_end = [r['stitch_id'] for r in sorted(ok, key=lambda r: r['end'])]
    nbins = max(1, math.ceil(duration_s / bin_s))
    bins: list[list[dict]] = [[] for _ in range(nbins)]
    for r in records:
        bins[min(int(r['t'] / bin_s), nbins - 1)].append(r)
    series = dict(t=[round((i + 0.5) * bin_s, 2) for i in range(nbins)],
                  rps=[round(len(b) / bin_s, 2) for b in bins],
                  p95_ms=[_pct([r['latency_ms'] for r in b], 0.95) for b in bins],
                  gflops=[round(statistics.fmean(g), 3) if (g := [gflops[r['stitch_id']] for r in b
                                                                   if r['status'] == 200 and r['stitch_id'] in gflops])
                          else None for b in bins])
    return dict(name=name, requests=len(records), answered=len(ok), errors=len(records) - len(ok),
                slo_attainment=round(sum(_met(r, slo_ms) for r in records) / max(len(records), 1), 4),
                mean_top1=round(statistics.fmean(top1), 3) if top1 else None,
                p50_ms=_pct(lat, 0.5), p95_ms=_pct(lat, 0.95), p99_ms=_pct(lat, 0.99),
                throughput_rps=round(len(ok) / duration_s, 2),
                switches=sum(a != b for a, b in zip(by_end, by_end[1:])), series=series)


def report(result: dict[str, Any]) -> str:
    """serve.md: the setup and one row per arm."""
    load = result['load']
    lines = [f'# serve-bench: {result["model"]}, p95 SLO {result["slo_ms"]:g} ms', '',
             f'{load["source"]}: {load["requests"]} requests over {load["duration_s"]:g} s (mean '
             f'{load["mean_rps"]:g} req/s, peak {load["peak_rps"]:g} req/s over {load["peak_window_s"]:g} s); '
             f'{result["replicas"]} replica(s) x {result["threads"]} thread(s), max batch {result["max_batch_size"]}; '
             f'top-1 from {result["accuracy_source"]}; best-fixed = id {result["best_fixed"]}; {result["date"]}.', '',
             '| arm | SLO attainment | mean top-1 | p50 ms | p95 ms | p99 ms | throughput req/s | answered | errors '
             '| switches |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for a in result['arms']:
        lines.append(f'| {a["name"]} | {a["slo_attainment"]:.1%} | {a["mean_top1"]} | {a["p50_ms"]} | {a["p95_ms"]} '
                     f'| {a["p99_ms"]} | {a["throughput_rps"]} | {a["answered"]}/{a["requests"]} | {a["errors"]} '
                     f'| {a["switches"]} |')
    return '\n'.join(lines) + '\n'


def plot(result: dict[str, Any], path: str | Path) -> None:
    """serve.png: per arm over time the offered load, the p95 and the served GFLOPs; SLO attainment vs mean top-1."""
    # matplotlib loads here: it is slow to import and only the figure needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6.5), dpi=90, layout='constrained')
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 2, width_ratios=(2.2, 1))
    load, p95, gf = (fig.add_subplot(grid[i, 0]) for i in range(3))
    summary = fig.add_subplot(grid[:, 1])
    arms = result['arms']
    s0 = arms[0]['series']
    load.fill_between(s0['t'], s0['rps'], step='mid', color='0.8')
    load.set_ylabel('offered load (req/s)')
    for i, a in enumerate(arms):
        color = f'C{i}'
        s = a['series']
        p95.plot(s['t'], [v if v is not None else math.nan for v in s['p95_ms']], color=color, lw=1.2, label=a['name'])
        gf.plot(s['t'], [v if v is not None else math.nan for v in s['gflops']], color=color, lw=1.2)
        if a['mean_top1'] is not None:
            summary.scatter(100 * a['slo_attainment'], a['mean_top1'], color=color, s=50, zorder=3)
            summary.annotate(a['name'], (100 * a['slo_attainment'], a['mean_top1']), textcoords='offset points',
                             xytext=(5, 4), fontsize=8)
    p95.axhline(result['slo_ms'], color='k', ls='--', lw=0.8)
    p95.set_yscale('log')
    p95.set_ylabel('p95 latency (ms)')
    p95.legend(fontsize=7, ncol=3, loc='upper left')
    gf.set_ylabel('served GFLOPs')
    gf.set_xlabel('time (s)')
    summary.axvline(99, color='k', ls=':', lw=0.8)
    summary.set_xlabel('SLO attainment (%)')
    summary.set_ylabel(f'mean top-1 ({result["accuracy_source"][:40]})', fontsize=8)
    summary.grid(alpha=0.3)
    fig.suptitle(f'{result["model"]}: p95 SLO {result["slo_ms"]:g} ms, {result["replicas"]} replica(s) x '
                 f'{result["threads"]} thread(s), {result["load"]["source"]}', fontsize=10)
    fig.savefig(path)


# --- the live run ----------------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    model: str
    arrivals: list
    load_source: str
    arms: str = ''  # default: every anchor, best-fixed and adaptive
    slo_ms: float = 300.0
    replicas: int = 1
    threads: int = 1
    seed: int = 0
    accuracy_table: Optional[str] = None  # FILE (sweep.json or reference .jsonl) or 'official'
    latency_table: Optional[str] = None
    stitches: Optional[str] = None
    pretrained: bool = True
    max_batch_size: int = 8
    batch_wait_ms: float = 2.0
    margin: float = 0.2
    hysteresis: float = 0.2
    hold_s: float = 1.0
    peak_window_s: float = 2.0
    timeout_s: float = 10.0
    profile_rounds: int = 1
    simulate: bool = False


def accuracy_rows(model: torch.nn.Module, name: str, table: Optional[str]) -> tuple[Optional[list[dict]], str]:
    """(rows with id and top1, where they come from): `official`, a reference .jsonl, a sweep.json, else the model's
    own stitch table."""
    if table == 'official':
        rows = official_rows(model, name) if name in OFFICIAL else None
        if rows is None:
            raise ValueError(f'no published per-config results for {name!r}; pass --accuracy-table FILE (a '
                             'sweep.json or a reference .jsonl)')
        return rows, f'{OFFICIAL[name].results}, as published'
    if table is not None:
        rows = read_reference(table) if str(table).endswith('.jsonl') else load_sweep(table)['rows']
        if not any(isinstance(r.get('top1'), (int, float)) for r in rows):
            raise ValueError(f'{table} has no top1 per stitch')
        return rows, str(table)
    if model.stitch_table:
        return list(model.stitch_table), "the model's stitch table"
    return None, 'nowhere (no accuracy table: GFLOPs rank the stitches)'


def images(model: torch.nn.Module, n: int = 16, seed: int = 0) -> list[bytes]:
    """`n` seeded random PNGs at the model's input size (every arm sends the same ones)."""
    from PIL import Image

    x = example_input(model, n, seed)
    out = []
    for img in x:
        a = (img - img.min()) / (img.max() - img.min() + 1e-6) * 255
        a = a.to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, 'PNG')
        out.append(buf.getvalue())
    return out


async def _one(session, url: str, body: bytes, due: float, loop, timeout_s: float) -> dict[str, Any]:
    import aiohttp  # the serve extra

    try:
        async with session.post(url, data=body, headers={'Content-Type': 'image/png'},
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            doc = await r.json(content_type=None)
            status = r.status
    except (asyncio.TimeoutError, aiohttp.ClientError, ValueError) as e:
        doc, status = {'error': type(e).__name__}, 0
    end = loop.time()
    return dict(latency_ms=(end - due) * 1e3, status=status, stitch_id=doc.get('stitch_id'), end=end)


async def drive(url: str, arrivals: Sequence[Arrival], bodies: Sequence[bytes], timeout_s: float,
                deadlines: bool = True, progress: bool = False) -> list[dict]:
    """Open loop: each request leaves at its arrival time whatever the earlier ones do; latency runs from the
    scheduled arrival to the answer. `deadlines`: send each arrival's deadline_ms as a query field."""
    import aiohttp  # the serve extra

    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = loop.time() + 0.2
        tasks = []
        for i, a in enumerate(tqdm(arrivals, desc='requests', unit='req', disable=not progress, leave=False)):
            due = start + a.t_ms / 1e3
            await asyncio.sleep(max(0.0, due - loop.time()))
            target = url + (f'?deadline_ms={a.deadline_ms:g}' if deadlines and a.deadline_ms is not None else '')
            tasks.append(asyncio.ensure_future(_one(session, target, bodies[i % len(bodies)], due, loop, timeout_s)))
        records = await asyncio.gather(*tasks)
    return [dict(t=a.t_ms / 1e3, deadline_ms=a.deadline_ms, **r) for a, r in zip(arrivals, records)]


def _metrics(url: str) -> dict:
    try:
        with urllib.request.urlopen(url + '/metrics', timeout=10) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return {}


def run_bench(cfg: BenchConfig, progress: bool = True) -> tuple[dict[str, Any], list[dict]]:
    """Every arm against the same arrivals and images: (the serve.json result, the served latency table)."""
    torch.set_num_threads(cfg.threads)
    net = load_snnet(cfg.model, pretrained=cfg.pretrained).eval()
    accuracy, source = accuracy_rows(net, cfg.model.split('.')[0], cfg.accuracy_table)
    anchors = {net.describe(c): c.id for c in net.stitch_configs() if net.describe(c) in net.anchor_names}
    arms = parse_arms(cfg.arms or ','.join([f'fixed:{k}' for k in anchors.values()] + ['best-fixed', 'adaptive']),
                      net.num_configs)
    if cfg.stitches is not None:
        served = parse_stitches(cfg.stitches, net.num_configs)
    else:  # as the server: the Pareto front of the accuracy table, else every config
        served = pareto_front(accuracy) if accuracy else list(range(net.num_configs))
    served = sorted({*served, *anchors.values(), *(int(a[6:]) for a in arms if a.startswith('fixed:'))})
    batch_sizes = sorted({1, *(2 ** i for i in range(1, 8) if 2 ** i < cfg.max_batch_size), cfg.max_batch_size})
    rows = serving_table(net, served, batch_sizes=batch_sizes, rounds=cfg.profile_rounds, threads=cfg.threads,
                         latency_table=load_latency_table(cfg.latency_table) if cfg.latency_table else None,
                         accuracy_table=accuracy)
    top1 = {r['id']: float(r['top1']) for r in (accuracy or []) if isinstance(r.get('top1'), (int, float))}
    gflops = {c.id: c.gflops for c in net.stitch_configs()}
    peak = peak_rate(cfg.arrivals, cfg.peak_window_s)
    best = best_fixed(rows, peak, cfg.slo_ms, cfg.replicas, cfg.max_batch_size, cfg.margin)
    names = {k: p for p, k in anchors.items()}
    duration_s = max(a.t_ms for a in cfg.arrivals) / 1e3 + 1e-3
    controller = dict(margin=cfg.margin, hysteresis=cfg.hysteresis, hold_s=cfg.hold_s)
    plans = []
    for arm in arms:
        if arm == 'adaptive':
            plans.append(('adaptive', dict(slo_ms=cfg.slo_ms, controller=controller)))
        else:
            k = best if arm == 'best-fixed' else int(arm[6:])
            label = f'best-fixed (id {k})' if arm == 'best-fixed' else f'fixed {names.get(k, f"id {k}")}'
            plans.append((label, dict(stitch_id=k)))
    results = []
    if cfg.simulate:
        for label, kw in plans:
            records = simulate(cfg.arrivals, rows, replicas=cfg.replicas, max_batch_size=cfg.max_batch_size,
                               batch_wait_ms=cfg.batch_wait_ms, seed=cfg.seed, **kw)
            results.append(summarize(label, records, cfg.slo_ms, top1, gflops, duration_s))
    else:
        results = _run_live(cfg, plans, rows, served, net, top1, gflops, duration_s, progress)
    load = dict(source=cfg.load_source, requests=len(cfg.arrivals), duration_s=round(duration_s, 2),
                mean_rps=round(len(cfg.arrivals) / duration_s, 2), peak_rps=round(peak, 2),
                peak_window_s=cfg.peak_window_s, deadlines=sum(a.deadline_ms is not None for a in cfg.arrivals))
    result = dict(model=cfg.model, slo_ms=cfg.slo_ms, load=load, arms=results, replicas=cfg.replicas,
                  threads=cfg.threads, max_batch_size=cfg.max_batch_size, batch_wait_ms=cfg.batch_wait_ms,
                  controller=controller, accuracy_source=source, best_fixed=best, simulated=cfg.simulate,
                  served=[r['id'] for r in rows], torch=torch.__version__,
                  date=time.strftime('%Y-%m-%d %H:%M:%S %Z'))
    return result, rows


def _run_live(cfg: BenchConfig, plans: list, rows: list[dict], served: list[int], net: torch.nn.Module,
              top1: dict, gflops: dict, duration_s: float, progress: bool) -> list[dict]:
    from ray import serve  # the serve extra; build_app below says how to install it when missing

    bodies = images(net, seed=cfg.seed)
    url = f'http://127.0.0.1:{start_serve("127.0.0.1", 0, num_cpus=cfg.replicas * cfg.threads)}'
    out = []
    try:
        for label, kw in tqdm(plans, desc='arms', unit='arm', disable=not progress):
            app = build_app(cfg.model, replicas=cfg.replicas, stitches=served, max_batch_size=cfg.max_batch_size,
                            batch_wait_ms=cfg.batch_wait_ms, threads=cfg.threads, latency_table=rows,
                            pretrained=cfg.pretrained, accuracy_table=rows if top1 else None, **kw)
            serve.run(app, name='snnet', route_prefix='/')
            warm = [Arrival(i * 200.0) for i in range(4 * cfg.replicas)]
            asyncio.run(drive(url + '/predict', warm, bodies, cfg.timeout_s, deadlines=False))
            records = asyncio.run(drive(url + '/predict', cfg.arrivals, bodies, cfg.timeout_s,
                                        deadlines='slo_ms' in kw, progress=progress))
            arm = summarize(label, records, cfg.slo_ms, top1, gflops, duration_s)
            arm['server'] = _metrics(url)
            out.append(arm)
            tqdm.write(f'{label}: SLO {arm["slo_attainment"]:.1%}, top-1 {arm["mean_top1"]}, p95 {arm["p95_ms"]} ms')
    finally:
        stop_serve()
    return out


def write_outputs(result: dict[str, Any], rows: Sequence[dict], output: str | Path) -> Path:
    """DIR/serve.json, serve.md, serve.png and latency.json (the served table, for --latency-table)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'serve.json').write_text(json.dumps(result, indent=1) + '\n')
    (out / 'serve.md').write_text(report(result))
    (out / 'latency.json').write_text(json.dumps(list(rows), indent=1) + '\n')
    plot(result, out / 'serve.png')
    return out
