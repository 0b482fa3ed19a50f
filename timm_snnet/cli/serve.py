"""`timm-snnet serve MODEL`: an SN-Net over HTTP on Ray Serve (dynamic batching, optional load-adaptive stitch)."""
from __future__ import annotations

import argparse
import os
import sys

from .._serve import AUTH_ENV, MAX_QUEUE, REQUEST_TIMEOUT_S, build_app, load_latency_table, serve_forever
from ._args import existing_file, sweep_table


def _read_labels(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _cmd_serve(args: argparse.Namespace) -> int:
    # everything that can fail on the user's input (model, table, labels, port) fails here, before Ray starts
    app = build_app(
        args.model, replicas=args.replicas, slo_ms=args.slo_ms, stitch_id=args.stitch_id, stitches=args.stitches,
        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, threads=args.threads,
        latency_table=load_latency_table(args.latency_table) if args.latency_table else None,
        profile_rounds=args.profile_rounds, max_body_bytes=int(args.max_body_mb * (1 << 20)),
        labels=_read_labels(args.labels) if args.labels else None, controller=dict(margin=args.slo_margin),
        request_timeout_s=args.request_timeout_s, max_queue=args.max_queue)
    mode = f'adaptive, p95 SLO {args.slo_ms:g} ms' if args.slo_ms else 'fixed stitch'

    def ready() -> None:
        print(f'timm-snnet serve: {args.model} on http://{args.host}:{args.port} ({mode}, {args.replicas} '
              'replica(s)); Ctrl-C to stop', file=sys.stderr, flush=True)

    num_cpus = max(os.cpu_count() or 1, args.replicas * args.threads)
    serve_forever(app, host=args.host, port=args.port, num_cpus=num_cpus, ready=ready,
                  request_timeout_s=args.request_timeout_s, max_body_bytes=int(args.max_body_mb * (1 << 20)),
                  auth_token=args.auth_token)
    print('timm-snnet serve: stopped', file=sys.stderr, flush=True)
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        'serve', help='serve an SN-Net over HTTP on Ray Serve (needs timm-snnet[serve])',
        description='POST /predict (an image/png or image/jpeg body, or JSON {"image": "<base64>"}; budget fields '
                    'stitch_id, max_gflops, max_latency_ms, min_top1 as query parameters or JSON fields), '
                    'GET /stitches, GET /metrics, GET /health. Runs until SIGINT/SIGTERM.')
    p.add_argument('model', help='registered snnet name, hf-hub:ORG/REPO or local-dir:DIR')
    p.add_argument('--host', default='127.0.0.1',
                   help='address to listen on (default 127.0.0.1; any other needs a bearer token)')
    p.add_argument('--port', type=int, default=8000, help='port (default 8000)')
    p.add_argument('--replicas', type=int, default=1, help='model replicas (default 1)')
    p.add_argument('--slo-ms', type=float, help='adaptive mode: p95 latency target; the stitch follows the load')
    p.add_argument('--slo-margin', type=float, default=0.2,
                   help='share of the SLO kept for what the replica cannot see (HTTP proxy, network; default 0.2)')
    p.add_argument('--stitch-id', type=int, help="fixed stitch without a budget (default: the model's own)")
    p.add_argument('--stitches', help="stitches to serve and profile: 'all' or ranges like '0-2,5' (default: the "
                                      'GFLOPs/top-1 Pareto front of the stitch table)')
    p.add_argument('--max-batch-size', type=int, default=32, help='dynamic batching: largest batch (default 32)')
    p.add_argument('--batch-wait-ms', type=float, default=2.0, help='dynamic batching: longest wait (default 2)')
    p.add_argument('--threads', type=int, default=1, help='torch threads (and Ray CPUs) per replica (default 1)')
    p.add_argument('--latency-table', type=sweep_table,
                   help='sweep.json with latency_ms_b{n} rows (default: profile at start-up)')
    p.add_argument('--profile-rounds', type=int, default=3, help='start-up profiling rounds (default 3)')
    p.add_argument('--max-body-mb', type=float, default=10.0, help='largest request body in MiB (default 10)')
    p.add_argument('--request-timeout-s', type=float, default=REQUEST_TIMEOUT_S,
                   help='seconds a client gets for its headers, its body, and between requests; a connection that '
                        f'takes longer is closed (408 once its headers are in; default {REQUEST_TIMEOUT_S:g})')
    p.add_argument('--max-queue', type=int, default=MAX_QUEUE,
                   help='requests queued for busy replicas; past it, 503 with Retry-After at once '
                        f'(default {MAX_QUEUE})')
    p.add_argument('--auth-token', default=os.environ.get(AUTH_ENV),
                   help=f'require Authorization: Bearer TOKEN on every route but /health (default: ${AUTH_ENV}, '
                        'which keeps it out of the process list)')
    p.add_argument('--labels', type=existing_file('a labels file'),
                   help='text file with one class name per line (default: the model config, else ids)')
    p.set_defaults(func=_cmd_serve)
