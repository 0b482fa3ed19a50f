"""One decoder over every stitch: semantic segmentation of Fashion-MNIST composites with an smp FPN on a stitchable
SN-Net backbone (`smp.FPN(encoder_name='tu-snnet_resnet', ...)`), offline, on CPU.

Each 64x64 canvas holds several Fashion-MNIST items at random places; the mask is each item's class (pixels above a
threshold; a later item covers an earlier one) plus background. Per seed:
  1. the three anchors (timm ResNet-18/34/50 at 1/8 width) learn Fashion-MNIST classification (28x28), each step one
     anchor (the SN-Net's sampler restricted to the anchors), as pretrained anchors would come from ImageNet;
  2. segmentation: the same SN-Net as an smp FPN encoder (`features_only`: every stitch, one feature_info), the
     stitching layers and per-level projections least-squares initialised from 100 canvases, then one decoder trained
     over all stitches (one sampled stitch per step, off-path parameters untouched);
  3. per stitch: mIoU on held-out canvases (from the test split) and GFLOPs of the whole segmentation model.
The report gives per-pair Spearman(GFLOPs, mIoU), the Pareto stitches per pair, the mIoU range, seeds' std and CPU time.

    python examples/dense/segment.py                 # 3 seeds (docs/dense.md has its numbers)
    python examples/dense/segment.py --quick         # one seed, fewer steps, in minutes
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'fashion_mnist'))
from reproduce import DEFAULT_DATA_DIR, MEAN, STD, load_split, mean_std, spearman  # noqa: E402

import timm_snnet  # noqa: E402

ANCHORS = ('resnet18', 'resnet34', 'resnet50')
NAMES = ('R18', 'R34', 'R50')
# R50's bottleneck blocks at R34's widths cost what R34 costs: wider, so that FLOPs grow from anchor to anchor
WIDTHS = ((8, 16, 32, 64), (16, 32, 64, 128), (24, 48, 96, 192))
NUM_CLASSES = 11  # background + 10 Fashion-MNIST classes
SETTINGS = {  # anchor classification images / epochs, segmentation steps, batch, test canvases, seeds
    'default': dict(cls_images=20000, cls_epochs=3, seg_steps=1500, batch=32, test=400, seeds=3),
    'quick': dict(cls_images=3000, cls_epochs=1, seg_steps=200, batch=32, test=100, seeds=1),
}


def encoder_kwargs() -> dict:
    return dict(anchors=ANCHORS, names=NAMES, anchor_kwargs=[dict(channels=w, stem_width=8) for w in WIDTHS])


# --- data ----------------------------------------------------------------------------------------------------------
def composites(images: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator, size: int = 64,
               items: tuple[int, int] = (2, 4), threshold: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` canvases (normalized, (n, 1, size, size)) and masks ((n, size, size): 0 background, class + 1)."""
    canvas = torch.zeros(n, size, size, dtype=torch.uint8)
    mask = torch.zeros(n, size, size, dtype=torch.long)
    counts = torch.randint(items[0], items[1] + 1, (n,), generator=generator)
    for i in range(n):
        picks = torch.randint(len(images), (int(counts[i]),), generator=generator)
        corners = torch.randint(size - 28 + 1, (int(counts[i]), 2), generator=generator)
        for k, (r, c) in zip(picks.tolist(), corners.tolist()):
            item, on = images[k], images[k] > threshold
            region = canvas[i, r:r + 28, c:c + 28]
            region[on] = item[on]
            mask[i, r:r + 28, c:c + 28][on] = int(labels[k]) + 1
    return ((canvas.float() / 255.0 - MEAN) / STD).unsqueeze(1), mask


