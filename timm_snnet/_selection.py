"""Pure helpers over stitch tables (lists of row dicts): stitch ranges, Pareto fronts and budget selection.

A row has at least `id`; sweep rows also carry `gflops`, `params`, `top1`, `top5`, `latency_ms_b1`, `latency_ms_bN`.
No torch here, so the rules are cheap to test.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

__all__ = ['LATENCY_KEYS', 'parse_stitches', 'pareto_front', 'select_stitch']

LATENCY_KEYS = {'b1': 'latency_ms_b1', 'bN': 'latency_ms_bN'}


def parse_stitches(spec: str, num_configs: int) -> list[int]:
    """Config ids from `all`, `7`, `0-70` or a comma list of those (`0-2,5,9-12`), sorted and unique."""
    valid = f'valid ids are 0..{num_configs - 1}'
    usage = f"use e.g. 'all', '0-{num_configs - 1}', '3' or '0-2,5,9'; {valid}"
    text = str(spec).strip().lower()
    if text == 'all':
        return list(range(num_configs))
    ids: set[int] = set()
    for part in text.split(','):
        lo, sep, hi = part.strip().partition('-')
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f'bad stitch range {spec!r}: {usage}') from None
        if a > b:
            raise ValueError(f'bad stitch range {spec!r}: {a}-{b} runs backwards; {usage}')
        if a < 0 or b >= num_configs:
            raise ValueError(f'stitch range {spec!r} is out of range: {valid}')
        ids.update(range(a, b + 1))
    return sorted(ids)


def _value(row: dict, key: str) -> Optional[float]:
    v = row.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def pareto_front(rows: Sequence[dict], x: str = 'gflops', y: str = 'top1') -> list[int]:
    """Ids of the rows no other row beats (lower or equal `x` and higher `y`), by ascending `x`."""
    points = sorted((_value(r, x), -_value(r, y), r['id']) for r in rows
                    if _value(r, x) is not None and _value(r, y) is not None)
    front, best = [], -math.inf
    for _, neg_y, k in points:
        if -neg_y > best:
            front.append(k)
            best = -neg_y
    return front


def _check_budget(name: str, value: Optional[float]) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)):
        raise ValueError(f'{name} must be a number, got {value!r}')
    if value is not None and name != 'min_top1' and value <= 0:
        raise ValueError(f'{name} must be positive, got {value}')


def select_stitch(
        rows: Sequence[dict],
        max_gflops: Optional[float] = None,
        max_latency_ms: Optional[float] = None,
        min_top1: Optional[float] = None,
        latency: str = 'b1',
) -> int:
    """Best config id within the budget.

    With measured rows (every row has `top1`), best is the highest top-1 (ties: fewer GFLOPs, then lower id).
    Without accuracies it is the largest-FLOPs config within budget (ties: lower id).
    `latency` picks the latency column for `max_latency_ms`: `'b1'` (batch 1) or `'bN'` (the sweep's batch).
    """
    for name, value in (('max_gflops', max_gflops), ('max_latency_ms', max_latency_ms), ('min_top1', min_top1)):
        _check_budget(name, value)
    if latency not in LATENCY_KEYS:
        raise ValueError(f"latency must be one of {sorted(LATENCY_KEYS)}, got {latency!r}")
    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError('the stitch table is empty: nothing to select from')
    lat_key = LATENCY_KEYS[latency]
    measured = all(_value(r, 'top1') is not None for r in rows)
    needs: list[tuple[str, str, Optional[float], Any]] = [
        ('max_gflops', 'gflops', max_gflops, lambda v, b: v <= b),
        ('max_latency_ms', lat_key, max_latency_ms, lambda v, b: v <= b),
        ('min_top1', 'top1', min_top1, lambda v, b: v >= b),
    ]
    for name, key, bound, _ in needs:
        missing = [r.get('id') for r in rows if _value(r, key) is None]
        if bound is not None and missing:
            hint = ' (run `timm-snnet sweep` to measure it)' if key != 'gflops' else ''
            raise ValueError(f'{name} needs `{key}` in every row of the stitch table; rows {missing[:5]} '
                             f'have none{hint}')
    if not measured and _value(rows[0], 'gflops') is None:
        raise ValueError('the stitch table has neither `top1` nor `gflops`: cannot rank configs')
    fits = [r for r in rows if all(bound is None or ok(_value(r, key), bound) for _, key, bound, ok in needs)]
    if not fits:
        limits = []
        for name, key, bound, _ in needs:
            if bound is None:
                continue
            values = [(_value(r, key), r['id']) for r in rows]
            best = max(values) if name == 'min_top1' else min(values)
            limits.append(f'{name}={bound} (the {"best" if name == "min_top1" else "lowest"} {key} in the table '
                          f'is {best[0]:g}, config {best[1]})')
        raise ValueError(f'no config fits {" and ".join(limits)}; relax the budget')
    if measured:
        best = max(fits, key=lambda r: (_value(r, 'top1'), -(_value(r, 'gflops') or 0.0), -r['id']))
    else:
        best = max(fits, key=lambda r: (_value(r, 'gflops'), -r['id']))
    return int(best['id'])
