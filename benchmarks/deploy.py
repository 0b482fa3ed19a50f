"""B7-B9 (`make bench`): one exported stitch against the SN-Net it came from, for Ti, a Ti -> S and an S -> B stitch.

- B7: peak memory to load (timm `local-dir:`) and run one batch-1 forward: exported stitch / full SN-Net.
- B8: onnxruntime (CPU, same thread count) / eager PyTorch latency of the exported stitch, batch 1 and 8.
- B9: torch.compile (inductor) / eager latency of the exported stitch, batch 1 and 8.

Weights are random (memory and time do not depend on them). Timing reuses `benchmarks.common` (torch.utils.benchmark,
interleaved rounds, the compute thread's CPU time with one thread; onnxruntime with one intra-op thread runs in the
calling thread, so the same clock applies).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

import timm
import torch
from timm.models import save_for_hf

import timm_snnet  # noqa: F401  (registers the models)
from timm_snnet import check_onnx, export_onnx, save_snnet

from .common import Options, create, images, inference, paired, ratio

MODEL = 'snnet_deit_tsb'


def deploy_ids(model: torch.nn.Module) -> dict[str, int]:
    """The smallest anchor and the middle stitch of the first two anchor pairs (Ti, Ti -> S, S -> B for DeiT)."""
    configs = model.stitch_configs()
    names = model.anchor_names
    out = {names[0]: 0}
    for front, back in ((0, 1), (1, 2)):
        ids = [c.id for c in configs if (c.front, c.back) == (front, back) and not c.is_anchor]
        out[f'{names[front]} -> {names[back]}'] = ids[len(ids) // 2]
    return out


# --- B7 ------------------------------------------------------------------------------------------------------------
def _peak_child(folder: str, stitch: Optional[int]) -> None:
    """In a fresh process: reset the RSS peak after the imports, load `local-dir:folder`, run one forward."""
    torch.set_num_threads(1)
    Path('/proc/self/clear_refs').write_text('5')
    base = _status_kib('VmRSS')
    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = images(model, 1)
    with torch.inference_mode():
        model(x) if stitch is None else model(x, stitch_id=stitch)
    print(json.dumps(dict(peak_mib=(_status_kib('VmHWM') - base) / 1024)))


def _status_kib(key: str) -> int:
    line = next(x for x in Path('/proc/self/status').read_text().splitlines() if x.startswith(key + ':'))
    return int(line.split()[1])


def _peak(folder: Path, stitch: Optional[int] = None) -> float:
    cmd = [sys.executable, '-m', 'benchmarks.deploy', '--peak-load', str(folder)]
    cmd += ['--stitch', str(stitch)] if stitch is not None else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])['peak_mib']


def b7_memory(model: torch.nn.Module, ids: dict[str, int], tmp: Path) -> list[dict]:
    snnet_dir = save_snnet(model, tmp / 'snnet', readme=False)
    rows = []
    for label, k in ids.items():
        stitch = model.export_stitch(k)
        save_for_hf(stitch, tmp / f'stitch{k}', safe_serialization=True)
        snnet_mib, stitch_mib = _peak(snnet_dir, k), _peak(tmp / f'stitch{k}')
        params = sum(p.numel() for p in stitch.parameters())
        rows.append(dict(label=label, id=k, path=model.describe(model.stitch_configs()[k]), params=params,
                         param_mib=params * 4 / 2**20, stitch_peak_mib=stitch_mib, snnet_peak_mib=snnet_mib,
                         ratio=stitch_mib / snnet_mib, param_ratio=params / sum(p.numel() for p in model.parameters())))
    return rows


# --- B8, B9 --------------------------------------------------------------------------------------------------------
def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def b8_onnx(model: torch.nn.Module, ids: dict[str, int], opts: Options, tmp: Path) -> list[dict]:
    rows = []
    for label, k in ids.items():
        stitch = model.export_stitch(k).eval()
        path = export_onnx(stitch, tmp / f'stitch{k}.onnx')
        session = _ort_session(path, opts.threads)
        for batch in (1, 8):
            x = images(model, batch)
            feed = {'input': x.numpy()}
            fns = dict(ort=partial(session.run, None, feed), eager=inference(partial(stitch, x)))
            t = paired(fns, opts.rounds, opts.threads)
            rows.append(dict(label=label, id=k, batch=batch, ort_ms=1e3 * statistics.median(t['ort']),
                             eager_ms=1e3 * statistics.median(t['eager']), ratio=ratio(t['ort'], t['eager']),
                             max_abs_diff=check_onnx(path, stitch, x)))
    return rows


def b9_compile(model: torch.nn.Module, ids: dict[str, int], opts: Options) -> list[dict]:
    rows = []
    for label, k in ids.items():
        stitch = model.export_stitch(k).eval()
        compiled = torch.compile(stitch)
        for batch in (1, 8):
            x = images(model, batch)
            start = time.perf_counter()
            with torch.inference_mode():
                diff = float((compiled(x) - stitch(x)).abs().max())  # the first call compiles
            compile_s = time.perf_counter() - start
            fns = dict(compiled=inference(partial(compiled, x)), eager=inference(partial(stitch, x)))
            t = paired(fns, opts.rounds, opts.threads)
            rows.append(dict(label=label, id=k, batch=batch, compiled_ms=1e3 * statistics.median(t['compiled']),
                             eager_ms=1e3 * statistics.median(t['eager']), ratio=ratio(t['compiled'], t['eager']),
                             compile_s=compile_s, max_abs_diff=diff))
    return rows


def run_deploy(opts: Options, log) -> dict[str, Any]:
    """B7-B9 on snnet_deit_tsb (random weights) at the options' input size."""
    torch.manual_seed(0)
    model = create(MODEL, opts)
    ids = deploy_ids(model)
    if opts.model_kwargs:  # --smoke: each measure once, on one stitch (anchor Ti, then Ti -> S)
        ids = dict(list(ids.items())[1:2])
    out: dict[str, Any] = dict(model=MODEL, ids=ids)
    with tempfile.TemporaryDirectory() as tmp:
        log('B7 exported stitch vs SN-Net peak memory')
        out['B7'] = b7_memory(model, ids, Path(tmp))
        log('B8 onnxruntime vs eager')
        out['B8'] = b8_onnx(model, ids, opts, Path(tmp))
    log('B9 torch.compile vs eager')
    out['B9'] = b9_compile(model, ids, opts)
    return out


