"""`timm-snnet serve-bench MODEL`: replay a trace or a generated load against fixed stitches and the adaptive server."""
from __future__ import annotations

import argparse

from .._servebench import BenchConfig, parse_load, parse_window, read_trace, run_bench, transform, write_outputs


def _cmd_serve_bench(args: argparse.Namespace) -> int:
    if (args.trace is None) == (args.load is None):
        raise ValueError('give one of --trace FILE or --load SPEC')
    if args.trace is not None:
        arrivals, source = read_trace(args.trace), f'trace {args.trace}'
    else:
        arrivals, source = parse_load(args.load, args.duration or 60.0, args.seed), f'load {args.load}'
    window = parse_window(args.window) if args.window else None
    arrivals = transform(arrivals, window, args.time_scale, args.rate_scale, args.duration, args.seed)
    scaled = [f'{k} {v:g}' for k, v in (('window', None), ('time x', args.time_scale), ('rate x', args.rate_scale))
              if v not in (None, 1.0)]
    if window:
        scaled.insert(0, f'window {args.window} s')
    source += f' ({", ".join(scaled)})' if scaled else ''
    cfg = BenchConfig(
        args.model, arrivals, source, arms=args.arms or '', slo_ms=args.slo_ms, replicas=args.replicas,
        threads=args.threads, seed=args.seed, accuracy_table=args.accuracy_table, latency_table=args.latency_table,
        stitches=args.stitches, pretrained=not args.random_weights, max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms, margin=args.slo_margin, hysteresis=args.hysteresis, hold_s=args.hold_s,
        timeout_s=args.timeout_s, profile_rounds=args.profile_rounds, simulate=args.simulate)
    for name, value in (('--slo-ms', args.slo_ms), ('--replicas', args.replicas), ('--threads', args.threads),
                        ('--max-batch-size', args.max_batch_size), ('--timeout-s', args.timeout_s)):
        if not value > 0:
            raise ValueError(f'{name} must be positive, got {value:g}')
    result, rows = run_bench(cfg)
    out = write_outputs(result, rows, args.output)
    print(open(out / 'serve.md').read(), end='')
    print(f'wrote {out}/serve.{{json,md,png}} and {out}/latency.json')
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        'serve-bench', help='load-test fixed stitches against the adaptive server on a trace (needs [serve])',
        description='Replays the same arrivals (a CSV trace or a generated load) and images against each arm on a '
                    'local Ray Serve over HTTP, scores every answer by its stitch top-1, and writes DIR/serve.json, '
                    'serve.md, serve.png and latency.json. Latency runs from the scheduled arrival to the answer; a '
                    'late or failed request is an SLO miss.')
    p.add_argument('model', help='registered snnet name, hf-hub:ORG/REPO or local-dir:DIR')
    p.add_argument('--trace', help='CSV: first column the arrival time in ms; an optional deadline_ms column')
    p.add_argument('--load', help='poisson:RATE | ramp:R1,R2,...@PHASE_S | bursty:LOW,HIGH[,MEAN_LOW_S,MEAN_HIGH_S] '
                                  '(req/s; a seeded Markov-modulated Poisson process)')
    p.add_argument('--rate-scale', type=float, default=1.0, help='thin (<1) or repeat (>1) arrivals (default 1)')
    p.add_argument('--time-scale', type=float, default=1.0, help='compress time X times (default 1)')
    p.add_argument('--window', help='START_S:END_S of the trace to replay (shifted to start at 0)')
    p.add_argument('--duration', type=float, help='seconds of load (generated loads: default 60)')
    p.add_argument('--arms', help='comma list of fixed:ID, best-fixed, adaptive (default: every anchor, best-fixed '
                                  'and adaptive)')
    p.add_argument('--slo-ms', type=float, default=300.0, help='p95 latency SLO in ms (default 300)')
    p.add_argument('--slo-margin', type=float, default=0.2,
                   help="share of the SLO kept for what a replica cannot see (HTTP proxy, client; default 0.2)")
    p.add_argument('--hysteresis', type=float, default=0.2, help='controller: headroom to step up (default 0.2)')
    p.add_argument('--hold-s', type=float, default=1.0, help='controller: seconds between steps up (default 1)')
    p.add_argument('--replicas', type=int, default=1, help='model replicas (default 1)')
    p.add_argument('--threads', type=int, default=1, help='torch threads per replica (default 1)')
    p.add_argument('--max-batch-size', type=int, default=8, help='dynamic batching: largest batch (default 8)')
    p.add_argument('--batch-wait-ms', type=float, default=2.0, help='dynamic batching: longest wait (default 2)')
    p.add_argument('--accuracy-table', help="'official' (the authors' published per-config top-1) or a sweep.json / "
                                            "reference .jsonl (default: the model's stitch table)")
    p.add_argument('--latency-table', help='latency.json of an earlier run (or a sweep.json with latency_ms_b{n}) '
                                           'instead of profiling')
    p.add_argument('--stitches', help="stitches to serve: 'all' or ranges like '0-2,5' (default: the accuracy "
                                      'Pareto front); anchors and fixed arms are added')
    p.add_argument('--random-weights', action='store_true', help='serve random weights (latency studies)')
    p.add_argument('--profile-rounds', type=int, default=1, help='profiling rounds (default 1)')
    p.add_argument('--timeout-s', type=float, default=10.0, help='per-request client timeout (default 10)')
    p.add_argument('--simulate', action='store_true',
                   help='no server: each arm on a simulated clock from the latency table (a quick preview)')
    p.add_argument('--seed', type=int, default=0, help='arrivals, rate scaling and images (default 0)')
    p.add_argument('--output', default='out/serve-bench', help='output folder (default out/serve-bench)')
    p.set_defaults(func=_cmd_serve_bench)
