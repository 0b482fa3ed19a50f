"""SN-Net's FLOPs-accuracy curve on real images: Fashion-MNIST, three DeiT-style anchors, one `snnet_deit_tsb`.

Steps (each logged with its wall time; CPU times go to results.json):
  1. train three anchors (timm VisionTransformer, depth 12, widths 8 / 28 / 128: 3+ points apart) standalone, once:
     each is cached (`--anchor-cache`) and reused by every seed, variant and width choice;
  2. per run: build `snnet_deit_tsb` from them (same engine, same entry point), least-squares init of the stitching
     layers from 100 training images, then 6 epochs of SN-Net training with stitch sampling (the paper's optimizer
     semantics), distilled from the standalone largest anchor through timm's own `LogitDistillationTask` (what
     train.py runs for `--kd-model-name`); every run is cached in OUT/runs, so a stopped run resumes;
  3. the first variant runs with `--num-seeds` seeds, every other variant (uniform, ROS, ...) with the first seed;
  4. sweep every stitch on the test set with `timm_snnet._evaluate`, plot the Pareto fronts, write report.md with the
     seeds' mean and std, and OUT/model: the first run's SN-Net (fp16) with its stitch table, for `make demo`.

    python examples/fashion_mnist/reproduce.py                    # full run (see RESULTS.md for its numbers)
    python examples/fashion_mnist/reproduce.py --quick            # the same pipeline in a few minutes
    python examples/fashion_mnist/reproduce.py --study            # SN-Net epochs (1, 3, 6) x distillation, one seed
    python examples/fashion_mnist/reproduce.py --data-dir DIR     # IDX files (gz or not) from another folder
"""
from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import json
import math
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

import timm_snnet  # noqa: F401  (registers snnet_deit_tsb)
from timm_snnet import DEIT_TSB, ROW_KEYS, evaluate, measure_latency, pareto_front, plot_sweep, write_results

DEFAULT_DATA_DIR = Path('/usr/share/datasets/fashion-mnist')  # Debian package `dataset-fashion-mnist`
FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics

