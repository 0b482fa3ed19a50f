"""Fashion-MNIST A/B of the off-path semantics: `uniform` SN-Net training with the paper's (`off_path='skip'`: no
update off the sampled path) against this package's v1 (`'zero'`: zero gradients, AdamW still decays and moves).

Both arms start from the same LS-initialised SN-Net (standalone anchors cached in `--cache`), read the same data in
the same order and draw the same stitches (the draws are checked); only `off_path` differs.

    python examples/fashion_mnist/off_path.py                      # reduced setting (see RESULTS.md)
    python examples/fashion_mnist/off_path.py --train-subset 0     # all 60,000 training images
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence

import timm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce as r  # noqa: E402  (the pipeline's data, models, training loop and sweep)


def run(s: r.Setting, data_dir: Path, out: Path, cache: Path, seed: int, log: Callable[[str], None]) -> dict:
    t0 = time.perf_counter()
    train_data = r.subset(r.load_split(data_dir, 'train'), s.train_subset, seed)
    test_data = r.subset(r.load_split(data_dir, 'test'), s.test_subset, seed)
    log(f'data: {len(train_data[0])} train, {len(test_data[0])} test images')
    anchors = r.standalone_anchors(s, train_data, seed, cache, log, {})
    standalone = [r.accuracy(m, test_data) for m in anchors]
    log(f'standalone top-1 {standalone}')

    snnet = timm.create_model('snnet_deit_tsb', stitch_seed=seed, **r.model_kwargs(s.widths, s.patch_size))
    for i, model in enumerate(anchors):
        snnet.anchors[i].load_state_dict(model.state_dict())
    calib = next(r.batches(r.subset(train_data, s.ls_images, seed + 100), s.ls_images))[0]
    snnet.init_stitching_layers(calib, num_images=s.ls_images, progress=False)
    init_state = {k: v.clone() for k, v in snnet.state_dict().items()}

    arms, draws = {}, {}
    for mode in ('zero', 'skip'):
        snnet.load_state_dict(init_state)  # same weights, sampler back at step 0: the same draws
        snnet.off_path = mode
        drawn, sample = [], snnet.sample_stitch
        snnet.sample_stitch = lambda: drawn.append(sample()) or drawn[-1]  # noqa: B023
        groups = r.param_groups(snnet, s.snnet_lr, s.weight_decay)
        seconds = r.train(snnet, train_data, s.snnet_epochs, s.batch_size, groups, seed + 10, log, f'SN-Net {mode}')
        del snnet.sample_stitch
        rows = r.sweep_rows(snnet, test_data, s.batch_size, 0, log)
        summary = r.summarize(rows, len(anchors))
        draws[mode] = drawn
        arms[mode] = dict(rows=rows, train_seconds=seconds, anchor_change=[
            a - b for a, b in zip(summary['anchor_top1'], standalone)], **summary)
        log(f'{mode}: anchors {summary["anchor_top1"]}, mean stitch top-1 {summary["mean_stitch_top1"]:.2f}')
    if draws['zero'] != draws['skip']:
        raise RuntimeError('the two arms drew different stitches')
    result = dict(setting=asdict(s), seed=seed, standalone=standalone, test_images=len(test_data[0]),
                  train_images=len(train_data[0]), steps=len(draws['skip']), arms=arms,
                  seconds=time.perf_counter() - t0)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'off_path.json').write_text(json.dumps(result, indent=1) + '\n')
    (out / 'off_path.md').write_text(report(result))
    log(report(result))
    return result


def report(res: dict) -> str:
    names = ('Ti', 'S', 'B')
    lines = ['| | ' + ' | '.join(f'{n} standalone' for n in names) + ' | ' +
             ' | '.join(f'{n} change' for n in names) + ' | mean stitch top-1 | Spearman | stitches in band |',
             '|---' * 10 + '|']
    for mode, label in (('zero', "v1 zero gradients (`off_path='zero'`)"), ('skip', "paper (`off_path='skip'`)")):
        a = res['arms'][mode]
        lines.append(f'| {label} | ' + ' | '.join(f'{x:.2f}' for x in res['standalone']) + ' | ' +
                     ' | '.join(f'{x:+.2f}' for x in a['anchor_change']) +
                     f' | {a["mean_stitch_top1"]:.2f} | {a["spearman"]:.3f} | {a["in_band"]}/{a["num_stitches"]} |')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--data-dir', type=Path, default=r.DEFAULT_DATA_DIR)
    p.add_argument('--output', type=Path, default=Path('out/fashion_mnist_off_path'))
    p.add_argument('--cache', type=Path, default=Path('out/fashion_mnist_anchors'), help='standalone anchors')
    p.add_argument('--train-subset', type=int, default=30000, help='training images (0: all 60,000)')
    p.add_argument('--test-subset', type=int, default=2000, help='test images for both arms (0: all 10,000)')
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args(argv)
    s = r.Setting(widths=(32, 64, 128), train_subset=args.train_subset or None, test_subset=args.test_subset or None,
                  anchor_epochs=1.0)  # the widths of its run in RESULTS.md
    return r.run_cli(lambda: run(s, args.data_dir, args.output, args.cache, args.seed, r.log), args.threads)


if __name__ == '__main__':
    sys.exit(main())
