"""`make serve-bench` (issue #22): fixed Ti, S and B against the load-adaptive stitch, on Ray Serve over HTTP.

One local Ray and one Serve proxy on 127.0.0.1; each arm deploys the app (the same profiled table, so the arms
differ only in how the stitch is chosen), then an open-loop Poisson client (aiohttp; the same arrival times in
every arm) ramps the offered load up and back down. Latency runs from each request's scheduled arrival to its
answer, so client-side delays count. Per arm and per load phase: p50/p95 latency, SLO attainment, throughput and
the mean expected top-1 (the stitch table's top-1 of the stitch that answered). Bounded: `--max-requests` per
arm, a per-request timeout, and the schedule's length.

    python -m benchmarks.serve [--quick] [--slo-ms 50] [--rates 15,30,45,60,45,30,15] [--phase-s 5]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import socket
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image
from safetensors.torch import load_file

import timm_snnet  # noqa: F401  (registers the models)
from timm_snnet._load import load_snnet
from timm_snnet._serve import build_app, serving_table, start_serve, stop_serve

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / 'examples' / 'fashion_mnist' / 'model'
RESULTS = Path(__file__).resolve().parent / 'results'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def payloads(n: int = 64) -> list[bytes]:
    data = load_file(MODEL_DIR / 'test_images.safetensors')['images']
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(data[i].numpy()).save(buf, 'PNG')
        out.append(buf.getvalue())
    return out


def arrivals(rates: list[float], phase_s: float, seed: int, max_requests: int) -> list[tuple[float, int]]:
    """(time, phase) of Poisson arrivals, piecewise-constant rate per phase; at most `max_requests`."""
    rng, out, t = random.Random(seed), [], 0.0
    for phase, rate in enumerate(rates):
        end = (phase + 1) * phase_s
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                t = end
                break
            out.append((t, phase))
    return out[:max_requests]


async def _one(session, url: str, body: bytes, due: float, loop, timeout_s: float) -> dict[str, Any]:
    import aiohttp  # the serve extra (ray[serve] brings it too)

    try:
        async with session.post(url, data=body, headers={'Content-Type': 'image/png'},
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            doc = await r.json(content_type=None)
            status = r.status
    except (asyncio.TimeoutError, aiohttp.ClientError) as e:
        doc, status = {'error': type(e).__name__}, 0
    return dict(latency_ms=(loop.time() - due) * 1e3, status=status, stitch_id=doc.get('stitch_id'),
                top1=doc.get('top1_table'), path=doc.get('path'))


async def drive(url: str, schedule: list[tuple[float, int]], bodies: list[bytes], timeout_s: float) -> list[dict]:
    """Open loop: each request goes out at its scheduled time, whatever the answers before it are doing."""
    import aiohttp  # the serve extra (ray[serve] brings it too)

    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = loop.time() + 0.2
        tasks = []
        for i, (t, phase) in enumerate(schedule):
            due = start + t
            await asyncio.sleep(max(0.0, due - loop.time()))
            task = asyncio.ensure_future(_one(session, url, bodies[i % len(bodies)], due, loop, timeout_s))
            tasks.append((t, phase, task))
        out = []
        for t, phase, task in tasks:
            out.append(dict(t=t, phase=phase, **await task))
    return out


def summarize(records: list[dict], slo_ms: float, duration_s: float) -> dict[str, Any]:
    lat = sorted(r['latency_ms'] for r in records)
    ok = [r for r in records if r['status'] == 200]
    top1 = [r['top1'] for r in ok if r['top1'] is not None]
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None  # noqa: E731
    return dict(requests=len(records), ok=len(ok), errors=len(records) - len(ok),
                p50_ms=round(pct(0.5), 2) if lat else None, p95_ms=round(pct(0.95), 2) if lat else None,
                slo_attainment=round(sum(r['status'] == 200 and r['latency_ms'] <= slo_ms for r in records)
                                     / max(len(records), 1), 4),
                throughput_rps=round(len(ok) / duration_s, 1),
                mean_top1=round(statistics.fmean(top1), 3) if top1 else None)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as f:
        return json.loads(f.read())


def run_arms(args: argparse.Namespace) -> dict[str, Any]:
    from ray import serve

    torch.set_num_threads(1)
    model = load_snnet(args.model, pretrained=True).eval()
    rows = serving_table(model, batch_sizes=(1, 8, args.max_batch_size), rounds=args.profile_rounds)
    by_path = {r['path']: r['id'] for r in rows}
    arms = {f'fixed {p}': dict(stitch_id=by_path[p]) for p in model.anchor_names if p in by_path}
    arms['adaptive'] = dict(slo_ms=args.slo_ms, controller=dict(margin=args.slo_margin))
    rates = [float(r) for r in args.rates.split(',')]
    schedule = arrivals(rates, args.phase_s, args.seed, args.max_requests)
    duration = len(rates) * args.phase_s
    bodies = payloads()
    port = _free_port()
    url = f'http://127.0.0.1:{port}'
    result: dict[str, Any] = dict(model=args.model, slo_ms=args.slo_ms, slo_margin=args.slo_margin, rates=rates,
                                  phase_s=args.phase_s, max_batch_size=args.max_batch_size,
                                  batch_wait_ms=args.batch_wait_ms, requests_per_arm=len(schedule), table=rows, arms={},
                                  torch=torch.__version__, date=time.strftime('%Y-%m-%d %H:%M:%S %Z'))
    start_serve('127.0.0.1', port)
    try:
        for name, kw in arms.items():
            app = build_app(args.model, latency_table=rows, max_batch_size=args.max_batch_size,
                            batch_wait_ms=args.batch_wait_ms, **kw)
            serve.run(app, name='snnet', route_prefix='/')
            warm = arrivals([rates[0]], 1.0, args.seed + 1, 50)
            asyncio.run(drive(url + '/predict', warm, bodies, args.timeout_s))
            print(f'{name}: {len(schedule)} requests over {duration:g} s ...', flush=True)
            records = asyncio.run(drive(url + '/predict', schedule, bodies, args.timeout_s))
            phases = [summarize([r for r in records if r['phase'] == p], args.slo_ms, args.phase_s)
                      for p in range(len(rates))]
            result['arms'][name] = dict(summary=summarize(records, args.slo_ms, duration), phases=phases,
                                        server=_get(url + '/metrics'), records=records)
            s = result['arms'][name]['summary']
            print(f'  p50 {s["p50_ms"]} ms  p95 {s["p95_ms"]} ms  SLO {s["slo_attainment"]:.1%}  '
                  f'{s["throughput_rps"]} req/s  top-1 {s["mean_top1"]}', flush=True)
    finally:
        stop_serve()
    return result


def report(result: dict[str, Any]) -> str:
    slo = result['slo_ms']
    lines = [f'# serve-bench: {result["model"]}, p95 SLO {slo:g} ms', '',
             f'Open-loop Poisson load {", ".join(f"{r:g}" for r in result["rates"])} req/s, {result["phase_s"]:g} s '
             f'each ({result["requests_per_arm"]} requests per arm); max batch {result["max_batch_size"]}, '
             f'batch wait {result["batch_wait_ms"]:g} ms; latency from scheduled arrival to answer; {result["date"]}.',
             '', '| arm | p50 ms | p95 ms | SLO attainment | throughput req/s | mean top-1 (table) | errors |',
             '|---|---:|---:|---:|---:|---:|---:|']
    for name, arm in result['arms'].items():
        s = arm['summary']
        lines.append(f'| {name} | {s["p50_ms"]} | {s["p95_ms"]} | {s["slo_attainment"]:.1%} | '
                     f'{s["throughput_rps"]} | {s["mean_top1"]} | {s["errors"]} |')
    lines += ['', 'p95 latency (ms) per load phase:', '',
              '| arm | ' + ' | '.join(f'{r:g}/s' for r in result['rates']) + ' |',
              '|---|' + '---:|' * len(result['rates'])]
    for name, arm in result['arms'].items():
        lines.append(f'| {name} | ' + ' | '.join(str(p['p95_ms']) for p in arm['phases']) + ' |')
    return '\n'.join(lines) + '\n'


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = {r['id']: r['path'] for r in result['table']}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw=dict(height_ratios=(3, 2)))
    for name, arm in result['arms'].items():
        recs = arm['records']
        top.scatter([r['t'] for r in recs], [max(r['latency_ms'], 0.1) for r in recs], s=3, alpha=0.5, label=name)
    top.axhline(result['slo_ms'], color='k', ls='--', lw=1, label=f'SLO {result["slo_ms"]:g} ms')
    top.set_yscale('log')
    top.set_ylabel('latency (ms)')
    top.legend(loc='upper left', markerscale=4, fontsize=8)
    rate = top.twinx()
    t = [i * result['phase_s'] for i in range(len(result['rates']) + 1)]
    rate.step(t, result['rates'] + result['rates'][-1:], where='post', color='grey', lw=1)
    rate.set_ylabel('offered load (req/s)', color='grey')
    recs = [r for r in result['arms']['adaptive']['records'] if r['stitch_id'] is not None]
    ids = sorted(names, key=lambda k: next(r.get('top1', 0) for r in result['table'] if r['id'] == k))
    level = {k: i for i, k in enumerate(ids)}
    bottom.scatter([r['t'] for r in recs], [level.get(r['stitch_id'], -1) for r in recs], s=4, alpha=0.4)
    bottom.set_yticks(range(len(ids)), [names[k] for k in ids])
    bottom.set_ylabel('adaptive: stitch that answered')
    bottom.set_xlabel('time (s)')
    fig.suptitle(f'{result["model"]}: fixed stitches vs load-adaptive (p95 SLO {result["slo_ms"]:g} ms)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default=f'local-dir:{MODEL_DIR}')
    p.add_argument('--slo-ms', type=float, default=60.0)
    p.add_argument('--slo-margin', type=float, default=0.35, help="share of the SLO the controller keeps for the "
                   "HTTP proxy's time, which the replica cannot see (2 shared cores: ~7 ms idle, more under load)")
    p.add_argument('--rates', default='15,30,45,60,45,30,15', help='offered load per phase (req/s)')
    p.add_argument('--phase-s', type=float, default=6.0)
    p.add_argument('--max-requests', type=int, default=6000, help='per arm')
    p.add_argument('--max-batch-size', type=int, default=32)
    p.add_argument('--batch-wait-ms', type=float, default=2.0)
    p.add_argument('--timeout-s', type=float, default=10.0)
    p.add_argument('--profile-rounds', type=int, default=3)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true', help='short phases (2 s) and one profiling round')
    p.add_argument('--output', type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.phase_s, args.profile_rounds = 2.0, 1
    result = run_arms(args)
    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.output / ('serve_quick' if args.quick else 'serve')
    plot(result, stem.with_suffix('.png'))
    stem.with_suffix('.md').write_text(report(result))
    compact = {**result, 'arms': {arm: {k: v for k, v in r.items() if k != 'records'}  # per request: the plot's
                                  for arm, r in result['arms'].items()}}
    stem.with_suffix('.json').write_text(json.dumps(compact, indent=1))
    print(report(result))
    print(f'wrote {stem}.{{json,md,png}}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
