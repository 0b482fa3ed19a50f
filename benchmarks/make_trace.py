"""The production-shaped trace we ship (benchmarks/traces/), in the `t_ms,qos,deadline_ms` format of serving papers.

Public production traces (Azure Functions, those published with Proteus) cannot be downloaded here, so we ship our own:
`timm_snnet._servebench.production_trace`, a diurnal swing of 4 req/s +/- 50% over 300 s, times Markov-modulated
bursts to 24 req/s (spells of mean 45 s calm, 4 s burst), one QoS class with a 300 ms deadline; seeded.

    python -m benchmarks.make_trace [--duration 600] [--seed 0] [--deadline-ms 300]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from timm_snnet._servebench import production_trace, write_trace

TRACES = Path(__file__).resolve().parent / 'traces'


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--duration', type=float, default=600.0)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--deadline-ms', type=float, default=300.0)
    args = p.parse_args(argv)
    path = TRACES / f'production_{args.duration:g}s_seed{args.seed}.csv'
    arrivals = production_trace(args.duration, deadline_ms=args.deadline_ms, seed=args.seed)
    TRACES.mkdir(exist_ok=True)
    write_trace(path, arrivals)
    print(f'wrote {path}: {len(arrivals)} arrivals over {args.duration:g} s')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
