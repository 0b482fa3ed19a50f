"""SN-Net's FLOPs-accuracy curve on real images: Fashion-MNIST, three DeiT-style anchors, one `snnet_deit_tsb`.

Steps (each logged with its wall time):
  1. train three anchors (timm VisionTransformer, depth 12, three widths) standalone;
  2. build `snnet_deit_tsb` from them (same engine, same entry point), load the anchors' weights;
  3. least-squares init of the stitching layers from 100 training images;
  4. train the SN-Net with stitch sampling, once per variant (uniform, and the anti-forgetting remedies);
  5. sweep every stitch on the test set with `timm_snnet.sweep`, plot the Pareto front, write report.md.

    python examples/fashion_mnist/reproduce.py                    # full run (see RESULTS.md for its numbers)
    python examples/fashion_mnist/reproduce.py --quick            # the same pipeline in a few minutes
    python examples/fashion_mnist/reproduce.py --data-dir DIR     # IDX files (gz or not) from another folder
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import struct
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import timm_snnet  # noqa: F401  (registers snnet_deit_tsb)
from timm_snnet.models import DEIT_TSB
from timm_snnet.selection import pareto_front
from timm_snnet.sweep import ROW_KEYS, evaluate, measure_latency, plot_sweep, write_results

DEFAULT_DATA_DIR = Path('/usr/share/datasets/fashion-mnist')  # Debian package `dataset-fashion-mnist`
FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics

# variant -> (share of training steps that go to the anchors, lr multiplier of the stitching layers)
VARIANTS = {
    'uniform': (None, 1.0),  # the paper's recipe: every config equally likely
    'anchor_boost': (0.3, 1.0),  # the three anchors get 30% of the steps (10% each instead of 1.4%)
    'stitch_lr': (None, 10.0),  # stitching layers at 10x the learning rate (the paper's Swin recipe)
    'both': (0.3, 10.0),
}


# --- data ----------------------------------------------------------------------------------------------------------
def _find(data_dir: Path, name: str) -> Path:
    for candidate in (data_dir / name, data_dir / f'{name}.gz'):
        if candidate.is_file():
            return candidate
    wanted = ', '.join(f'{a}[.gz]' for pair in FILES.values() for a in pair)
    hint = ('install it with `apt-get install dataset-fashion-mnist` (or run `make reproduce`, which does)'
            if data_dir == DEFAULT_DATA_DIR else 'pass --data-dir with the folder that holds them')
    raise FileNotFoundError(f'Fashion-MNIST file {name}[.gz] not found in {data_dir}; expected {wanted}: {hint}')


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (uint8 payload, as MNIST-style data sets ship it), gzip or plain, as a uint8 tensor."""
    raw = (gzip.open if path.suffix == '.gz' else open)(path, 'rb').read()
    zero, dtype, ndim = struct.unpack('>HBB', raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f'{path} is not a uint8 IDX file (magic {raw[:4].hex()})')
    shape = struct.unpack(f'>{ndim}I', raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise ValueError(f'{path} holds {data.size} values, its header says {shape}')
    return torch.from_numpy(data.reshape(shape).copy())


def load_split(data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of `train` or `test`."""
    images, labels = (read_idx(_find(Path(data_dir), name)) for name in FILES[split])
    if len(images) != len(labels):
        raise ValueError(f'{split}: {len(images)} images but {len(labels)} labels in {data_dir}')
    return images, labels.long()


def subset(data: tuple[torch.Tensor, torch.Tensor], n: Optional[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, class-mixed subset of `n` samples (all when n is None)."""
    images, labels = data
    if n is None or n >= len(images):
        return images, labels
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx], labels[idx]


def normalize(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def batches(data: tuple[torch.Tensor, torch.Tensor], batch_size: int,
            generator: Optional[torch.Generator] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized (B, 1, 28, 28) batches; shuffled with random horizontal flips when a generator is given."""
    images, labels = data
    order = torch.randperm(len(images), generator=generator) if generator is not None else torch.arange(len(images))
    for idx in order.split(batch_size):
        x = normalize(images[idx])
        if generator is not None:
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x[flip] = x[flip].flip(-1)
        yield x, labels[idx]


# --- models --------------------------------------------------------------------------------------------------------
def anchor_kwargs(widths: Sequence[int], patch_size: int) -> list[dict]:
    """Depth-12 DeiT anchors of the given widths (head dim 32)."""
    return [dict(patch_size=patch_size, embed_dim=w, depth=12, num_heads=max(1, w // 32)) for w in widths]


def model_kwargs(widths: Sequence[int], patch_size: int) -> dict:
    """`snnet_deit_tsb` kwargs for 28x28 grey images, 10 classes (JSON-able: recorded in sweep.json)."""
    return dict(anchor_kwargs=anchor_kwargs(widths, patch_size), img_size=28, in_chans=1, num_classes=10,
                pretrained_cfg_overlay=dict(mean=(MEAN,), std=(STD,), crop_pct=1.0, interpolation='bilinear'))


def create_anchor(index: int, widths: Sequence[int], patch_size: int) -> nn.Module:
    """Anchor `index` standalone: the same timm model SN-Net builds for `anchors[index]`."""
    return timm.create_model(DEIT_TSB[index], img_size=28, in_chans=1, num_classes=10,
                             **anchor_kwargs(widths, patch_size)[index])


def param_groups(model: nn.Module, lr: float, weight_decay: float, stitch_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: no decay on norms, biases and embeddings; stitching layers at `stitch_lr_scale` x lr."""
    skip = model.no_weight_decay() if hasattr(model, 'no_weight_decay') else set()
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        decay = p.ndim > 1 and name not in skip
        groups.setdefault((decay, name.startswith('stitch_layers.')), []).append(p)
    return [dict(params=ps, weight_decay=weight_decay if decay else 0.0, lr=lr * (stitch_lr_scale if stitch else 1))
            for (decay, stitch), ps in groups.items()]


def train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], epochs: float, batch_size: int,
          groups: list[dict], seed: int, log: Callable[[str], None], desc: str) -> float:
    """AdamW, 5% linear warm-up then cosine, label smoothing 0.1. Returns seconds."""
    steps_per_epoch = math.ceil(len(data[0]) / batch_size)
    total = max(1, round(epochs * steps_per_epoch))
    warmup = max(1, total // 20)
    opt = torch.optim.AdamW(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start, step, loss_sum = time.perf_counter(), 0, 0.0
    while step < total:
        for x, y in batches(data, batch_size, gen):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step, loss_sum = step + 1, loss_sum + loss.item()
            if step % max(1, total // 10) == 0 or step == total:
                log(f'  {desc}: step {step}/{total} loss {loss_sum / step:.3f} ({time.perf_counter() - start:.0f}s)')
            if step == total:
                break
    return time.perf_counter() - start


@torch.inference_mode()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch_size: int = 500) -> float:
    """Top-1 (percent) of a plain model."""
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches(data, batch_size))
    return 100.0 * correct / len(data[0])


# --- sweep and summary ---------------------------------------------------------------------------------------------
def sweep_rows(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch_size: int, latency_iters: int,
               log: Callable[[str], None]) -> list[dict]:
    """Every stitch through `timm_snnet.sweep`'s evaluate / measure_latency, as sweep.json rows."""
    loader = list(batches(data, batch_size))
    device = torch.device('cpu')
    rows = []
    for c in model.stitch_configs((1, 28, 28)):
        top1, top5 = evaluate(model, loader, device, c.id)
        row = dict(id=c.id, path=model.describe(c), gflops=round(c.gflops, 6), params=int(c.params),
                   top1=round(top1, 4), top5=round(top5, 4))
        if latency_iters:
            row['latency_ms_b1'] = round(measure_latency(model, (1, 28, 28), 1, device, 2, latency_iters), 4)
            row['latency_ms_bN'] = round(measure_latency(model, (1, 28, 28), batch_size, device, 2, latency_iters), 4)
        rows.append(row)
        if c.id % 10 == 0:
            log(f'  sweep: config {c.id}/{model.num_configs - 1} top-1 {top1:.2f}')
    return rows


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(v: Sequence[float]) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind='stable')
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # average ties
            tie = v == value
            r[tie] = r[tie].mean()
        return r
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def summarize(rows: list[dict], num_anchors: int) -> dict:
    """Spearman(GFLOPs, top-1), stitches inside / above / below the anchors' top-1 band, Pareto front."""
    anchors = [r['top1'] for r in rows[:num_anchors]]
    lo, hi = min(anchors), max(anchors)
    stitched = [r['top1'] for r in rows[num_anchors:]]
    return dict(
        spearman=spearman([r['gflops'] for r in rows], [r['top1'] for r in rows]),
        band=[lo, hi], in_band=sum(lo <= a <= hi for a in stitched), above_band=sum(a > hi for a in stitched),
        below_band=sum(a < lo for a in stitched), num_stitches=len(stitched),
        mean_stitch_top1=float(np.mean(stitched)), pareto=pareto_front(rows, 'gflops', 'top1'),
        anchor_top1=anchors)


# --- settings and pipeline -----------------------------------------------------------------------------------------
@dataclass
class Setting:
    widths: tuple[int, ...] = (32, 64, 128)
    patch_size: int = 7
    anchor_epochs: float = 1.0
    snnet_epochs: float = 1.0
    batch_size: int = 128
    anchor_lr: float = 1e-3
    snnet_lr: float = 3e-4
    weight_decay: float = 0.05
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None  # the main (uniform) sweep; None: all 10k test images
    variant_test_subset: Optional[int] = 2000  # the other variants' sweeps (and the LS-init-only sweep)
    variants: tuple[str, ...] = tuple(VARIANTS)  # the first gets the main (full test set) sweep
    ls_images: int = 100
    latency_iters: int = 5


QUICK = dict(anchor_epochs=1.0, snnet_epochs=1.0, train_subset=6000, test_subset=1000, variant_test_subset=500,
             variants=('uniform', 'both'), latency_iters=1)


def sampling_weights(num_configs: int, num_anchors: int, anchor_share: Optional[float]) -> Optional[list[float]]:
    """Per-config weights giving the anchors `anchor_share` of the steps in all (None: uniform)."""
    if anchor_share is None:
        return None
    stitches = num_configs - num_anchors
    return [anchor_share / num_anchors] * num_anchors + [(1 - anchor_share) / stitches] * stitches


def run(s: Setting, data_dir: Path, out: Path, seed: int, log: Callable[[str], None]) -> dict:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    train_data = subset(load_split(data_dir, 'train'), s.train_subset, seed)
    test_all = load_split(data_dir, 'test')
    test_data = subset(test_all, s.test_subset, seed)
    variant_test = subset(test_all, s.variant_test_subset, seed)
    log(f'data: {len(train_data[0])} train, {len(test_data[0])} test images from {data_dir}')
    out.mkdir(parents=True, exist_ok=True)

    # 1. anchors, standalone
    torch.manual_seed(seed)
    anchors, standalone = [], []
    for i, width in enumerate(s.widths):
        model = create_anchor(i, s.widths, s.patch_size)
        timings[f'anchor{i}_train'] = train(model, train_data, s.anchor_epochs, s.batch_size,
                                            param_groups(model, s.anchor_lr, s.weight_decay), seed + i, log,
                                            f'anchor {i} (width {width})')
        standalone.append(accuracy(model, test_data))
        log(f'anchor {i} (width {width}): standalone top-1 {standalone[-1]:.2f} on {len(test_data[0])} test images')
        anchors.append(model)

    # 2. SN-Net from the standalone anchors, 3. least-squares init
    kwargs = model_kwargs(s.widths, s.patch_size)
    snnet = timm.create_model('snnet_deit_tsb', stitch_seed=seed, **kwargs)
    for i, model in enumerate(anchors):
        snnet.anchors[i].load_state_dict(model.state_dict())
    start = time.perf_counter()
    calib = next(batches(subset(train_data, s.ls_images, seed + 100), s.ls_images))[0]
    snnet.init_stitching_layers(calib, num_images=s.ls_images, progress=False)
    timings['ls_init'] = time.perf_counter() - start
    init_state = copy.deepcopy(snnet.state_dict())
    num_anchors = len(s.widths)

    results = dict(setting=asdict(s), seed=seed, model='snnet_deit_tsb', model_kwargs=kwargs, standalone=standalone,
                   num_configs=snnet.num_configs, variants={})
    start = time.perf_counter()
    rows = sweep_rows(snnet, variant_test, s.batch_size, 0, log)
    timings['sweep_ls_init'] = time.perf_counter() - start
    results['ls_init'] = dict(rows=rows, test_images=len(variant_test[0]), **summarize(rows, num_anchors))
    log(f'LS init only: anchors {results["ls_init"]["anchor_top1"]}, mean stitch top-1 '
        f'{results["ls_init"]["mean_stitch_top1"]:.2f} on {len(variant_test[0])} test images')

    # 4. SN-Net training per variant, 5. sweep
    for name in s.variants:
        anchor_share, stitch_lr_scale = VARIANTS[name]
        snnet.load_state_dict(init_state)  # also restarts the stitch sequence (sample_step 0): same draws of u
        snnet.set_sampling_weights(sampling_weights(snnet.num_configs, num_anchors, anchor_share))
        groups = param_groups(snnet, s.snnet_lr, s.weight_decay, stitch_lr_scale)
        timings[f'{name}_train'] = train(snnet, train_data, s.snnet_epochs, s.batch_size, groups, seed + 10, log,
                                         f'SN-Net {name}')
        main = name == s.variants[0]
        data = test_data if main else variant_test
        start = time.perf_counter()
        rows = sweep_rows(snnet, data, s.batch_size, s.latency_iters if main else 0, log)
        timings[f'{name}_sweep'] = time.perf_counter() - start
        summary = summarize(rows, num_anchors)
        results['variants'][name] = dict(rows=rows, test_images=len(data[0]), anchor_share=anchor_share,
                                         stitch_lr_scale=stitch_lr_scale, **summary)
        log(f'{name}: anchors {[round(a, 2) for a in summary["anchor_top1"]]}, spearman {summary["spearman"]:.3f}, '
            f'{summary["in_band"]}/{summary["num_stitches"]} stitches in band')
        if main:
            save_file({k: v.contiguous() for k, v in snnet.state_dict().items()}, str(out / 'snnet.safetensors'))
        where = out if main else out / name
        write_sweep(where, name, kwargs, rows, s.batch_size, s.latency_iters if main else 0, len(data[0]), num_anchors,
                    out / 'snnet.safetensors' if main else None)
        plot_sweep(where / 'sweep.json', out / ('pareto.png' if main else f'pareto_{name}.png'))
        if main and data is not variant_test:  # the main variant on the variants' test subset too, for comparison
            sub = sweep_rows(snnet, variant_test, s.batch_size, 0, log)
            results['variants'][name]['subset'] = dict(rows=sub, test_images=len(variant_test[0]),
                                                       **summarize(sub, num_anchors))

    timings['total'] = time.perf_counter() - t0
    results['timings'] = timings
    (out / 'results.json').write_text(json.dumps(results, indent=1) + '\n')
    (out / 'report.md').write_text(report(results))
    log(f'done in {timings["total"]:.0f}s: {out / "report.md"}, {out / "pareto.png"}, {out / "sweep.json"}')
    return results


def write_sweep(out: Path, variant: str, kwargs: dict, rows: list[dict], batch_size: int, latency_iters: int,
                num_images: int, num_anchors: int, checkpoint: Optional[Path] = None) -> None:
    """OUT/sweep.json and OUT/sweep.csv in `timm-snnet sweep`'s format (so `timm-snnet plot` and `select` read it)."""
    header = dict(model='snnet_deit_tsb', model_kwargs=kwargs, variant=variant,
                  checkpoint=dict(path=str(checkpoint.resolve()) if checkpoint else None, use_ema=False),
                  data=dict(root='fashion-mnist', split='test', num_images=num_images, num_classes=10),
                  transforms=dict(input_size=[1, 28, 28], mean=[MEAN], std=[STD], eval='ToTensor, Normalize'),
                  device='cpu', device_name=f'cpu ({torch.get_num_threads()} threads)', batch_size=batch_size,
                  latency=dict(warmup=2, iters=latency_iters, stat='median'), anchors=list(range(num_anchors)))
    write_results(out, {**header, 'rows': [{k: r.get(k) for k in ROW_KEYS} for r in rows]})


def report(r: dict) -> str:
    """report.md: anchors standalone vs in the SN-Net, per-variant summary, every stitch's top-1."""
    s, names = r['setting'], ('Ti', 'S', 'B')
    main_name = s['variants'][0]
    main = r['variants'][main_name]
    lines = [
        f'# Fashion-MNIST SN-Net run (seed {r["seed"]})', '',
        f'Anchors: DeiT (timm VisionTransformer), depth 12, widths {s["widths"]}, patch {s["patch_size"]} on 28x28, '
        f'{s["anchor_epochs"]} epochs standalone; SN-Net: {r["num_configs"]} configs, LS init from {s["ls_images"]} '
        f'images, {s["snnet_epochs"]} epochs per variant. Train images: {s["train_subset"] or 60000}.', '',
        '## Anchors: standalone vs inside the SN-Net (top-1 %)', '',
        f'Standalone and `{main_name}` on {main["test_images"]} test images; other variants on '
        f'{r["ls_init"]["test_images"]}.', '',
        '| anchor | GFLOPs | standalone | LS init only | ' + ' | '.join(s['variants']) + ' |',
        '|---|---|---|---|' + '---|' * len(s['variants']),
    ]
    for i, acc in enumerate(r['standalone']):
        cells = [f'{r["variants"][v]["anchor_top1"][i]:.2f}' for v in s['variants']]
        lines.append(f'| {names[i]} (width {s["widths"][i]}) | {main["rows"][i]["gflops"]:.4f} | {acc:.2f} | '
                     f'{r["ls_init"]["anchor_top1"][i]:.2f} | ' + ' | '.join(cells) + ' |')
    lines += ['', '## Variants', '',
              '| variant | anchor share | stitch lr x | test images | anchors (top-1) | mean stitch top-1 | '
              'Spearman(GFLOPs, top-1) | stitches in anchor band | above | below |',
              '|---|---|---|---|---|---|---|---|---|---|']
    entries = [('LS init only', None, r['ls_init'])] + [(v, v, r['variants'][v]) for v in s['variants']]
    if 'subset' in main:
        entries.insert(2, (f'{main_name} (subset)', main_name, main['subset']))
    for label, v, e in entries:
        share, lr = (VARIANTS[v] if v else ('-', '-'))
        lines.append(f'| {label} | {share if share is not None else "uniform"} | {lr} | {e["test_images"]} | '
                     f'{", ".join(f"{a:.2f}" for a in e["anchor_top1"])} | {e["mean_stitch_top1"]:.2f} | '
                     f'{e["spearman"]:.3f} | {e["in_band"]}/{e["num_stitches"]} | {e["above_band"]} | '
                     f'{e["below_band"]} |')
    lines += ['', f'## Every config (`{main_name}`, {main["test_images"]} test images)', '',
              f'Pareto front (ids): {main["pareto"]}', '',
              '| id | path | MFLOPs | params (k) | top-1 | top-5 | latency b1 (ms) | Pareto |',
              '|---|---|---|---|---|---|---|---|']
    for row in main['rows']:
        lines.append(f'| {row["id"]} | {row["path"]} | {1e3 * row["gflops"]:.2f} | {row["params"] / 1e3:.1f} | '
                     f'{row["top1"]:.2f} | {row["top5"]:.2f} | {row.get("latency_ms_b1", float("nan")):.2f} | '
                     f'{"*" if row["id"] in main["pareto"] else ""} |')
    lines += ['', '## Wall time (s)', '', '| step | seconds |', '|---|---|']
    lines += [f'| {k} | {v:.0f} |' for k, v in r['timings'].items()]
    return '\n'.join(lines) + '\n'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='small subsets and one epoch: the pipeline in minutes')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--data-dir', type=Path, default=DEFAULT_DATA_DIR, help='folder with the four IDX files')
    p.add_argument('--output', type=Path, default=Path('out/fashion_mnist'))
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads (default 1: on a shared 2-core machine, 2 threads stall on each other)')
    for f in fields(Setting):  # every setting can be overridden, e.g. --train-subset 512 --variants uniform
        kind = {int: int, float: float}.get(type(f.default))
        if f.name in ('widths', 'variants'):
            p.add_argument(f'--{f.name.replace("_", "-")}', default=None, help=f'comma list (default {f.default})')
        else:
            p.add_argument(f'--{f.name.replace("_", "-")}', type=kind or int, default=None,
                           help=f'default {f.default}')
    return p.parse_args(argv)


def setting_from(args: argparse.Namespace) -> Setting:
    values = dict(QUICK) if args.quick else {}
    for f in fields(Setting):
        v = getattr(args, f.name)
        if v is None:
            continue
        if f.name == 'widths':
            v = tuple(int(w) for w in v.split(','))
        elif f.name == 'variants':
            v = tuple(v.split(','))
            unknown = set(v) - set(VARIANTS)
            if unknown:
                raise SystemExit(f'unknown variants {sorted(unknown)}; choose from {", ".join(VARIANTS)}')
        values[f.name] = v
    return Setting(**values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setting = setting_from(args)
    if len(setting.widths) != len(DEIT_TSB):
        raise SystemExit(f'--widths needs {len(DEIT_TSB)} values (the three anchors), got {setting.widths}')
    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        run(setting, args.data_dir, args.output, args.seed, log)
    except FileNotFoundError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
