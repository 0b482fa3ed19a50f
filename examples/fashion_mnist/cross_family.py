"""A cross-family SN-Net on Fashion-MNIST: EfficientNet (timm's TinyNet-E, seven stages) in front of ConvNeXt (four
stages), joined where their resolutions meet (`join='reduction'`), trained with the Fashion-MNIST recipe of
reproduce.py (LS init, `anchor_share=0.3`, distillation from the standalone ConvNeXt through timm's
`LogitDistillationTask`). No one has published this pair: the question is whether its stitches interpolate.

Images are zero-padded from 28x28 to 32x32, so that both anchors' maps have the same size at every reduction
(28 would give ConvNeXt 3x3 and EfficientNet 4x4 at 1/8).

    python examples/fashion_mnist/cross_family.py            # 3 seeds (docs/families.md has its numbers)
    python examples/fashion_mnist/cross_family.py --quick    # the same pipeline in a few minutes
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import timm_snnet  # noqa: F401  (registers the generic snnet)
from timm_snnet import evaluate

_spec = importlib.util.spec_from_file_location('fashion_mnist_reproduce', Path(__file__).with_name('reproduce.py'))
fm = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # the recipe's data, training and summary
_spec.loader.exec_module(fm)

SIDE = 32
ANCHORS = (('tinynet_e', {}), ('convnext_atto', dict(dims=(24, 48, 96, 192), depths=(3, 3, 9, 3))))
NAMES = ('EffNet', 'ConvNeXt')
COMMON = dict(in_chans=1, num_classes=10, pretrained_cfg_overlay=dict(mean=(fm.MEAN,), std=(fm.STD,), crop_pct=1.0))


def pad(data: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = data
    return F.pad(images, [(SIDE - 28) // 2] * 4), labels


def create_anchor(i: int) -> nn.Module:
    name, kwargs = ANCHORS[i]
    return timm.create_model(name, **COMMON, **kwargs)


def create_snnet(**kwargs) -> nn.Module:
    return timm.create_model('snnet', anchors=[a for a, _ in ANCHORS], anchor_kwargs=[k for _, k in ANCHORS],
                             names=NAMES, sort_anchors=False, **COMMON, **kwargs)


def standalone(s: fm.Setting, train_data, seed: int, cache: Path) -> list[nn.Module]:
    out = []
    for i in range(len(ANCHORS)):
        path = cache / f'anchor{i}_{ANCHORS[i][0]}_{s.anchor_epochs:g}ep_n{len(train_data[0])}_seed{seed}.safetensors'
        torch.manual_seed(seed + i)
        model = create_anchor(i)
        if path.is_file():
            model.load_state_dict(load_file(str(path)))
        else:
            fm.train(model, train_data, s.anchor_epochs, s.batch_size, fm.param_groups(model, s.anchor_lr,
                     s.weight_decay), seed + i, fm.log, f'anchor {NAMES[i]}')
            cache.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        out.append(model.eval())
    return out


def one_seed(s: fm.Setting, seed: int, anchors: Sequence[nn.Module], train_data, test_data) -> dict:
    """LS init, SN-Net training, then every config's top-1 on the test images."""
    cpu = time.process_time()
    snnet = create_snnet(stitch_seed=seed, anchor_share=0.3)
    for mine, trained in zip(snnet.anchors, anchors):
        mine.load_state_dict(trained.state_dict())
    calib = next(fm.batches(fm.subset(train_data, s.ls_images, seed + 100), s.ls_images))[0]
    snnet.init_stitching_layers(calib, num_images=s.ls_images, progress=False)
    torch.manual_seed(seed)
    task = fm.distillation_task(s, s.kd, snnet, anchors[-1])
    fm.train(snnet, train_data, s.snnet_epochs, s.batch_size, fm.param_groups(snnet, s.snnet_lr, s.weight_decay),
             seed + 10, fm.log, f'SN-Net seed {seed}', task)
    train_cpu = time.process_time() - cpu
    snnet.eval()
    loader = list(fm.batches(test_data, 500))
    rows = [dict(id=c.id, path=snnet.describe(c), gflops=round(c.gflops, 6), params=int(c.params),
                 top1=round(evaluate(snnet, loader, torch.device('cpu'), c.id)[0], 4))
            for c in snnet.stitch_configs((1, SIDE, SIDE))]
    pairs = {f'{NAMES[0]}->{NAMES[1]}': [r['id'] for r in rows]}
    summary = fm.summarize(rows, len(ANCHORS), pairs, [fm.accuracy(m, test_data) for m in anchors])
    front = fm.front_by_pair(summary['pareto'], pairs, len(ANCHORS))
    return dict(seed=seed, rows=rows, train_cpu_s=train_cpu, pareto_stitches=front, **summary)


