"""CNN family adapters (EfficientNet, MobileNetV3, ConvNeXt, RegNet, ByobNet, ResNetV2, MetaFormer, MaxxVit) on
small real timm architectures: anchors equal plain timm, each stitch runs exactly its route, FLOPs equal fvcore's
count of the exported stitch, features, BatchNorm statistics only on the sampled path, and adapter lookup."""
import warnings

import pytest
import timm
import torch
from timm.models.convnext import ConvNeXt
from torch import nn

from timm_snnet._flops import count_flops
from timm_snnet._snnet import SNNet
from timm_snnet.families import can_stitch, family_for

# name -> (SNNet kwargs, input side). Anchors are real timm architectures, shrunk with anchor_kwargs where slow.
PAIRS = {
    'convnext': (dict(anchors=['convnext_atto', 'convnext_femto'], stages=(1, 2), anchor_kwargs=[
        dict(depths=(1, 2, 2, 1), dims=(16, 32, 64, 128)), dict(depths=(1, 2, 3, 1), dims=(24, 48, 96, 192))]), 64),
    'efficientnet': (dict(anchors=['efficientnet_b0', 'efficientnet_b1'], stages=(0, 3, 6)), 64),
    'mobilenetv3': (dict(anchors=['mobilenetv3_small_050', 'mobilenetv3_small_100'], stages=(1, 4)), 64),
    'regnet': (dict(anchors=['regnetx_002', 'regnetx_004'], stages=(1, 2)), 64),
    'byobnet': (dict(anchors=['repvgg_a0', 'repvgg_a1'], stages=(0, 1)), 64),
    'resnetv2': (dict(anchors=['resnetv2_50', 'resnetv2_101'], stages=(1, 2), anchor_kwargs=[
        dict(layers=(1, 2, 2, 1), channels=(32, 64, 128, 256), stem_chs=16),
        dict(layers=(1, 2, 3, 1), channels=(32, 64, 128, 256), stem_chs=16)]), 64),
    # twins (timm's MetaFormer entries fix depths and dims): conv stage 1, attention stage 2 (blocks on tokens)
    'metaformer': (dict(anchors=['caformer_s18', 'caformer_s18'], stages=(1, 2)), 64),
    # nano (wider, depths 1-2-3-1) in front of pico (narrower, deeper 2-2-5-2): mapped pairs need back depth >= front
    'maxxvit': (dict(anchors=['maxvit_rmlp_nano_rw_256', 'maxvit_rmlp_pico_rw_256'], stages=(1, 2), img_size=64), 64),
}
BN = ('efficientnet', 'mobilenetv3', 'regnet', 'byobnet', 'resnetv2', 'maxxvit')
_CACHE: dict = {}


def build(name: str) -> tuple[SNNet, torch.Tensor]:
    """The pair's SN-Net (eval mode) and a batch of 2 images; built once per module."""
    if name not in _CACHE:
        kwargs, side = PAIRS[name]
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model = SNNet(rule='stage', num_classes=10, **kwargs).eval()
        _CACHE[name] = model, torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    return _CACHE[name]


def stitches(model: SNNet) -> list[int]:
    """The first and last stitch of each stitched stage."""
    by_stage: dict = {}
    for c in model._configs[len(model.anchors):]:
        by_stage.setdefault(c.stage, []).append(c.id)
    return sorted({k for ids in by_stage.values() for k in (ids[0], ids[-1])})


def on_path(model: SNNet, k: int) -> set[str]:
    """Names (in the SN-Net) of the unit modules and stitching layers that route k runs."""
    route = model.route(k)
    names = {f'stitch_layers.{i}' for i in route.layers}
    for seg in route.segments:
        names |= {f'anchors.{seg.anchor}.{m}' for u in model._units[seg.anchor][seg.start:seg.stop] for m in u.modules}
    return names


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + '.') for p in prefixes)


def runs_on_path(model: SNNet, k: int, name: str) -> bool:
    """Whether route k runs module `name`: the first anchor's stem, the route's units and stitching layers, and the
    last anchor's head (whatever is neither stem nor unit)."""
    route = model.route(k)
    first, last = route.first.anchor, route.last.anchor
    if _under(name, on_path(model, k) | {f'anchors.{first}.{n}' for n in model._families[first].stem_names}):
        return True
    owned = set(model._families[last].stem_names) | {m for u in model._units[last] for m in u.modules}
    return _under(name, {f'anchors.{last}'}) and not _under(name, {f'anchors.{last}.{n}' for n in owned})


@pytest.fixture(params=sorted(PAIRS))
def pair(request) -> str:
    return request.param


@torch.no_grad()
def test_anchors_bit_equal_plain_timm(pair):
    model, x = build(pair)
    assert len(stitches(model)) > 0
    for i, anchor in enumerate(model.anchors):
        assert torch.equal(model(x, stitch_id=i), anchor.eval()(x)), f'{pair} anchor {i}'