KD = ('none', 'teacher', 'inplace')
ROS_GAP = 0.003  # GFLOPs: ROS FLOPs groups of 3 MFLOPs over these anchors' 2.8-41 MFLOPs range
# variant -> (SN-Net sampling kwargs, lr multiplier of the stitching layers)
VARIANTS = {
    'uniform': ({}, 1.0),  # the paper's recipe: every config equally likely
    'anchor_boost': ({'anchor_share': 0.3}, 1.0),  # the three anchors get 30% of the steps (10% each, not 1.4%)
    'stitch_lr': ({}, 10.0),  # stitching layers at 10x the learning rate (the paper's Swin recipe)
    'both': ({'anchor_share': 0.3}, 10.0),
    'ros': ({'sampling': 'ros', 'flops_gap': ROS_GAP}, 1.0),  # SN-Netv2's resource-constrained sampling
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
    """Anchor `index` standalone: the same timm model SN-Net builds for `anchors[index]`, with this data's
    normalisation in its pretrained_cfg (timm's distillation reads it to feed a teacher)."""
    return timm.create_model(DEIT_TSB[index], img_size=28, in_chans=1, num_classes=10,
                             pretrained_cfg_overlay=dict(mean=(MEAN,), std=(STD,)),
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
          groups: list[dict], seed: int, log: Callable[[str], None], desc: str,
          task: Optional[nn.Module] = None) -> float:
    """AdamW, 5% linear warm-up then cosine, label smoothing 0.1; the loss is `task(x, y)['loss']` when a timm
    training task (e.g. `LogitDistillationTask`) is given. Returns seconds."""
    steps_per_epoch = math.ceil(len(data[0]) / batch_size)
    total = max(1, round(epochs * steps_per_epoch))
    warmup = max(1, total // 20)
    opt = torch.optim.AdamW(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    (task or model).train()
    start, step, loss_sum = time.perf_counter(), 0, 0.0
    while step < total:
        for x, y in batches(data, batch_size, gen):
            loss = task(x, y)['loss'] if task is not None else F.cross_entropy(model(x), y, label_smoothing=0.1)
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


class InplaceTeacher(nn.Module):
    """In-place distillation (slimmable networks, BigNAS): the SN-Net's largest anchor, run in the same step, teaches
    the sampled config. The SN-Net is held outside the module tree, so timm's task putting its teacher in eval mode
    leaves the student sampling."""

    def __init__(self, snnet: nn.Module):
        super().__init__()
        self.__dict__['snnet'] = snnet  # not a submodule
        self.pretrained_cfg = snnet.pretrained_cfg  # the same normalisation: timm feeds the input through unchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.snnet(x, stitch_id=len(self.snnet.anchors) - 1)


def distillation_task(s: Setting, kd: str, student: nn.Module, teacher: nn.Module) -> Optional[nn.Module]:
    """timm's own `LogitDistillationTask` (what train.py runs for `--kd-model-name`), or None for plain training.
    The loss is `task_weight * CE(student, label) + (1 - task_weight) * T^2 KL(teacher || student)`."""
    if kd == 'none':
        return None
    from timm.task import LogitDistillationTask

    teacher = InplaceTeacher(student) if kd == 'inplace' else teacher
    return LogitDistillationTask(student, teacher, criterion=nn.CrossEntropyLoss(label_smoothing=0.1),
                                 task_loss_weight=s.kd_task_weight, temperature=s.kd_temperature, verbose=False)


# --- sweep and summary ---------------------------------------------------------------------------------------------
def sweep_rows(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch_size: int, latency_iters: int,
               log: Callable[[str], None]) -> list[dict]:
    """Every stitch through `timm_snnet._evaluate`'s evaluate / measure_latency, as sweep.json rows."""
    loader = list(batches(data, batch_size))
    device = torch.device('cpu')
    rows = []
    for c in model.stitch_configs((1, 28, 28)):
        top1, top5 = evaluate(model, loader, device, c.id)
        row = dict(id=c.id, path=model.describe(c), gflops=round(c.gflops, 6), params=int(c.params),
                   top1=round(top1, 4), top5=round(top5, 4))
        if latency_iters:
            row.update(latency_row(model, c.id, batch_size, latency_iters))
        rows.append(row)
        if c.id % 10 == 0:
            log(f'  sweep: config {c.id}/{model.num_configs - 1} top-1 {top1:.2f}')
    return rows


def latency_row(model: nn.Module, stitch_id: int, batch_size: int, iters: int) -> dict:
    """Median latency (ms) of one stitch at batch 1 and `batch_size`."""
    model.set_stitch(stitch_id)
    return {f'latency_ms_{b}': round(measure_latency(model, (1, 28, 28), n, torch.device('cpu'), 2, iters), 4)
            for b, n in (('b1', 1), ('bN', batch_size))}


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


def summarize(rows: list[dict], num_anchors: int, pairs: Optional[dict[str, list[int]]] = None,
              standalone: Optional[Sequence[float]] = None) -> dict:
    """Spearman(GFLOPs, top-1) over all configs and per anchor pair (`pairs`: name -> config ids), stitches inside /
    above / below the anchors' top-1 band, the Pareto front, and each anchor's change from `standalone`."""
    anchors = [r['top1'] for r in rows[:num_anchors]]
    lo, hi = min(anchors), max(anchors)
    stitched = [r['top1'] for r in rows[num_anchors:]]
    by_id = {r['id']: r for r in rows}
    out = dict(
        spearman=spearman([r['gflops'] for r in rows], [r['top1'] for r in rows]),
        band=[lo, hi], in_band=sum(lo <= a <= hi for a in stitched), above_band=sum(a > hi for a in stitched),
        below_band=sum(a < lo for a in stitched), num_stitches=len(stitched),
        mean_stitch_top1=float(np.mean(stitched)), pareto=pareto_front(rows, 'gflops', 'top1'),
        anchor_top1=anchors)
    out['in_band_share'] = out['in_band'] / max(1, len(stitched))
    if pairs:
        out['spearman_pairs'] = {name: spearman([by_id[k]['gflops'] for k in ids], [by_id[k]['top1'] for k in ids])
                                 for name, ids in pairs.items()}
    if standalone is not None:
        out['anchor_change'] = [a - s for a, s in zip(anchors, standalone)]
    return out


def anchor_pairs(model: nn.Module, names: Sequence[str]) -> dict[str, list[int]]:
    """Config ids of each anchor pair: both anchors and every stitch between them (e.g. 'Ti->S')."""
    configs = model.stitch_configs((1, 28, 28))
    out: dict[str, list[int]] = {}
    for c in configs:
        if not c.is_anchor:
            out.setdefault(f'{names[c.front]}->{names[c.back]}', [c.front, c.back]).append(c.id)
    return out


def front_by_pair(pareto: Sequence[int], pairs: dict[str, list[int]], num_anchors: int) -> dict[str, list[int]]:
    """The stitches (not anchors) of a Pareto front, by anchor pair."""
    return {name: [k for k in pareto if k >= num_anchors and k in ids] for name, ids in pairs.items()}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def aggregate(summaries: Sequence[dict]) -> dict:
    """Mean and std over seeds of the numbers in `summarize`'s output."""
    n_anchors = len(summaries[0]['anchor_top1'])
    out = {key: mean_std([s[key] for s in summaries])
           for key in ('spearman', 'in_band_share', 'mean_stitch_top1')}
    out['anchor_top1'] = [mean_std([s['anchor_top1'][i] for s in summaries]) for i in range(n_anchors)]
    if 'anchor_change' in summaries[0]:
        out['anchor_change'] = [mean_std([s['anchor_change'][i] for s in summaries]) for i in range(n_anchors)]
    if 'spearman_pairs' in summaries[0]:
        out['spearman_pairs'] = {k: mean_std([s['spearman_pairs'][k] for s in summaries])
                                 for k in summaries[0]['spearman_pairs']}
    return out


def plot_seeds(runs: Sequence[dict], num_anchors: int, names: Sequence[str], title: str, output: Path) -> Path:
    """Top-1 against MFLOPs for every seed: all configs as faint points, each seed's Pareto front as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple')
    for i, run in enumerate(runs):
        rows, color = run['rows'], colors[i % len(colors)]
        ax.scatter([1e3 * r['gflops'] for r in rows[num_anchors:]], [r['top1'] for r in rows[num_anchors:]],
                   s=9, alpha=0.25, color=color)
        front = sorted((r for r in rows if r['id'] in run['pareto']), key=lambda r: r['gflops'])
        ax.plot([1e3 * r['gflops'] for r in front], [r['top1'] for r in front], '-o', ms=3, color=color,
                label=f'seed {run["seed"]}: Pareto front')
        ax.scatter([1e3 * r['gflops'] for r in rows[:num_anchors]], [r['top1'] for r in rows[:num_anchors]],
                   marker='*', s=120, color=color, edgecolor='black', zorder=3)
    for i, name in enumerate(names[:num_anchors]):
        r = runs[0]['rows'][i]
        ax.annotate(name, (1e3 * r['gflops'], r['top1']), textcoords='offset points', xytext=(6, -12))
    ax.set_xscale('log')  # anchors 0.2 to 41 MFLOPs: both pairs readable
    ax.set_xlabel('MFLOPs (fvcore, batch 1, log scale)')
    ax.set_ylabel('top-1 (%)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(output)
    return output


# --- settings and pipeline -----------------------------------------------------------------------------------------
@dataclass
class Setting:
    widths: tuple[int, ...] = (8, 28, 128)
    patch_size: int = 7
    anchor_epochs: float = 3.0
    snnet_epochs: float = 6.0  # the study's choice (RESULTS.md): 1 and 3 epochs leave the stitches behind
    kd: str = 'teacher'  # none | teacher (the standalone largest anchor) | inplace (the SN-Net's largest anchor)
    kd_task_weight: float = 0.5  # DeiT's hard-distillation alpha: half label loss, half teacher loss
    kd_temperature: float = 1.0
    study_epochs: tuple[float, ...] = (1.0, 3.0, 6.0)  # --study: SN-Net epochs x distillation, one seed
    study_kd: tuple[str, ...] = ('none', 'teacher')
    study_seeds: tuple[int, ...] = (0,)  # SN-Net seeds of the study runs (anchors and test images: --seed)
    batch_size: int = 128
    anchor_lr: float = 1e-3
    snnet_lr: float = 3e-4
    weight_decay: float = 0.05
    train_subset: Optional[int] = None
    test_subset: Optional[int] = 5000  # every sweep of the main variant (None: all 10k test images)
    variant_test_subset: Optional[int] = None  # the other variants' sweeps (None: the same images as the main one)
    variants: tuple[str, ...] = ('anchor_boost', 'uniform')  # the first runs with every seed, the rest once
    num_seeds: int = 3
    ls_images: int = 100
    latency_iters: int = 5
    demo_images: int = 1000  # test images shipped beside the demo model


QUICK = dict(anchor_epochs=3.0, snnet_epochs=1.0, train_subset=6000, test_subset=1000, variant_test_subset=500,
             num_seeds=2, latency_iters=1, demo_images=200)


def anchor_cache_key(s: Setting, index: int, seed: int) -> str:
    """Everything that decides one standalone anchor's weights (so anchors are shared across width choices)."""
    keys = ('patch_size', 'anchor_epochs', 'batch_size', 'anchor_lr', 'weight_decay', 'train_subset')
    blob = json.dumps(dict({k: getattr(s, k) for k in keys}, width=s.widths[index], index=index, seed=seed),
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def standalone_anchors(s: Setting, train_data, seed: int, cache: Path, log, timings: dict,
                       only: Optional[Sequence[int]] = None) -> list[nn.Module]:
    """The anchors trained standalone once; cached (safetensors) and reused across seeds, variants and widths."""
    anchors = []
    for i, width in enumerate(s.widths):
        if only is not None and i not in only:
            continue
        path = cache / f'anchor{i}_w{width}_{anchor_cache_key(s, i, seed)}.safetensors'
        model = create_anchor(i, s.widths, s.patch_size)
        if path.is_file():
            model.load_state_dict(load_file(str(path)))
            log(f'anchor {i} (width {width}): cached {path}')
        else:
            torch.manual_seed(seed + i)
            model = create_anchor(i, s.widths, s.patch_size)
            cpu = time.process_time()
            timings[f'anchor{i}_train'] = train(model, train_data, s.anchor_epochs, s.batch_size,
                                                param_groups(model, s.anchor_lr, s.weight_decay), seed + i, log,
                                                f'anchor {i} (width {width})')
            timings[f'anchor{i}_train_cpu'] = time.process_time() - cpu
            cache.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix('.tmp')
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
            tmp.replace(path)
        anchors.append(model)
    return anchors


def create_snnet(s: Setting, **kwargs) -> nn.Module:
    return timm.create_model('snnet_deit_tsb', **model_kwargs(s.widths, s.patch_size), **kwargs)


def train_snnet(s: Setting, variant: str, seed: int, anchors: Sequence[nn.Module], train_data,
                log, timings: dict, kd: Optional[str] = None, epochs: Optional[float] = None) -> nn.Module:
    """LS init from `ls_images` training images, then SN-Net training with the variant's sampling, distilled from
    the standalone largest anchor (`kd='teacher'`), the SN-Net's own (`'inplace'`) or not at all (`'none'`)."""
    kd = s.kd if kd is None else kd
    epochs = s.snnet_epochs if epochs is None else epochs
    sampling, stitch_lr_scale = VARIANTS[variant]
    snnet = create_snnet(s, stitch_seed=seed, **sampling)
    for i, model in enumerate(anchors):
        snnet.anchors[i].load_state_dict(model.state_dict())
    calib = next(batches(subset(train_data, s.ls_images, seed + 100), s.ls_images))[0]
    snnet.init_stitching_layers(calib, num_images=s.ls_images, progress=False)
    torch.manual_seed(seed)
    groups = param_groups(snnet, s.snnet_lr, s.weight_decay, stitch_lr_scale)
    task = distillation_task(s, kd, snnet, anchors[-1])
    timings[f'{variant}_seed{seed}_train'] = train(snnet, train_data, epochs, s.batch_size, groups, seed + 10,
                                                   log, f'SN-Net {variant} seed {seed} kd={kd} {epochs}ep', task)
    return snnet.eval()


def run_key(s: Setting, variant: str, kd: str, epochs: float, seed: int, test_images: int) -> str:
    """Everything that decides one SN-Net run's weights and sweep (its anchors included)."""
    keys = ('widths', 'patch_size', 'anchor_epochs', 'batch_size', 'anchor_lr', 'snnet_lr', 'weight_decay',
            'train_subset', 'ls_images', 'kd_task_weight', 'kd_temperature')
    blob = json.dumps(dict({k: getattr(s, k) for k in keys}, variant=variant, kd=kd if kd != 'none' else None,
                           epochs=epochs, seed=seed, test_images=test_images), sort_keys=True)
    return f'{variant}_kd-{kd}_{epochs:g}ep_seed{seed}_' + hashlib.sha256(blob.encode()).hexdigest()[:10]


def cached_run(s: Setting, variant: str, kd: str, epochs: float, seed: int, anchors: Sequence[nn.Module],
               train_data, test_data, latency_iters: int, runs: Path, log, timings: dict) -> dict:
    """Train and sweep one SN-Net, or read it back from `runs/` (rows, times and weights): runs are resumable and
    several processes can fill the same folder (one core each)."""
    key = run_key(s, variant, kd, epochs, seed, len(test_data[0]))
    path = runs / f'{key}.json'
    if path.is_file():
        log(f'{key}: cached {path}')
        return json.loads(path.read_text())
    cpu, wall = time.process_time(), time.perf_counter()
    snnet = train_snnet(s, variant, seed, anchors, train_data, log, timings, kd, epochs)
    train_cpu, train_wall = time.process_time() - cpu, time.perf_counter() - wall
    cpu, wall = time.process_time(), time.perf_counter()
    rows = sweep_rows(snnet, test_data, s.batch_size, latency_iters, log)
    result = dict(key=key, variant=variant, kd=kd, epochs=epochs, seed=seed, rows=rows,
                  test_images=len(test_data[0]), train_cpu_s=train_cpu, train_wall_s=train_wall,
                  sweep_cpu_s=time.process_time() - cpu, sweep_wall_s=time.perf_counter() - wall)
    runs.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in snnet.state_dict().items()}, str(runs / f'{key}.tmp'))
    (runs / f'{key}.tmp').replace(runs / f'{key}.safetensors')
    path.with_suffix('.tmp').write_text(json.dumps(result) + '\n')
    path.with_suffix('.tmp').replace(path)
    return result


def load_run_model(s: Setting, result: dict, runs: Path) -> nn.Module:
    """The trained SN-Net of a cached run."""
    snnet = create_snnet(s, **VARIANTS[result['variant']][0])
    snnet.load_state_dict(load_file(str(runs / f'{result["key"]}.safetensors')))
    return snnet.eval()


def prepare(s: Setting, data_dir: Path, out: Path, seed: int, anchor_cache: Optional[Path], timings: dict):
    """Data, the standalone anchors (cached) and their test top-1."""
    train_data = subset(load_split(data_dir, 'train'), s.train_subset, seed)
    test_all = load_split(data_dir, 'test')
    test_data = subset(test_all, s.test_subset, seed)
    log(f'data: {len(train_data[0])} train, {len(test_data[0])} test images from {data_dir}')
    out.mkdir(parents=True, exist_ok=True)
    anchors = standalone_anchors(s, train_data, seed, anchor_cache or out / 'anchors', log, timings)
    standalone = [accuracy(m, test_data) for m in anchors]
    gaps = [b - a for a, b in zip(standalone, standalone[1:])]
    log(f'standalone anchors: {[round(a, 2) for a in standalone]} on {len(test_data[0])} test images')
    if min(gaps) < 3.0:
        log(f'WARNING: the anchors are less than 3 points apart (gaps {[round(g, 2) for g in gaps]}): a stitch '
            f'costs about that much, so stitches cannot show between them (change --widths or --anchor-epochs)')
    return train_data, test_all, test_data, anchors, standalone, gaps


def run(s: Setting, data_dir: Path, out: Path, seed: int, log: Callable[[str], None],
        anchor_cache: Optional[Path] = None) -> dict:
    t0, cpu0 = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    names, num_anchors = ('Ti', 'S', 'B'), len(s.widths)
    train_data, test_all, test_data, anchors, standalone, gaps = prepare(s, data_dir, out, seed, anchor_cache,
                                                                         timings)
    variant_test = subset(test_all, s.variant_test_subset, seed) if s.variant_test_subset else test_data
    standalone_variant = standalone if variant_test is test_data else [accuracy(m, variant_test) for m in anchors]
    pairs = anchor_pairs(create_snnet(s), names)

    seeds = [seed + i for i in range(s.num_seeds)]
    results = dict(setting=asdict(s), seed=seed, seeds=seeds, model='snnet_deit_tsb',
                   model_kwargs=model_kwargs(s.widths, s.patch_size), standalone=standalone,
                   standalone_variant_subset=standalone_variant, anchor_gaps=gaps, runs={}, variants={})
    main = s.variants[0]
    plan = [(main, k) for k in seeds] + [(v, seeds[0]) for v in s.variants[1:]]
    for variant, k in tqdm(plan, desc='SN-Net runs', disable=len(plan) < 2):
        first = variant == main and k == seeds[0]
        data = test_data if variant == main else variant_test
        one = cached_run(s, variant, s.kd, s.snnet_epochs, k, anchors, train_data, data,
                         s.latency_iters if first else 0, out / 'runs', log, timings)
        rows = one['rows']
        ref = standalone if data is test_data else standalone_variant
        summary = summarize(rows, num_anchors, pairs, ref)
        run_result = dict(variant=variant, seed=k, kd=s.kd, epochs=s.snnet_epochs, rows=rows, test_images=len(data[0]),
                          sampling=VARIANTS[variant][0], stitch_lr_scale=VARIANTS[variant][1], **summary,
                          **{t: one[t] for t in ('train_cpu_s', 'train_wall_s', 'sweep_cpu_s', 'sweep_wall_s')})
        results['runs'][f'{variant}/seed{k}'] = run_result
        log(f'{variant} seed {k}: anchors {[round(a, 2) for a in summary["anchor_top1"]]} (change '
            f'{[round(a, 2) for a in summary["anchor_change"]]}), spearman {summary["spearman"]:.3f}, '
            f'{summary["in_band"]}/{summary["num_stitches"]} stitches in band')
        if k == seeds[0]:
            results['variants'][variant] = run_result
            where = out if first else out / variant
            if first:
                snnet = load_run_model(s, one, out / 'runs')
                if s.latency_iters and 'latency_ms_b1' not in rows[0]:  # a run cached by --study: time it now
                    rows = [dict(r, **latency_row(snnet, r['id'], s.batch_size, s.latency_iters)) for r in rows]
                    run_result['rows'] = rows
                save_file({k_: v.contiguous() for k_, v in snnet.state_dict().items()}, str(out / 'snnet.safetensors'))
                export_demo_model(snnet, rows, test_all, s.demo_images, out / 'model', variant, k)
            write_sweep(where, variant, model_kwargs(s.widths, s.patch_size), rows, s.batch_size,
                        s.latency_iters if first else 0, len(data[0]), num_anchors,
                        out / 'snnet.safetensors' if first else None)
            plot_sweep(where / 'sweep.json', out / ('pareto.png' if first else f'pareto_{variant}.png'))

    main_runs = [results['runs'][f'{main}/seed{k}'] for k in seeds]
    results['seed_summary'] = dict(
        variant=main, seeds=seeds, **aggregate(main_runs),
        pareto_stitches=[front_by_pair(r['pareto'], pairs, num_anchors) for r in main_runs],
        train_cpu_s=mean_std([r['train_cpu_s'] for r in main_runs]),
        sweep_cpu_s=mean_std([r['sweep_cpu_s'] for r in main_runs]))
    plot_seeds(main_runs, num_anchors, names, f'{main}: {len(seeds)} seeds, {len(test_data[0])} test images',
               out / 'pareto_seeds.png')
    timings['total'] = time.perf_counter() - t0
    timings['total_cpu_this_process'] = time.process_time() - cpu0
    timings['total_cpu_runs'] = sum(r['train_cpu_s'] + r['sweep_cpu_s'] for r in results['runs'].values())
    results['timings'] = timings
    (out / 'results.json').write_text(json.dumps(results, indent=1) + '\n')
    (out / 'report.md').write_text(report(results))
    log(f'done in {timings["total"]:.0f}s: {out / "report.md"}, {out / "pareto.png"}, {out / "sweep.json"}')
    return results


def anchors_only(s: Setting, data_dir: Path, out: Path, seed: int, only: Sequence[int],
                 anchor_cache: Optional[Path] = None) -> list[float]:
    """Train (or read) the anchors `only` and log their standalone top-1 on the sweep's test images."""
    train_data = subset(load_split(data_dir, 'train'), s.train_subset, seed)
    test_data = subset(load_split(data_dir, 'test'), s.test_subset, seed)
    timings: dict[str, float] = {}
    only = sorted(set(only))
    models = standalone_anchors(s, train_data, seed, anchor_cache or out / 'anchors', log, timings, only)
    top1 = [accuracy(m, test_data) for m in models]
    for i, a in zip(only, top1):
        log(f'anchor {i} (width {s.widths[i]}): standalone top-1 {a:.2f} on {len(test_data[0])} test images, '
            f'train {timings.get(f"anchor{i}_train", 0):.0f}s')
    return top1


def study(s: Setting, data_dir: Path, out: Path, seed: int, anchor_cache: Optional[Path] = None,
          train: bool = True) -> dict:
    """SN-Net epochs x distillation (`study_epochs` x `study_kd`) for the main variant and `study_seeds`, then a
    report over every seed of those settings found in OUT/runs: study.json, study.md, study.png."""
    timings: dict[str, float] = {}
    names, num_anchors, variant = ('Ti', 'S', 'B'), len(s.widths), s.variants[0]
    train_data, _, test_data, anchors, standalone, gaps = prepare(s, data_dir, out, seed, anchor_cache, timings)
    pairs = anchor_pairs(create_snnet(s), names)
    runs = out / 'runs'
    plan = [(kd, e) for kd in s.study_kd for e in s.study_epochs]
    if train:
        for kd, epochs, k in tqdm([(kd, e, k) for kd, e in plan for k in s.study_seeds], desc='study runs'):
            cached_run(s, variant, kd, epochs, k, anchors, train_data, test_data, 0, runs, log, timings)
    cells = []
    for kd, epochs in plan:
        found = []
        for k in range(seed, seed + 10):
            path = runs / f'{run_key(s, variant, kd, epochs, k, len(test_data[0]))}.json'
            if path.is_file():
                found.append(json.loads(path.read_text()))
        if not found:
            continue
        summaries = [summarize(r['rows'], num_anchors, pairs, standalone) for r in found]
        cells.append(dict(kd=kd, epochs=epochs, seeds=[r['seed'] for r in found], **aggregate(summaries),
                          pareto=[sm['pareto'] for sm in summaries],
                          pareto_stitches=[front_by_pair(sm['pareto'], pairs, num_anchors) for sm in summaries],
                          above_band=[sm['above_band'] for sm in summaries],
                          below_band=[sm['below_band'] for sm in summaries],
                          train_cpu_s=mean_std([r['train_cpu_s'] for r in found]),
                          sweep_cpu_s=mean_std([r['sweep_cpu_s'] for r in found]),
                          rows=[r['rows'] for r in found]))
    result = dict(setting=asdict(s), variant=variant, standalone=standalone, anchor_gaps=gaps, cells=cells)
    (out / 'study.json').write_text(json.dumps(result, indent=1) + '\n')
    (out / 'study.md').write_text(study_report(result))
    plot_study(result, num_anchors, out / 'study.png')
    log(f'study: {len(cells)} settings: {out / "study.md"}, {out / "study.png"}')
    return result


def study_report(r: dict) -> str:
    """study.md: one row per (distillation, epochs), mean ± std over the seeds found."""
    names = ('Ti', 'S', 'B')
    pair_names = list(r['cells'][0]['spearman_pairs']) if r['cells'] else []
    lines = [f'# Fashion-MNIST SN-Net study: epochs x distillation (`{r["variant"]}`)', '',
             'Standalone: ' + ', '.join(f'{n} {a:.2f}' for n, a in zip(names, r['standalone']))
             + ' (gaps ' + ', '.join(f'{g:+.2f}' for g in r['anchor_gaps']) + ').', '',
             '| distillation | epochs | seeds | ' + ' | '.join(f'{n} change' for n in names) + ' | '
             + ' | '.join(f'Spearman {p}' for p in pair_names)
             + ' | in band | above / below | mean stitch top-1 | stitches on the Pareto front ('
             + ' / '.join(pair_names) + ', per seed) | train CPU (s) |',
             '|---|---|---|' + '---|' * (len(names) + len(pair_names)) + '---|---|---|---|---|']
    for c in r['cells']:
        front = ['/'.join(str(len(v)) for v in f.values()) for f in c['pareto_stitches']]
        lines.append(
            f'| {c["kd"]} | {c["epochs"]:g} | {len(c["seeds"])} | '
            + ' | '.join(_pm(v) for v in c['anchor_change']) + ' | '
            + ' | '.join(_pm(c['spearman_pairs'][p], 3) for p in pair_names)
            + f' | {_pm(c["in_band_share"], 3)} | {np.mean(c["above_band"]):.1f} / {np.mean(c["below_band"]):.1f} | '
            f'{c["mean_stitch_top1"][0]:.2f} ± {c["mean_stitch_top1"][1]:.2f} | {"; ".join(front)} | '
            f'{c["train_cpu_s"][0]:.0f} |')
    return '\n'.join(lines) + '\n'


def plot_study(r: dict, num_anchors: int, output: Path) -> Path:
    """One panel per distillation setting: every config of the first seed, coloured by SN-Net epochs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kds = list(dict.fromkeys(c['kd'] for c in r['cells']))
    epochs = sorted({c['epochs'] for c in r['cells']})  # one colour per epoch count, in every panel
    fig = Figure(figsize=(5.5 * max(1, len(kds)), 4.5), dpi=110)
    FigureCanvasAgg(fig)
    colors = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple')
    ax0 = None
    for j, kd in enumerate(kds):
        ax = fig.add_subplot(1, len(kds), j + 1, sharey=ax0)
        ax0 = ax0 or ax
        for c in (x for x in r['cells'] if x['kd'] == kd):
            rows, i = c['rows'][0], epochs.index(c['epochs'])
            ax.scatter([1e3 * x['gflops'] for x in rows[num_anchors:]], [x['top1'] for x in rows[num_anchors:]], s=9,
                       alpha=0.5, color=colors[i % len(colors)], label=f'SN-Net epochs: {c["epochs"]:g}')
            ax.scatter([1e3 * x['gflops'] for x in rows[:num_anchors]], [x['top1'] for x in rows[:num_anchors]],
                       marker='*', s=110, color=colors[i % len(colors)], edgecolor='black', zorder=3)
        for a in r['standalone']:
            ax.axhline(a, color='grey', lw=0.6, ls='--')
        ax.set_xscale('log')
        ax.set_xlabel('MFLOPs (fvcore, batch 1)')
        ax.set_title(f'distillation: {kd}')
        ax.grid(alpha=0.3)
        ax.legend(loc='lower right', fontsize=8)
    if ax0 is not None:
        ax0.set_ylabel('top-1 (%), dashed: standalone anchors')
    fig.tight_layout()
    fig.savefig(output)
    return output


def demo_subset(test_all: tuple[torch.Tensor, torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed test images `make demo` evaluates on (seed 0: the same with or without the Debian package)."""
    return subset(test_all, n, 0)


def export_demo_model(snnet: nn.Module, rows: list[dict], test_all, n_images: int, folder: Path, variant: str,
                      seed: int) -> None:
    """The trained SN-Net (fp16 safetensors + config.json with its measured stitch table), `n_images` test images
    and a provenance note, for `make demo` (copy the folder to examples/fashion_mnist/model)."""
    from timm_snnet import save_snnet

    if folder.exists():
        shutil.rmtree(folder)
    model = copy.deepcopy(snnet).half()
    model.set_stitch(len(model.anchors) - 1)  # the default stitch: the largest anchor
    model.set_stitch_table([{k: r[k] for k in ('id', 'path', 'gflops', 'params', 'top1', 'top5')} for r in rows])
    save_snnet(model, folder, readme=False)
    images, labels = demo_subset(test_all, n_images)
    save_file({'images': images.contiguous(), 'labels': labels.to(torch.uint8)},
              str(folder / 'test_images.safetensors'))
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    provenance = dict(command='python ' + ' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), variant=variant,
                      seed=seed, commit=commit, date=time.strftime('%Y-%m-%d'), dtype='float16',
                      test_images=f'{n_images} Fashion-MNIST test images (seeded subset, seed 0)')
    (folder / 'provenance.json').write_text(json.dumps(provenance, indent=1) + '\n')


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


def _pm(value: tuple[float, float], digits: int = 2) -> str:
    return f'{value[0]:+.{digits}f} ± {value[1]:.{digits}f}' if digits == 2 else f'{value[0]:.3f} ± {value[1]:.3f}'


def report(r: dict) -> str:
    """report.md: anchors standalone vs in the SN-Net, the seeds' mean ± std, one seed per variant, every config."""
    s, names = r['setting'], ('Ti', 'S', 'B')
    agg = r['seed_summary']
    main_name = agg['variant']
    main = r['variants'][main_name]
    lines = [
        f'# Fashion-MNIST SN-Net run (seeds {", ".join(map(str, r["seeds"]))})', '',
        f'Anchors: DeiT (timm VisionTransformer), depth 12, widths {s["widths"]}, patch {s["patch_size"]} on 28x28, '
        f'{s["anchor_epochs"]} epochs standalone, trained once; SN-Net: {len(main["rows"])} configs, LS init from '
        f'{s["ls_images"]} images, {s["snnet_epochs"]} epochs per run, distillation: {s["kd"]} (timm\'s '
        f'LogitDistillationTask, task weight {s["kd_task_weight"]}, T {s["kd_temperature"]}). Train images: '
        f'{s["train_subset"] or 60000}.',
        '',
        '## Anchors: standalone vs inside the SN-Net (top-1 %)', '',
        f'Standalone: {", ".join(f"{n} {a:.2f}" for n, a in zip(names, r["standalone"]))} on {main["test_images"]} '
        f'test images (gaps {", ".join(f"{g:+.2f}" for g in r["anchor_gaps"])}).', '',
        f'## `{main_name}` over {len(agg["seeds"])} seeds (mean ± std)', '',
        '| measure | mean ± std |', '|---|---|',
    ]
    lines += [f'| {n} change from standalone (points) | {_pm(v)} |' for n, v in zip(names, agg['anchor_change'])]
    lines += [f'| Spearman(GFLOPs, top-1), all configs | {_pm(agg["spearman"], 3)} |']
    lines += [f'| Spearman within {k} | {_pm(v, 3)} |' for k, v in agg.get('spearman_pairs', {}).items()]
    lines += [f'| share of stitches inside the anchors\' band | {_pm(agg["in_band_share"], 3)} |',
              f'| mean stitch top-1 | {agg["mean_stitch_top1"][0]:.2f} ± {agg["mean_stitch_top1"][1]:.2f} |',
              '| stitches on the Pareto front, per seed | '
              + '; '.join(', '.join(f'{k} {len(v)}' for k, v in f.items()) for f in agg['pareto_stitches']) + ' |',
              f'| CPU per run: training / sweep (s) | {agg["train_cpu_s"][0]:.0f} ± {agg["train_cpu_s"][1]:.0f} / '
              f'{agg["sweep_cpu_s"][0]:.0f} ± {agg["sweep_cpu_s"][1]:.0f} |', '']
    lines += ['## One seed per variant', '',
              '| variant | sampling | test images | anchor change vs standalone | mean stitch top-1 | Spearman all | '
              + ' | '.join(f'Spearman {k}' for k in main.get('spearman_pairs', {})) + ' | in band | above | below |',
              '|---|---|---|---|---|---|' + '---|' * len(main.get('spearman_pairs', {})) + '---|---|---|']
    for v, e in r['variants'].items():
        pairs = ' | '.join(f'{x:.3f}' for x in e.get('spearman_pairs', {}).values())
        sampling = ', '.join(f'`{k}={x}`' for k, x in e['sampling'].items()) or 'uniform'
        lines.append(f'| `{v}` | {sampling} | {e["test_images"]} | '
                     f'{" / ".join(f"{a:+.2f}" for a in e["anchor_change"])} | {e["mean_stitch_top1"]:.2f} | '
                     f'{e["spearman"]:.3f} | {pairs} | {e["in_band"]}/{e["num_stitches"]} | {e["above_band"]} | '
                     f'{e["below_band"]} |')
    lines += ['', f'## Every config (`{main_name}`, seed {agg["seeds"][0]}, {main["test_images"]} test images)', '',
              f'Pareto front (ids): {main["pareto"]}', '',
              '| id | path | MFLOPs | params (k) | top-1 | top-5 | latency b1 (ms) | Pareto |',
              '|---|---|---|---|---|---|---|---|']
    for row in main['rows']:
        lines.append(f'| {row["id"]} | {row["path"]} | {1e3 * row["gflops"]:.2f} | {row["params"] / 1e3:.1f} | '
                     f'{row["top1"]:.2f} | {row["top5"]:.2f} | {row.get("latency_ms_b1", float("nan")):.2f} | '
                     f'{"*" if row["id"] in main["pareto"] else ""} |')
    lines += ['', '## Time (s): wall, or CPU where the step says so', '', '| step | seconds |', '|---|---|']
    lines += [f'| {k} | {v:.0f} |' for k, v in r['timings'].items()]
    return '\n'.join(lines) + '\n'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='small subsets and one epoch: the pipeline in minutes')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--data-dir', type=Path, default=DEFAULT_DATA_DIR, help='folder with the four IDX files')
    p.add_argument('--output', type=Path, default=Path('out/fashion_mnist'))
    p.add_argument('--anchor-cache', type=Path, default=None,
                   help='folder of trained standalone anchors, reused across runs (default OUTPUT/anchors)')
    p.add_argument('--study', action='store_true',
                   help='SN-Net epochs x distillation (--study-epochs, --study-kd) for one seed, and its report')
    p.add_argument('--study-report', action='store_true', help='only the report of the study runs already done')
    p.add_argument('--anchors-only', default=None, metavar='I,J',
                   help='only train (or read from the cache) these anchors and print their standalone top-1')
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads (default 1: on a shared 2-core machine, 2 threads stall on each other)')
    for f in fields(Setting):  # every setting can be overridden, e.g. --train-subset 512 --variants uniform
        kind = {int: int, float: float, str: str}.get(type(f.default))
        if f.name in ('widths', 'variants', 'study_epochs', 'study_kd', 'study_seeds'):
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
        if f.name in ('widths', 'study_seeds'):
            v = tuple(int(w) for w in v.split(','))
        elif f.name == 'study_epochs':
            v = tuple(float(e) for e in v.split(','))
        elif f.name in ('study_kd', 'kd'):
            v = tuple(v.split(',')) if f.name == 'study_kd' else v
            unknown = set(v if f.name == 'study_kd' else [v]) - set(KD)
            if unknown:
                raise SystemExit(f'unknown distillation {sorted(unknown)}; choose from {", ".join(KD)}')
        elif f.name == 'variants':
            v = tuple(v.split(','))
            unknown = set(v) - set(VARIANTS)
            if unknown:
                raise SystemExit(f'unknown variants {sorted(unknown)}; choose from {", ".join(VARIANTS)}')
        values[f.name] = v
    return Setting(**values)


def log(msg: str) -> None:
    print(msg, flush=True)


def run_cli(job: Callable[[], object], threads: int) -> int:
    """Run a pipeline on `threads` torch threads: exit status 0, or 2 with a clear message when data is missing."""
    torch.set_num_threads(threads)
    try:
        job()
    except FileNotFoundError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setting = setting_from(args)
    if len(setting.widths) != len(DEIT_TSB):
        raise SystemExit(f'--widths needs {len(DEIT_TSB)} values (the three anchors), got {setting.widths}')
    if args.study or args.study_report:
        return run_cli(lambda: study(setting, args.data_dir, args.output, args.seed, args.anchor_cache,
                                     train=not args.study_report), args.threads)
    if args.anchors_only is not None:
        only = [int(i) for i in args.anchors_only.split(',')]
        return run_cli(lambda: anchors_only(setting, args.data_dir, args.output, args.seed, only, args.anchor_cache),
                       args.threads)
    return run_cli(lambda: run(setting, args.data_dir, args.output, args.seed, log, args.anchor_cache), args.threads)


if __name__ == '__main__':
    sys.exit(main())
