"""SN-Net v1 against SN-Netv2 on Fashion-MNIST: the same two DeiT-III anchors, the same number of SN-Net steps.

Steps (each logged with its wall time):
  1. train two anchors (timm's DeiT-III VisionTransformer, depth 12, the S and B widths of reproduce.py) standalone,
     cached in OUT/anchors.safetensors;
  2. v1: `snnetv2_deit3_s_b` with rule='window' (one-way S -> B, 36 configs), dense stitching layers, uniform
     sampling; v2: the same entry point's defaults, rule='two_way' (135 configs), low-rank stitching layers, ROS;
  3. least-squares init from the same 100 training images, then the same number of steps for each;
  4. sweep every trained config on the test set; Pareto fronts on one plot, share of stitches in the anchors' band.

    python examples/fashion_mnist/snnetv2.py                     # the run in RESULTS.md (about 21 min here)
    python examples/fashion_mnist/snnetv2.py --arms v2_dense     # the ablation: two-way + ROS, dense layers
    python examples/fashion_mnist/snnetv2.py --snnet-steps 20 --anchor-steps 20 --test-subset 200   # smoke run
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import timm_snnet  # noqa: F401  (registers the entry points)
from timm_snnet import DEIT3, evaluate, flops_groups, pareto_front

sys.path.insert(0, str(Path(__file__).parent))
from reproduce import (  # noqa: E402  (the v1 pipeline's data, training loop and summary)
    DEFAULT_DATA_DIR,
    MEAN,
    STD,
    batches,
    load_split,
    param_groups,
    subset,
    summarize,
    train,
)

ANCHORS = (DEIT3['small'], DEIT3['base'])
REFERENCE_GAP = 1.0 / (17.582740224 - 4.608338304)  # the authors' 1 GFLOP gap over their S -> B FLOPs range


def model_kwargs(widths: Sequence[int], patch_size: int) -> dict:
    return dict(anchor_kwargs=[dict(patch_size=patch_size, embed_dim=w, depth=12, num_heads=max(1, w // 32))
                               for w in widths],
                img_size=28, in_chans=1, num_classes=10,
                pretrained_cfg_overlay=dict(mean=(MEAN,), std=(STD,), crop_pct=1.0, interpolation='bilinear'))


def anchors(args: argparse.Namespace, train_data, test_data, out: Path,
            log: Callable[[str], None]) -> tuple[list[nn.Module], list[float]]:
    """Standalone anchors, trained once and cached."""
    cache = out / 'anchors.safetensors'
    kw = model_kwargs(args.widths, args.patch_size)
    models = [timm.create_model(name, img_size=28, in_chans=1, num_classes=10, **a)
              for name, a in zip(ANCHORS, kw['anchor_kwargs'])]
    if cache.is_file():
        state = load_file(str(cache))
        for i, m in enumerate(models):
            m.load_state_dict({k[len(f'{i}.'):]: v for k, v in state.items() if k.startswith(f'{i}.')})
        log(f'anchors: loaded {cache}')
    else:
        torch.manual_seed(args.seed)
        for i, m in enumerate(models):
            epochs = args.anchor_steps * args.batch_size / len(train_data[0])
            train(m, train_data, epochs, args.batch_size, param_groups(m, 1e-3, 0.05), args.seed + i, log,
                  f'anchor {i} (width {args.widths[i]})')
        save_file({f'{i}.{k}': v.contiguous() for i, m in enumerate(models) for k, v in m.state_dict().items()},
                  str(cache))
    return models, [_top1(m, test_data) for m in models]


@torch.inference_mode()
def _top1(model: nn.Module, data) -> float:
    model.eval()
    return 100.0 * sum(int((model(x).argmax(1) == y).sum()) for x, y in batches(data, 500)) / len(data[0])


def build(arm: str, args: argparse.Namespace, standalone: list[nn.Module], calib: torch.Tensor,
          flops_gap: float) -> nn.Module:
    """v1: one-way window stitching, dense layers, uniform sampling; v2: the entry point's SN-Netv2 defaults."""
    kw = model_kwargs(args.widths, args.patch_size)
    if arm == 'v1':
        kw.update(rule='window', stitch_rank=0, sampling='uniform')
    else:  # v2_dense: the ablation without low-rank layers
        kw.update(rule='two_way', stitch_rank=args.rank if arm == 'v2' else 0, sampling='ros', flops_gap=flops_gap)
    model = timm.create_model('snnetv2_deit3_s_b', stitch_seed=args.seed, **kw)
    for i, m in enumerate(standalone):
        model.anchors[i].load_state_dict(m.state_dict())
    model.init_stitching_layers(calib, num_images=len(calib), progress=False)
    return model


