"""The sweep results format: OUT/sweep.json and OUT/sweep.csv, one row per stitch (see `timm_snnet._evaluate`), and
the authors' reference files (one JSON object per line, with cfg_id, flops and acc1)."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Union

from ._inputs import describe_path
from ._utils import write_atomic

PathLike = Union[str, os.PathLike]


ROW_KEYS = ('id', 'path', 'gflops', 'params', 'top1', 'top5', 'latency_ms_b1', 'latency_ms_bN', 'top1_correct',
            'top5_correct', 'num_images')  # the counts behind top1 / top5 (a sweep's exact result)


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def load_sweep(path: PathLike) -> dict[str, Any]:
    """A sweep.json (or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / 'sweep.json'
    if not path.exists():
        raise FileNotFoundError(f'no sweep results at {path}: run `timm-snnet sweep ... --output DIR` first')
    expected = 'expected the sweep.json that `timm-snnet sweep` or `profile` writes, or its folder'
    try:
        result = json.loads(path.read_text())
    except (ValueError, OSError) as e:  # an image, a checkpoint, a folder named sweep.json, broken JSON
        what = describe_path(path)
        what = f'not valid JSON ({e})' if what in ('JSON text', 'a text file') else what
        raise ValueError(f'not a sweep table: {path} is {what}; {expected}') from e
    rows = result.get('rows') if isinstance(result, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get('id'), int) for r in rows):
        raise ValueError(f'not a sweep table: {path} has no "rows" list of {{"id": ...}} objects ({expected})')
    return result


def write_results(output_dir: PathLike, result: dict[str, Any]) -> None:
    """Write OUT/sweep.json and OUT/sweep.csv (rows by id), each replaced atomically (umask modes). Merging rows of
    concurrent writers is the caller's, under `timm_snnet._utils.folder_lock(OUT)` (see `timm_snnet._evaluate`)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {**result, 'rows': sorted(result['rows'], key=lambda r: r['id'])}
    write_atomic(out / 'sweep.json', json.dumps(result, indent=2) + '\n')
    table = io.StringIO(newline='')
    writer = csv.DictWriter(table, fieldnames=ROW_KEYS, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(result['rows'])
    write_atomic(out / 'sweep.csv', table.getvalue(), newline='')


def read_reference(path: PathLike) -> list[dict]:
    """Official points from a JSONL file (`cfg_id`, `flops` in FLOPs, `acc1`) as rows with `id`, `gflops`, `top1`."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ValueError(f'cannot read reference file {path}: {e}') from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            rows.append(dict(id=int(rec['cfg_id']), gflops=float(rec['flops']) / 1e9, top1=float(rec['acc1'])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f'{path}:{n}: expected a JSON object with cfg_id, flops and acc1 ({e})') from e
    return rows