@torch.no_grad()
def test_stitch_runs_exactly_its_route(pair):
    model, x = build(pair)
    units = {f'anchors.{a}.{m}' for a, us in enumerate(model._units) for u in us for m in u.modules}
    watched = units | {f'stitch_layers.{i}' for i in range(len(model.stitch_layers))}
    ran: set = set()
    hooks = [model.get_submodule(n).register_forward_hook(lambda *_, n=n: ran.add(n)) for n in watched]
    try:
        for k in stitches(model) + [0]:
            ran.clear()
            model(x, stitch_id=k)
            assert ran == on_path(model, k), f'{pair} stitch {k}: {sorted(ran ^ on_path(model, k))}'
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def test_flops_equal_fvcore_and_export_equals_stitch(pair):
    model, x = build(pair)
    size = (3, *x.shape[-2:])
    configs = model.stitch_configs(size)
    x1 = x[:1]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for i, anchor in enumerate(model.anchors):  # exact: the table sums fvcore's per-module counts of the anchor
            assert round(configs[i].gflops * 1e9) == count_flops(anchor, x1).total(), f'{pair} anchor {i}'
        for k in stitches(model)[:2]:
            m = model.export_stitch(k).eval()
            torch.testing.assert_close(m(x), model(x, stitch_id=k), rtol=0, atol=1e-5)
            # exact: the stitched forward is the same modules, plus a 1x1 conv counted as rows * in * out
            assert round(configs[k].gflops * 1e9) == count_flops(m, x1).total(), f'{pair} stitch {k}'


@torch.no_grad()
def test_forward_intermediates_on_a_stitch(pair):
    model, x = build(pair)
    k = stitches(model)[-1]
    model.set_stitch(k)
    try:
        final, feats = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        info = model.feature_info
        assert len(feats) == len(info)
        for f, i in zip(feats, info):
            assert f.shape[1] == i['num_chs'] and f.shape[-1] == -(-x.shape[-1] // i['reduction']), (pair, i)
        last = model.forward_intermediates(x, indices=[-2, -1], stop_early=True, intermediates_only=True)
        assert [f.shape for f in last] == [f.shape for f in feats[-2:]]
        torch.testing.assert_close(last[-1], feats[-1], rtol=0, atol=0)
    finally:
        model.set_stitch(len(model.anchors) - 1)


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.running_mean.clone() for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None}


@pytest.mark.parametrize('pair', BN)
def test_train_step_updates_bn_only_on_path(pair):
    model, x = build(pair)
    k = stitches(model)[0]
    model.set_sampling_weights([float(i == k) for i in range(model.num_configs)])
    before = _bn_stats(model)
    try:
        model.train()
        model(x).sum().backward()
    finally:
        model.eval().zero_grad(set_to_none=True)
        model.set_sampling_weights(None)
    after = _bn_stats(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    expected = {n for n in before if runs_on_path(model, k, n)}
    assert expected and changed == expected, f'{pair} stitch {k}: {sorted(changed ^ expected)[:5]}'
    for n, m in model.named_modules():  # leave the cached model as built
        if n in before:
            m.running_mean.copy_(before[n])


@pytest.mark.parametrize('pair', BN)
def test_ls_init_keeps_bn_stats(pair):
    model, x = build(pair)
    model.train()
    state = {n: t.clone() for n, t in model.state_dict().items() if 'running_' in n or 'num_batches' in n}
    model.init_stitching_layers(x.repeat(4, 1, 1, 1), num_images=8, batch_size=4, progress=False)
    assert model.training
    model.eval()
    assert all(torch.equal(t, model.state_dict()[n]) for n, t in state.items())


class _MyConvNeXt(ConvNeXt):
    """A user subclass of a supported class."""


class _Unsupported(nn.Module):
    pass


def test_family_lookup_and_can_stitch():
    sub = _MyConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=10)
    assert family_for(sub).model_cls is ConvNeXt and can_stitch(sub)
    with pytest.raises(TypeError, match=r'_Unsupported.*supported anchor classes: .*ConvNeXt'):
        family_for(_Unsupported())
    with torch.device('meta'):
        vgg = timm.create_model('vgg11')
    with pytest.raises(TypeError, match=r'VGG'):
        family_for(vgg)
    with torch.device('meta'):
        efficientvit = timm.create_model('efficientvit_b0')
    with pytest.raises(TypeError, match=r'EfficientVit .*nearest supported: EfficientNet'):
        family_for(efficientvit)
    assert can_stitch('convnext_atto') and can_stitch('efficientnet_b0') and can_stitch('mobilenetv4_conv_small')
    assert not can_stitch('vgg11') and not can_stitch(_Unsupported())


@pytest.mark.parametrize('pair', ['convnext', 'resnetv2', 'maxxvit', 'metaformer'])
@torch.no_grad()
def test_forward_intermediates_norm(pair):
    """Families whose `finish` is a final norm (or nothing): norm=True gives the last feature that norm."""
    model, x = build(pair)
    final, feats = model.forward_intermediates(x, norm=True)
    torch.testing.assert_close(feats[-1], final, rtol=0, atol=0)


@pytest.mark.parametrize('pair', ['efficientnet', 'regnet', 'byobnet'])
@torch.no_grad()
def test_forward_intermediates_norm_head_conv(pair):
    """norm=True applies the final norm only (`Family.feature_norm`), never a head conv: none of these has one."""
    model, x = build(pair)
    feats = model.forward_intermediates(x, norm=True, intermediates_only=True)
    torch.testing.assert_close(feats[-1], model.forward_intermediates(x, intermediates_only=True)[-1])