def sweep(model: nn.Module, data, batch_size: int, log: Callable[[str], None]) -> list[dict]:
    loader = list(batches(data, batch_size))
    rows = []
    for c in model.stitch_configs((1, 28, 28)):
        if not model.route(c.id).is_complete:  # built, never trained (SN-Netv2's id 13)
            continue
        top1, top5 = evaluate(model, loader, torch.device('cpu'), c.id)
        rows.append(dict(id=c.id, path=model.describe(c), gflops=round(c.gflops, 6), params=int(c.params),
                         top1=round(top1, 4), top5=round(top5, 4)))
    log(f'  sweep: {len(rows)} configs')
    return rows


def plot(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lo, hi = results['v2']['band']
    ax.axhspan(lo, hi, color='0.9', label="anchors' band (v2 run)")
    for arm, color in (('v1', 'tab:blue'), ('v2', 'tab:red')):
        r = results[arm]
        rows = {row['id']: row for row in r['rows']}
        mflops = [1e3 * row['gflops'] for row in r['rows']]
        ax.scatter(mflops, [row['top1'] for row in r['rows']], s=8, color=color, alpha=0.35)
        front = r['pareto']
        ax.plot([1e3 * rows[k]['gflops'] for k in front], [rows[k]['top1'] for k in front], '-o', ms=3,
                color=color, label=f'{r["label"]}: {r["num_stitches"] + 2} configs, Pareto front')
    ax.set_xlabel('MFLOPs (28x28, batch 1)')
    ax.set_ylabel(f'top-1 % ({results["test_images"]} test images)')
    ax.set_title(f'Fashion-MNIST, DeiT-III widths {tuple(results["args"]["widths"])}, '
                 f'{results["args"]["snnet_steps"]} SN-Net steps each')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data-dir', type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument('--output', type=Path, default=Path('out/fashion_mnist_v2'))
    p.add_argument('--widths', type=lambda s: tuple(int(w) for w in s.split(',')), default=(64, 128))
    p.add_argument('--patch-size', type=int, default=7)
    p.add_argument('--anchor-steps', type=int, default=250)
    p.add_argument('--snnet-steps', type=int, default=250)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--lr', type=float, default=3e-4)
    p.add_argument('--rank', type=int, default=8, help='v2 stitching-layer rank (the authors: 64 at width 384)')
    p.add_argument('--test-subset', type=int, default=1000)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--arms', type=lambda s: tuple(s.split(',')), default=('v1', 'v2'),
                   help='comma list of v1, v2, v2_dense (two-way + ROS with dense layers)')
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    log = lambda msg: print(f'[{time.perf_counter() - t0:6.0f}s] {msg}', flush=True)  # noqa: E731
    args.output.mkdir(parents=True, exist_ok=True)
    train_data = load_split(args.data_dir, 'train')
    test_data = subset(load_split(args.data_dir, 'test'), args.test_subset, args.seed)
    standalone, top1 = anchors(args, train_data, test_data, args.output, log)
    log(f'anchors standalone top-1: {top1[0]:.2f} / {top1[1]:.2f}')
    calib = next(batches(subset(train_data, 100, args.seed + 100), 100))[0]
    results: dict = dict(args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                         standalone=top1, test_images=len(test_data[0]))
    costs = timm.create_model('snnetv2_deit3_s_b', rule='window', stitch_rank=0,
                              **model_kwargs(args.widths, args.patch_size)).stitch_configs((1, 28, 28))
    gap = REFERENCE_GAP * (costs[1].gflops - costs[0].gflops)  # the authors' 1 GFLOP, scaled to these anchors
    labels = {'v1': 'v1: one-way S->B, dense, uniform', 'v2': 'v2: two-way, low-rank, ROS',
              'v2_dense': 'v2 with dense stitching layers'}
    for arm in args.arms:
        label = labels[arm]
        model = build(arm, args, standalone, calib, gap)
        epochs = args.snnet_steps * args.batch_size / len(train_data[0])
        seconds = train(model, train_data, epochs, args.batch_size, param_groups(model, args.lr, 0.05),
                        args.seed + 10, log, f'SN-Net {arm}')
        rows = sweep(model, test_data, 500, log)
        summary = summarize(rows, 2)
        results[arm] = dict(label=label, rows=rows, train_seconds=seconds, num_configs=model.num_configs,
                            **summary)
        if arm != 'v1':
            gflops = {c.id: c.gflops for c in model.stitch_configs((1, 28, 28)) if model.route(c.id).is_complete}
            results[arm].update(flops_gap=model.flops_gap, rank=args.rank,
                                groups=[len(g) for g in flops_groups(gflops, model.flops_gap)])
        log(f'{arm}: anchors {summary["anchor_top1"]}, {summary["in_band"]}/{summary["num_stitches"]} stitches in '
            f'band {summary["band"]}, {summary["above_band"]} above, Pareto {pareto_front(rows)}')
    results['seconds'] = time.perf_counter() - t0
    (args.output / 'results.json').write_text(json.dumps(results, indent=1) + '\n')
    if {'v1', 'v2'} <= set(args.arms):
        plot(results, args.output / 'pareto_v1_vs_v2.png')
    log(f'done: {args.output}/results.json, pareto_v1_vs_v2.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