# --- training ------------------------------------------------------------------------------------------------------
def pretrain_anchors(data, s: dict, seed: int) -> nn.Module:
    """Stage 1: the anchors learn classification (28x28), one anchor per step (no stitch sampled)."""
    torch.manual_seed(seed)
    model = timm.create_model('snnet_resnet', num_classes=10, in_chans=1, stitch_seed=seed, **encoder_kwargs())
    model.set_sampling_weights([float(c.is_anchor) for c in model.configs])
    images, labels = data
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    model.train()
    steps = s['cls_epochs'] * s['cls_images'] // 128
    for _ in tqdm(range(steps), desc='anchors (classification)', leave=False):
        idx = torch.randint(len(images), (128,), generator=g)
        x = (images[idx].float() / 255.0 - MEAN) / STD
        loss = F.cross_entropy(model(x.unsqueeze(1)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def segmentation_model(anchors: Optional[nn.Module] = None, seed: int = 0) -> nn.Module:
    import segmentation_models_pytorch as smp  # optional dependency: pip install "timm-snnet[dense]"
    model = smp.FPN(encoder_name='tu-snnet_resnet', encoder_weights=None, in_channels=1, classes=NUM_CLASSES,
                    decoder_pyramid_channels=32, decoder_segmentation_channels=32, stitch_seed=seed,
                    **encoder_kwargs())
    if anchors is not None:  # the pretrained anchors (their classification heads stay behind)
        snnet = model.encoder.model.model
        own = snnet.state_dict()
        snnet.load_state_dict({k: v for k, v in anchors.state_dict().items()
                               if k in own and v.shape == own[k].shape}, strict=False)
    return model


def train_segmentation(model: nn.Module, data, s: dict, seed: int) -> None:
    """Stage 2: LS init from 100 canvases, then one sampled stitch per step (the SN-Net's sampler)."""
    g = torch.Generator().manual_seed(seed)
    features = model.encoder.model
    calib, _ = composites(*data, 100, g)
    features.init_stitching_layers(calib, progress=False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=s['seg_steps'], pct_start=0.1)
    model.train()
    for _ in tqdm(range(s['seg_steps']), desc='segmentation (all stitches)', leave=False):
        x, y = composites(*data, s['batch'], g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


@torch.no_grad()
def miou(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 100) -> float:
    """Mean IoU over the classes present (background included), in %."""
    conf = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    for xb, yb in zip(x.split(batch), y.split(batch)):
        pred = model(xb).argmax(1)
        conf += torch.bincount(yb.flatten() * NUM_CLASSES + pred.flatten(), minlength=NUM_CLASSES ** 2).view(
            NUM_CLASSES, NUM_CLASSES)
    inter, union = conf.diag(), conf.sum(0) + conf.sum(1) - conf.diag()
    present = union > 0
    return float((inter[present].float() / union[present].float()).mean() * 100)


def sweep(model: nn.Module, test, s: dict, seed: int) -> list[dict]:
    x, y = composites(*test, s['test'], torch.Generator().manual_seed(10_000 + seed))
    model.eval()
    rows = []
    for c in timm_snnet.stitch_configs(model, (1, 64, 64)):
        timm_snnet.set_stitch(model, c.id)
        rows.append(dict(id=c.id, front=c.front, back=c.back, is_anchor=c.is_anchor, gflops=c.gflops,
                         miou=miou(model, x, y)))
    return rows


# --- report --------------------------------------------------------------------------------------------------------
def pairs(rows: Sequence[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in rows:
        if not r['is_anchor']:
            out.setdefault(f'{NAMES[r["front"]]}->{NAMES[r["back"]]}', [r['front'], r['back']]).append(r['id'])
    return out


def summarize(rows: Sequence[dict]) -> dict:
    by_id = {r['id']: r for r in rows}
    front = timm_snnet.pareto_front(rows, 'gflops', 'miou')
    groups = pairs(rows)
    return dict(
        spearman_pairs={p: spearman([by_id[k]['gflops'] for k in ids], [by_id[k]['miou'] for k in ids])
                        for p, ids in groups.items()},
        pareto=front, pareto_pairs={p: [k for k in front if k in ids[2:]] for p, ids in groups.items()},
        miou_range=[min(r['miou'] for r in rows), max(r['miou'] for r in rows)],
        anchors_miou=[r['miou'] for r in rows if r['is_anchor']])


def plot(runs: Sequence[list[dict]], output: Path) -> Path:
    import matplotlib  # lazy: plotting only
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = runs[0]
    gflops = np.array([r['gflops'] for r in rows])
    values = np.array([[r['miou'] for r in run] for run in runs])
    mean, std = values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(rows))
    for p, ids in pairs(rows).items():
        stitched = [k for k in ids[2:]]
        ax.errorbar(gflops[stitched], mean[stitched], yerr=std[stitched], fmt='o', ms=4, capsize=2, label=p)
    anchors = [r['id'] for r in rows if r['is_anchor']]
    ax.errorbar(gflops[anchors], mean[anchors], yerr=std[anchors], fmt='*', ms=12, color='k', label='anchors')
    ax.set_xlabel('GFLOPs (whole FPN model, 1x64x64)')
    ax.set_ylabel('mIoU (%)')
    ax.set_title(f'One FPN decoder over every stitch ({len(runs)} seed{"s" * (len(runs) > 1)})')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def report(runs: list[list[dict]], summaries: list[dict], cpu: list[float]) -> str:
    names = list(summaries[0]['spearman_pairs'])
    lines = ['| pair | Spearman(GFLOPs, mIoU) | Pareto stitches (per seed) |', '|---|---|---|']
    for p in names:
        m, sd = mean_std([s['spearman_pairs'][p] for s in summaries])
        lines.append(f'| {p} | {m:.3f} ± {sd:.3f} | {" / ".join(str(s["pareto_pairs"][p]) for s in summaries)} |')
    lo = mean_std([s['miou_range'][0] for s in summaries])
    hi = mean_std([s['miou_range'][1] for s in summaries])
    anchors = [mean_std([s['anchors_miou'][i] for s in summaries]) for i in range(len(NAMES))]
    rows = runs[0]
    lines += ['', f'mIoU range over {len(rows)} configs: {lo[0]:.1f} ± {lo[1]:.1f} to {hi[0]:.1f} ± {hi[1]:.1f} '
              f'at {min(r["gflops"] for r in rows):.3f}-{max(r["gflops"] for r in rows):.3f} GFLOPs; anchors '
              + ', '.join(f'{n} {m:.1f} ± {sd:.1f}' for n, (m, sd) in zip(NAMES, anchors)),
              f'CPU time: {sum(cpu) / 60:.1f} min in all ({", ".join(f"{c / 60:.1f}" for c in cpu)} per seed)']
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='one seed, fewer steps (minutes)')
    parser.add_argument('--data-dir', type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument('--output', type=Path, default=Path('out/dense'))
    parser.add_argument('--seeds', type=int, default=None, help='number of seeds (default 3, --quick 1)')
    args = parser.parse_args(argv)
    s = dict(SETTINGS['quick' if args.quick else 'default'])
    s['seeds'] = args.seeds or s['seeds']
    torch.set_num_threads(1)
    train, test = load_split(args.data_dir, 'train'), load_split(args.data_dir, 'test')
    args.output.mkdir(parents=True, exist_ok=True)
    runs, summaries, cpu = [], [], []
    for seed in range(s['seeds']):
        start = time.process_time()
        anchors = pretrain_anchors((train[0][:s['cls_images']], train[1][:s['cls_images']]), s, seed)
        model = segmentation_model(anchors, seed)
        train_segmentation(model, train, s, seed)
        rows = sweep(model, test, s, seed)
        cpu.append(time.process_time() - start)
        runs.append(rows)
        summaries.append(summarize(rows))
        print(f'seed {seed}: {json.dumps(summaries[-1]["spearman_pairs"])}, CPU {cpu[-1] / 60:.1f} min', flush=True)
    text = report(runs, summaries, cpu)
    figure = plot(runs, args.output / 'dense_miou_gflops.png')
    result = dict(settings=s, runs=runs, summaries=summaries, cpu_s=cpu, report=text, figure=str(figure))
    (args.output / 'results.json').write_text(json.dumps(result, indent=1))
    (args.output / 'report.md').write_text(text + '\n')
    print(text)
    return result


if __name__ == '__main__':
    main()
