"""The main demo (`make demo`): a real trained SN-Net switching between 71 networks, offline, in about a minute.

1. The Fashion-MNIST SN-Net that `make reproduce` trains (DeiT Ti/S/B anchors of widths 32/64/128), shipped in
   `examples/fashion_mnist/model` and loaded through timm's own `local-dir:` path: every stitch is evaluated on real
   test images and timed on one thread; `select_stitch` picks one for a budget; a Pareto plot is written.
2. The full-size `snnet_deit_tsb` (random weights: the machine is offline): its config table and the O(1) switch.
"""
from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file

import timm_snnet  # noqa: F401  (registers snnet_* in timm)
from timm_snnet import pareto_front, plot_sweep, profile, write_results

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / 'fashion_mnist' / 'model'
DEBIAN_DIR = Path('/usr/share/datasets/fashion-mnist')


def test_images(model_dir: Path, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The demo's test images: the shipped subset, read from the Debian package when it is installed."""
    shipped = load_file(str(model_dir / 'test_images.safetensors'))
    n = len(shipped['labels'])
    if all((data_dir / f'{name}.gz').is_file() for name in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')):
        sys.path.insert(0, str(HERE / 'fashion_mnist'))
        import reproduce  # the pipeline's own IDX reader and subset (the same images as the shipped ones)

        images, labels = reproduce.demo_subset(reproduce.load_split(data_dir, 'test'), n)
        return images, labels, f'{n} Fashion-MNIST test images from {data_dir}'
    return shipped['images'], shipped['labels'].long(), f'{n} Fashion-MNIST test images shipped in {model_dir}'


@torch.inference_mode()
def trained_snnet(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    model = timm.create_model(f'local-dir:{args.model_dir}', pretrained=True).eval()
    cfg = timm.data.resolve_model_data_config(model)
    print(f"loaded timm.create_model('local-dir:{args.model_dir}', pretrained=True) in "
          f'{time.perf_counter() - start:.1f}s: {model.num_configs} configs, '
          f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, input {tuple(cfg["input_size"])}')
    images, labels, source = test_images(args.model_dir, args.data_dir)
    if args.num_images:
        n = args.num_images
        images, labels, source = images[:n], labels[:n], f'the first {n} of {source}'
    mean, std = torch.tensor(cfg['mean']).view(1, -1, 1, 1), torch.tensor(cfg['std']).view(1, -1, 1, 1)
    x = (images.float().unsqueeze(1) / 255 - mean) / std
    print(f'evaluating every stitch on {source}')
    # latency: every config timed in each of 3 interleaved rounds (torch.utils.benchmark, 1 thread), the median
    # over rounds: a slow moment of a shared machine hits all configs of a round alike, not one config
    latency = {r['id']: r['latency_ms_b1'] for r in profile(model, batch_sizes=(1,), threads=1, rounds=3,
                                                           min_run_time=0.05, progress=False)}
    print('latency: batch 1, 1 thread, median of 3 interleaved rounds; (table): the top-1 stored in the model when it '
          'was trained, on 5,000 test images (the standard error of one top-1 on 1,000 images is about 1.2 points)\n')

    stored = {r['id']: r for r in model.stitch_table or []}
    rows = []
    print(f'{"id":>3}  {"path":<20} {"MFLOPs":>7} {"top-1 %":>8} {"(table)":>8} {"ms":>6}')
    for c in model.stitch_configs():
        correct = sum(int((model(xb, stitch_id=c.id).argmax(1) == yb).sum())
                      for xb, yb in zip(x.split(250), labels.split(250)))
        top1 = 100.0 * correct / len(labels)
        rows.append(dict(id=c.id, path=model.describe(c), gflops=c.gflops, params=c.params, top1=top1,
                         latency_ms_b1=latency[c.id]))
        table = stored.get(c.id, {}).get('top1')
        print(f'{c.id:>3}  {model.describe(c):<20} {1e3 * c.gflops:>7.2f} {top1:>8.2f} '
              f'{table if table is None else f"{table:.2f}":>8} {latency[c.id]:>6.2f}')

    anchors = [r for r in rows if r['id'] < len(model.anchors)]
    print('\nanchors: ' + ', '.join(f'{r["path"]} {r["top1"]:.2f}% at {1e3 * r["gflops"]:.1f} MFLOPs, '
                                    f'{r["latency_ms_b1"]:.2f} ms' for r in anchors))
    print('best top-1 within a FLOPs budget (select_stitch over the measured rows):')
    largest = anchors[-1]['gflops']
    for share in (0.3, 0.45, 0.6, 0.8, 1.0):
        best = model.select_stitch(max_gflops=share * largest, table=rows)
        kind = 'anchor' if best < len(model.anchors) else 'stitch'
        print(f'  <= {1e3 * share * largest:5.1f} MFLOPs ({share:.0%} of {anchors[-1]["path"]}): {best:>2} '
              f'{rows[best]["path"]:<20} {rows[best]["top1"]:.2f}% at {1e3 * rows[best]["gflops"]:.1f} MFLOPs '
              f'({kind})')
    model.set_stitch(model.select_stitch(max_gflops=largest / 2, table=rows))
    print(f'Pareto front (ids, by FLOPs): {pareto_front(rows, "gflops", "top1")}')
    args.output.mkdir(parents=True, exist_ok=True)
    write_results(args.output, dict(model=f'local-dir:{args.model_dir}',
                                    architecture=model.pretrained_cfg['architecture'],
                                    anchors=[r['id'] for r in anchors],
                                    data=dict(source=source, num_images=len(labels)), rows=rows))
    print(f'wrote {plot_sweep(args.output / "sweep.json", args.output / "pareto.png")} and '
          f'{args.output / "sweep.json"}')


@torch.inference_mode()
def full_size(name: str) -> None:
    start = time.perf_counter()
    model = timm.create_model(name).eval()
    configs = model.stitch_configs()
    print(f'\n{name} at full size (random weights, offline): built with its FLOPs table in '
          f'{time.perf_counter() - start:.1f}s, {model.num_configs} configs, '
          f'{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters')
    half = (len(configs) + 1) // 2
    for left, right in zip(configs[:half], list(configs[half:]) + [None]):
        cell = lambda c: f'{c.id:>3} {model.describe(c):<20} {c.gflops:>6.2f} GFLOPs'  # noqa: E731
        print(f'  {cell(left)}    {cell(right) if right else ""}')
    for k in (0, 20, 2):
        us = 1e6 * timeit.timeit(lambda k=k: model.set_stitch(k), number=10_000) / 10_000
        print(f'set_stitch({k}) in {us:.1f} us: active {model.stitch_id} ({model.describe(configs[k])})')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model-dir', type=Path, default=MODEL_DIR, help='a saved SN-Net (config.json + weights)')
    parser.add_argument('--data-dir', type=Path, default=DEBIAN_DIR, help='Fashion-MNIST IDX files, if installed')
    parser.add_argument('--output', type=Path, default=Path('out/demo'), help='sweep.json and pareto.png go here')
    parser.add_argument('--num-images', type=int, default=0, help='evaluate on the first N test images (0: all)')
    parser.add_argument('--full-size', default='snnet_deit_tsb', help="full-size model to tabulate ('' to skip)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # fair latency: one thread, no contention between the two cores
    trained_snnet(args)
    if args.full_size:
        full_size(args.full_size)


if __name__ == '__main__':
    main()
