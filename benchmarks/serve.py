"""`make serve-bench`: `timm-snnet serve-bench` on the shipped Fashion-MNIST SN-Net, a Poisson load ramping up and down.

Every anchor, `best-fixed` and the load-adaptive server replay the same arrivals and images on a local Ray Serve
(127.0.0.1 only); results go to benchmarks/results/serve.{json,md,png}. The full-size DeiT run is in
docs/serving.md.

    python -m benchmarks.serve [--quick] [--slo-ms 60] [--rates 15,30,45,60,45,30,15] [--phase-s 6]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from timm_snnet.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / 'examples' / 'fashion_mnist' / 'model'
RESULTS = Path(__file__).resolve().parent / 'results'


def command(args: argparse.Namespace) -> list[str]:
    """The `timm-snnet serve-bench` command line this benchmark runs."""
    phase_s = 2.0 if args.quick else args.phase_s
    return ['serve-bench', args.model, '--load', f'ramp:{args.rates}@{phase_s:g}', '--slo-ms', f'{args.slo_ms:g}',
            '--slo-margin', f'{args.slo_margin:g}', '--max-batch-size', str(args.max_batch_size),
            '--profile-rounds', '1' if args.quick else str(args.profile_rounds), '--seed', str(args.seed),
            '--output', str(args.output)]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default=f'local-dir:{MODEL_DIR}')
    p.add_argument('--slo-ms', type=float, default=60.0)
    p.add_argument('--slo-margin', type=float, default=0.35, help="share of the SLO the controller keeps for the "
                                                                   "proxy and client overhead")
    p.add_argument('--rates', default='15,30,45,60,45,30,15', help='offered load per phase (req/s)')
    p.add_argument('--phase-s', type=float, default=6.0)
    p.add_argument('--max-batch-size', type=int, default=32)
    p.add_argument('--profile-rounds', type=int, default=3)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true', help='short phases (2 s) and one profiling round')
    p.add_argument('--output', type=Path, default=RESULTS)
    return cli(command(p.parse_args(argv)))


if __name__ == '__main__':
    raise SystemExit(main())