def plot(runs: Sequence[dict], output: Path) -> Path:
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # optional plotting dependency, imported where it is used

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, color in zip(runs, ('tab:blue', 'tab:orange', 'tab:green')):
        rows = run['rows']
        ax.scatter([1e3 * r['gflops'] for r in rows[2:]], [r['top1'] for r in rows[2:]], s=12, color=color,
                   alpha=0.5)
        front = sorted((r for r in rows if r['id'] in run['pareto']), key=lambda r: r['gflops'])
        ax.plot([1e3 * r['gflops'] for r in front], [r['top1'] for r in front], '-', color=color,
                label=f'seed {run["seed"]}: Pareto front (Spearman {run["spearman"]:.2f})')
        ax.scatter([1e3 * r['gflops'] for r in rows[:2]], [r['top1'] for r in rows[:2]], marker='*', s=140,
                   color=color, edgecolor='black', zorder=3)
    for i, name in enumerate(NAMES):
        r = runs[0]['rows'][i]
        ax.annotate(name, (1e3 * r['gflops'], r['top1']), textcoords='offset points', xytext=(6, -12))
    ax.set_xlabel('MFLOPs (fvcore multiply-adds, batch 1, 32x32)')
    ax.set_ylabel('top-1 (%)')
    ax.set_title('EfficientNet (TinyNet-E) -> ConvNeXt, joined by reduction: every stitch, 3 seeds')
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)
    return output


def report(r: dict) -> str:
    runs = r['runs']
    sp = fm.mean_std([x['spearman'] for x in runs])
    lines = [
        '# Cross-family SN-Net on Fashion-MNIST: EfficientNet (TinyNet-E) -> ConvNeXt', '',
        f'Seeds {[x["seed"] for x in runs]}, {r["test_images"]} test images, {r["setting"]["snnet_epochs"]:g} SN-Net '
        f'epochs, junctions at reductions {r["junctions"]} (stitched: {r["stages"]}), {r["num_stitches"]} stitches.',
        '', f'Standalone anchors: {", ".join(f"{n} {a:.2f}" for n, a in zip(NAMES, r["standalone"]))} '
        f'({", ".join(f"{1e3 * g:.2f}" for g in r["anchor_mflops"])} MFLOPs).', '',
        '| seed | anchors (change) | Spearman(FLOPs, top-1) | stitches in the band | stitches on the Pareto front | '
        'train CPU (s) |', '|---|---|---|---|---|---|']
    for x in runs:
        change = ', '.join(f'{a:.2f} ({c:+.2f})' for a, c in zip(x['anchor_top1'], x['anchor_change']))
        front = sum(len(v) for v in x['pareto_stitches'].values())
        lines.append(f'| {x["seed"]} | {change} | {x["spearman"]:.3f} | {x["in_band"]}/{x["num_stitches"]} | '
                     f'{front} | {x["train_cpu_s"]:.0f} |')
    lines += ['', f'Spearman mean ± std over seeds: {sp[0]:.3f} ± {sp[1]:.3f}.', '']
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='6,000 training images, one SN-Net epoch, 2 seeds')
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--seed-ids', default=None, metavar='I,J',
                   help='only these seeds (e.g. one per process on a multi-core machine; a later run without it '
                        'reads their results back)')
    p.add_argument('--snnet-epochs', type=float, default=None)
    p.add_argument('--anchor-epochs', type=float, default=None)
    p.add_argument('--train-subset', type=int, default=None, help='training images (default: all 60,000)')
    p.add_argument('--test-subset', type=int, default=None, help='test images (default: 5,000)')
    p.add_argument('--data-dir', type=Path, default=fm.DEFAULT_DATA_DIR)
    p.add_argument('--output', type=Path, default=Path('out/fashion_mnist_cross_family'))
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = fm.Setting(**(dict(train_subset=6000, test_subset=1000, snnet_epochs=1.0) if args.quick else {}))
    for name in ('snnet_epochs', 'anchor_epochs', 'train_subset', 'test_subset'):
        if getattr(args, name) is not None:
            setattr(s, name, getattr(args, name))
    seeds = list(range(2 if args.quick else args.seeds))
    if args.seed_ids:
        seeds = [int(k) for k in args.seed_ids.split(',')]
    try:
        train_data = pad(fm.subset(fm.load_split(args.data_dir, 'train'), s.train_subset, 0))
        test_data = pad(fm.subset(fm.load_split(args.data_dir, 'test'), s.test_subset, 0))
    except FileNotFoundError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    anchors = standalone(s, train_data, 0, args.output / 'anchors')
    model = create_snnet()
    configs = model.stitch_configs((1, SIDE, SIDE))
    runs = []
    for seed in seeds:
        path = args.output / f'seed{seed}_{s.snnet_epochs:g}ep_n{len(train_data[0])}.json'
        if not path.is_file():
            args.output.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(one_seed(s, seed, anchors, train_data, test_data)) + '\n')
        runs.append(json.loads(path.read_text()))
        fm.log(f'seed {seed}: spearman {runs[-1]["spearman"]:.3f}, '
               f'{sum(len(v) for v in runs[-1]["pareto_stitches"].values())} stitches on the Pareto front')
    result = dict(setting=vars(s), anchors=[a for a, _ in ANCHORS], test_images=len(test_data[0]),
                  junctions=model.junctions, stages=list(model._model_args['stages']),
                  num_stitches=len(configs) - len(ANCHORS), anchor_mflops=[c.gflops for c in configs[:2]],
                  standalone=[fm.accuracy(m, test_data) for m in anchors], runs=runs,
                  wall_s=time.perf_counter() - t0)
    (args.output / 'results.json').write_text(json.dumps(result, indent=1) + '\n')
    (args.output / 'report.md').write_text(report(result))
    plot(runs, args.output / 'pareto.png')
    fm.log(f'done: {args.output / "report.md"}, {args.output / "pareto.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
