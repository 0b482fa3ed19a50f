"""The contract every family adapter meets, checked on one SN-Net of small real timm anchors and a batch `x`:
anchors are the plain timm model, each stitch runs exactly its route, FLOPs equal fvcore's count, export equals the
stitch, features have their declared shapes, and a training step touches only the sampled path."""
import warnings
from typing import Callable

import torch
from torch import nn

from timm_snnet import SNNet
from timm_snnet._flops import count_flops

Build = Callable[[str], tuple[SNNet, torch.Tensor]]


def cached_builder(pairs: dict, **common) -> Build:
    """`build(name)`: the pair's SN-Net (eval mode) and a batch of 2 images, built once. `pairs[name]` is
    (SNNet kwargs, input side)."""
    cache: dict = {}

    def build(name: str) -> tuple[SNNet, torch.Tensor]:
        if name not in cache:
            kwargs, side = pairs[name]
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                model = SNNet(num_classes=10, **{**common, **kwargs}).eval()
            cache[name] = model, torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
        return cache[name]
    return build


def stitches(model: SNNet) -> list[int]:
    """The first and last stitch of each stitched stage."""
    by_stage: dict = {}
    for c in model.configs[len(model.anchors):]:
        by_stage.setdefault(c.stage, []).append(c.id)
    return sorted({k for ids in by_stage.values() for k in (ids[0], ids[-1])})


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + '.') for p in prefixes)


def on_path(model: SNNet, k: int) -> set[str]:
    """Names (in the SN-Net) of the unit modules and stitching layers that route k runs."""
    route = model.route(k)
    names = {f'stitch_layers.{i}' for i in route.layers}
    for seg in route.segments:
        names |= {f'anchors.{seg.anchor}.{m}' for u in model.units[seg.anchor][seg.start:seg.stop] for m in u.modules}
    return names


def runs_on_path(model: SNNet, k: int, name: str) -> bool:
    """Whether route k runs tensor / module `name`: the first anchor's stem, the route's units and stitching layers,
    and the last anchor's final norm and head (whatever is neither stem nor unit)."""
    route = model.route(k)
    first, last = route.first.anchor, route.last.anchor
    if _under(name, on_path(model, k) | {f'anchors.{first}.{n}' for n in model.families[first].stem_names}):
        return True
    owned = set(model.families[last].stem_names) | {m for u in model.units[last] for m in u.modules}
    return _under(name, {f'anchors.{last}'}) and not _under(name, {f'anchors.{last}.{n}' for n in owned})


@torch.no_grad()
def check_anchors_bit_equal(model: SNNet, x: torch.Tensor, label: str) -> None:
    assert len(stitches(model)) > 0
    for i, anchor in enumerate(model.anchors):
        assert torch.equal(model(x, stitch_id=i), anchor.eval()(x)), f'{label} anchor {i}'


@torch.no_grad()
def check_runs_exactly_its_route(model: SNNet, x: torch.Tensor, label: str) -> None:
    units = {f'anchors.{a}.{m}' for a, us in enumerate(model.units) for u in us for m in u.modules}
    watched = units | {f'stitch_layers.{i}' for i in range(len(model.stitch_layers))}
    ran: set = set()
    hooks = [model.get_submodule(n).register_forward_hook(lambda *_, n=n: ran.add(n)) for n in watched]
    try:
        for k in stitches(model) + list(range(len(model.anchors))):
            ran.clear()
            model(x, stitch_id=k)
            assert ran == on_path(model, k), f'{label} stitch {k}: {sorted(ran ^ on_path(model, k))}'
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def check_flops_and_export(model: SNNet, x: torch.Tensor, label: str, limit: int = 0) -> None:
    """FLOPs of the table equal fvcore's count (exactly: the table sums fvcore's per-module counts, and a stitching
    layer is rows * in * out), and the exported stitch gives the SN-Net's output."""
    configs = model.stitch_configs((3, *x.shape[-2:]))
    x1 = x[:1]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for i, anchor in enumerate(model.anchors):
            assert round(configs[i].gflops * 1e9) == count_flops(anchor, x1).total(), f'{label} anchor {i}'
        for k in stitches(model)[:limit or None]:
            m = model.export_stitch(k).eval()
            torch.testing.assert_close(m(x), model(x, stitch_id=k), rtol=1e-5, atol=1e-5)
            assert round(configs[k].gflops * 1e9) == count_flops(m, x1).total(), f'{label} stitch {k}'


@torch.no_grad()
def check_features(model: SNNet, x: torch.Tensor, label: str, ids: list[int]) -> None:
    """forward_intermediates of configs `ids`: the features feature_info declares, and stop_early agrees."""
    try:
        for k in ids:
            model.set_stitch(k)
            final, feats = model.forward_intermediates(x)
            torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
            info = model.feature_info
            assert len(feats) == len(info)
            for f, i in zip(feats, info):
                assert f.shape[1] == i['num_chs'] and f.shape[-1] == -(-x.shape[-1] // i['reduction']), (label, k, i)
            last = model.forward_intermediates(x, indices=[-2, -1], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(last[-1], feats[-1], rtol=0, atol=0)
    finally:
        model.set_stitch(len(model.anchors) - 1)


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.running_mean.clone() for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None}


def check_train_step_on_path(model: SNNet, x: torch.Tensor, label: str) -> None:
    """Gradients reach only the sampled stitch's tensors; BatchNorm statistics change exactly on its path."""
    k = stitches(model)[0]
    model.set_sampling_weights([float(i == k) for i in range(model.num_configs)])
    before = _bn_stats(model)
    try:
        model.train()
        model(x).sum().backward()
        grads = {n for n, p in model.named_parameters() if p.grad is not None}
    finally:
        model.eval().zero_grad(set_to_none=True)
        model.set_sampling_weights(None)
    after = _bn_stats(model)
    assert grads and all(runs_on_path(model, k, n) for n in grads), f'{label} stitch {k}'
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {n for n in before if runs_on_path(model, k, n)}, f'{label} stitch {k}'
    with torch.no_grad():
        for n, m in model.named_modules():  # leave the cached model as built
            if n in before:
                m.running_mean.copy_(before[n])
