"""The main demo (`make demo`): one SN-Net, 71 networks, switched at runtime. Runs offline.

Weights are random here (the machine is offline); with internet use `pretrained=True` for SN-Net weights or
`pretrained_anchors=True` for timm's DeiT weights.
"""
import argparse
import time
import timeit

import timm
import torch

import timm_snnet  # noqa: F401  (registers snnet_* in timm)


def latency_ms(model: torch.nn.Module, x: torch.Tensor, stitch_id: int, repeats: int = 5) -> float:
    """Median wall time of one forward of `stitch_id`."""
    times = []
    with torch.inference_mode():
        model(x, stitch_id=stitch_id)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, stitch_id=stitch_id)
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='snnet_deit_tsb')
    parser.add_argument('--stitches', default='0,3,20,37,55,1,2', help='comma separated config ids to time')
    args = parser.parse_args()
    torch.manual_seed(0)

    start = time.perf_counter()
    model = timm.create_model(args.model).eval()
    print(f'built {args.model} in {time.perf_counter() - start:.1f}s: {model.num_configs} configs, '
          f'{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters '
          f'({len(model.stitch_layers)} stitching layers)')

    start = time.perf_counter()
    configs = model.stitch_configs()
    print(f'config table (fvcore, attention counted) in {time.perf_counter() - start:.1f}s\n')
    print(f'{"id":>3}  {"path":<26} {"GFLOPs":>7} {"params (M)":>10}')
    for c in configs:
        print(f'{c.id:>3}  {model.describe(c):<26} {c.gflops:>7.2f} {c.params / 1e6:>10.2f}')

    x = torch.randn(1, *model.pretrained_cfg['input_size'])
    print('\nlatency of one 224x224 image on this CPU:')
    for k in (int(s) for s in args.stitches.split(',')):
        c = configs[k]
        print(f'  stitch {k:>2}  {model.describe(c):<26} {c.gflops:>6.2f} GFLOPs  {latency_ms(model, x, k):>7.1f} ms')

    print('\nset_stitch switches the active network in O(1):')
    for k in (0, 20, 2):
        switch_us = 1e6 * timeit.timeit(lambda k=k: model.set_stitch(k), number=10_000) / 10_000
        with torch.inference_mode():
            top = model(x).softmax(-1).max().item()
        print(f'  set_stitch({k:>2}) in {switch_us:.1f} us -> active {model.stitch_id} '
              f'({model.describe(configs[model.stitch_id])}), max prob {top:.4f}')
    best = configs[model.select_stitch(max_gflops=5.0)]  # FLOPs alone here; a sweep table ranks by accuracy
    print(f'\nselect_stitch(max_gflops=5): {best.id} ({model.describe(best)}, {best.gflops:.2f} GFLOPs)')


if __name__ == '__main__':
    main()
