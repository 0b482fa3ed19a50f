"""What the first `pretrained=True` costs when it falls back on the authors' release: a full-size `snnet_deit_tsb`
with random weights, saved in the authors' layout (their keys, AdamW state, `args`), placed in the cache as by hand,
then converted by `timm_snnet._sources.fetch_official` (the same path as a download). Also the later, cached load.

    python -m benchmarks.first_load [--no-optimizer] [--workdir DIR]

The authors' release files cannot be downloaded here; sizes are estimated from parameter counts (see --sizes).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import timm
import torch

import timm_snnet  # noqa: F401
from timm_snnet._convert import official_layers
from timm_snnet._releases import RELEASES
from timm_snnet._sources import fetch_official, official_dir


def authors_checkpoint(path: Path, optimizer: bool) -> int:
    """Write a random full-size DeiT SN-Net as the authors' DeiT script saved it; returns its parameter count."""
    model = timm.create_model('snnet_deit_tsb')
    own = model.state_dict()
    state = {k: v for k, v in own.items() if k.startswith('anchors.')}
    stitches = [c for c in model.stitch_configs() if not c.is_anchor]
    for c, prefix in zip(stitches, official_layers(model)):
        for p in ('weight', 'bias'):
            state[f'{prefix}.transform.{p}'] = own[f'stitch_layers.{c.layer}.{p}']
    params = [v for k, v in state.items() if v.is_floating_point()]
    opt = {'state': {i: dict(step=torch.tensor(1.0), exp_avg=torch.zeros_like(v), exp_avg_sq=torch.zeros_like(v))
                     for i, v in enumerate(params)}, 'param_groups': [dict(lr=1e-4, params=list(range(len(params))))]}
    ckpt = dict(model=state, optimizer=opt if optimizer else {}, lr_scheduler={}, epoch=49, scaler={},
                args=argparse.Namespace(model='snnet_deit_tsb', lr=1e-4))
    torch.save(ckpt, path)
    return sum(v.numel() for v in params)


def estimated_sizes() -> None:
    """Release file sizes from this package's parameter counts (float32), without and with AdamW state."""
    for name, release in RELEASES.items():
        n = sum(p.numel() for p in timm.create_model(name, device='meta').parameters())
        print(f'{release.file}: {n / 1e6:.1f}M params, ~{n * 4 / 1e6:.0f} MB weights only, '
              f'~{n * 12 / 1e6:.0f} MB with AdamW state (estimate)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--no-optimizer', action='store_true', help='a file without optimizer state')
    parser.add_argument('--workdir', type=Path, help='cache to use (default: a temporary folder)')
    parser.add_argument('--sizes', action='store_true', help='only print the estimated release file sizes')
    args = parser.parse_args()
    if args.sizes:
        return estimated_sizes()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.workdir or Path(tmp)
        placed = official_dir('snnet_deit_tsb', dict(cache_dir=str(cache))).parent / RELEASES['snnet_deit_tsb'].filename
        placed.parent.mkdir(parents=True, exist_ok=True)
        n = authors_checkpoint(placed, optimizer=not args.no_optimizer)
        print(f'{placed.name}: {n / 1e6:.1f}M params, {placed.stat().st_size / 1e6:.0f} MB on disk')
        start = time.perf_counter()
        folder = fetch_official('snnet_deit_tsb', dict(cache_dir=str(cache)))
        print(f'first load, conversion: {time.perf_counter() - start:.1f} s -> {folder} '
              f'({(folder / "model.safetensors").stat().st_size / 1e6:.0f} MB safetensors)')
        start = time.perf_counter()
        timm.create_model('snnet_deit_tsb', pretrained=True, cache_dir=str(cache))
        print(f'later load (cache only): {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
    main()