def summary_lines(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Markdown rows for the summary table, then a details table."""
    b7, b8, b9 = r['B7'], r['B8'], r['B9']
    lines = [
        '| B7 | peak memory to load (`local-dir:`) + one forward: exported stitch / full SN-Net | ' + ', '.join(
            f'{x["label"]} {x["stitch_peak_mib"]:.0f} / {x["snnet_peak_mib"]:.0f} MiB = {x["ratio"]:.3f}'
            for x in b7) + ' | - | |',
        '| B8 | onnxruntime / eager latency of the exported stitch, batch 1 and 8 | ' + ', '.join(
            f'{x["label"]} b{x["batch"]} {x["ratio"]:.2f}' for x in b8)
        + f'; max abs diff {max(x["max_abs_diff"] for x in b8):.1e} | - | |',
        '| B9 | torch.compile (inductor) / eager latency of the exported stitch, batch 1 and 8 | ' + ', '.join(
            f'{x["label"]} b{x["batch"]} {x["ratio"]:.2f}' for x in b9)
        + f'; max abs diff {max(x["max_abs_diff"] for x in b9):.1e} | - | |',
    ]
    details = ['', '| B7-B9 stitch | id | params (M) | B7 stitch / SN-Net MiB | batch | B8 ort / eager ms | '
               'B9 compiled / eager ms (compile s) |', '|---|---|---|---|---|---|---|']
    for x in b7:
        for batch in (1, 8):
            o = next(y for y in b8 if y['id'] == x['id'] and y['batch'] == batch)
            c = next(y for y in b9 if y['id'] == x['id'] and y['batch'] == batch)
            details.append(f'| {x["label"]} `{x["path"]}` | {x["id"]} | {x["params"] / 1e6:.1f} | '
                           f'{x["stitch_peak_mib"]:.0f} / {x["snnet_peak_mib"]:.0f} | {batch} | '
                           f'{o["ort_ms"]:.1f} / {o["eager_ms"]:.1f} | {c["compiled_ms"]:.1f} / {c["eager_ms"]:.1f} '
                           f'({c["compile_s"]:.0f}) |')
    return lines, details


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--peak-load', required=True, help='child mode: folder to load with local-dir:')
    p.add_argument('--stitch', type=int, default=None)
    args = p.parse_args(argv)
    _peak_child(args.peak_load, args.stitch)
    return 0


if __name__ == '__main__':
    sys.exit(main())
