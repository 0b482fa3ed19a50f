"""More family adapters (MLP-Mixer / ResMLP / gMLP, BEiT, Swin V2, CSPNet, ...) on small real timm architectures:
anchors equal plain timm, each stitch runs exactly its route, FLOPs equal fvcore's count of the exported stitch, the
exported stitch equals the SN-Net's, features, and a train step touches only the sampled path (BatchNorm statistics
included)."""
import warnings

import pytest
import timm
import torch
from timm.layers import GatedMlp
from timm.models import register_model
from timm.models.cspnet import CspStagesCfg, CspStemCfg
from timm.models.focalnet import FocalNet, _create_focalnet
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock, SpatialGatingBlock, _create_mixer
from torch import nn

from timm_snnet._flops import count_flops
from timm_snnet._snnet import SNNet
from timm_snnet.families import can_stitch, family_for

torch.set_num_threads(1)


def _tiny(sizes, **kw):
    return [dict(kw, **s) for s in sizes]


# timm registers this pretrained cfg with the model below (fixed input size, as its MLP-Mixers)
default_cfgs = {'tiny_test_mixer': dict(input_size=(3, 32, 32), fixed_input_size=True),
                'tiny_test_focalnet': dict(input_size=(3, 64, 64))}


@register_model
def tiny_test_mixer(pretrained: bool = False, **kwargs) -> MlpMixer:
    """A tiny MlpMixer (timm's registered mixers fix their size): Mixer blocks unless `block_layer` is given."""
    return _create_mixer('tiny_test_mixer', pretrained, **{**dict(patch_size=8, num_blocks=2, embed_dim=16), **kwargs})


@register_model
def tiny_test_focalnet(pretrained: bool = False, **kwargs) -> FocalNet:
    """A tiny FocalNet (timm's registered FocalNets fix depths and width)."""
    return _create_focalnet('tiny_test_focalnet', pretrained, **{**dict(depths=(1, 1, 2, 1), embed_dim=16), **kwargs})


RESMLP = dict(mlp_ratio=4, block_layer=ResBlock, norm_layer=Affine)
GMLP = dict(mlp_ratio=6, block_layer=SpatialGatingBlock, mlp_layer=GatedMlp)


# name -> (SNNet kwargs, input side). Anchors are real timm architectures, shrunk with anchor_kwargs.
PAIRS = {
    'mixer': (dict(anchors=['tiny_test_mixer'] * 2, rule='window', img_size=32,
                   anchor_kwargs=[dict(embed_dim=16), dict(embed_dim=32)]), 32),
    # one class, two block types: ResMLP (Affine norms) in front of gMLP (spatial gating)
    'resmlp_gmlp': (dict(anchors=['tiny_test_mixer'] * 2, rule='window', img_size=32,
                         anchor_kwargs=[dict(RESMLP, embed_dim=16), dict(GMLP, embed_dim=32)]), 32),
    'beit': (dict(anchors=['beit_base_patch16_224'] * 2, rule='window', img_size=32, anchor_kwargs=_tiny(
        [dict(embed_dim=16), dict(embed_dim=32)], patch_size=8, depth=2, num_heads=2)), 32),
    'swinv2': (dict(anchors=['swinv2_tiny_window8_256'] * 2, rule='stage', stages=(1, 2), img_size=64,
                    anchor_kwargs=_tiny([dict(embed_dim=16, depths=(1, 1, 2, 1)),
                                         dict(embed_dim=24, depths=(1, 2, 2, 1))],
                                        num_heads=(1, 2, 2, 4), window_size=4)), 64),
    # DarkNet stages: conv_down + blocks, one unit per block
    'darknet': (dict(anchors=['darknet53'] * 2, rule='stage', stages=(1, 2), anchor_kwargs=[
        dict(stem=CspStemCfg(out_chs=c, kernel_size=3, stride=1, pool=''), stages=CspStagesCfg(
            depth=d, out_chs=tuple(c * 2 ** i for i in range(1, 6)), stride=2, bottle_ratio=0.5, block_ratio=1.,
            stage_type='dark', block_type='dark')) for c, d in ((4, (1, 1, 2, 1, 1)), (8, (1, 2, 2, 2, 1)))]), 32),
    # final_conv + final_act after the last stage (head-side, as EfficientNet's conv_head)
    'nfnet': (dict(anchors=['test_nfnet'] * 2, rule='stage', stages=(1, 2), anchor_kwargs=[
        dict(depths=(1, 1, 2, 1), channels=(16, 32, 48, 64)),
        dict(depths=(1, 2, 2, 1), channels=(24, 48, 72, 96))]), 64),
    'mambaout': (dict(anchors=['mambaout_femto'] * 2, rule='stage', stages=(1, 2), anchor_kwargs=[
        dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64)), dict(depths=(1, 2, 2, 1), dims=(24, 48, 72, 96))]), 64),
    # RepVit takes no drop_path_rate: None keeps SNNet from passing it (timm drops None kwargs)
    'repvit': (dict(anchors=['repvit_m1'] * 2, rule='stage', stages=(1, 2), drop_path_rate=None, anchor_kwargs=[
        dict(depth=(1, 2, 2, 1), embed_dim=(16, 32, 48, 64)), dict(depth=(2, 2, 3, 1), embed_dim=(24, 48, 72, 96))]),
               64),
    'focalnet': (dict(anchors=['tiny_test_focalnet'] * 2, rule='stage', stages=(1, 2), anchor_kwargs=[
        dict(), dict(depths=(1, 2, 2, 1), embed_dim=24, focal_levels=(3, 3, 3, 3))]), 64),
    # downsample + conditional positional encoding in block 0; attention blocks in the last stage
    'fastvit': (dict(anchors=['fastvit_sa12'] * 2, rule='stage', stages=(1, 2), anchor_kwargs=[
        dict(layers=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128)),
        dict(layers=(1, 2, 2, 1), embed_dims=(24, 48, 96, 192))]), 64),
    # XCA blocks take the patch grid; class token and class-attention blocks after the last unit (head-side)
    'xcit': (dict(anchors=['xcit_nano_12_p8_224'] * 2, rule='window', img_size=32, anchor_kwargs=_tiny(
        [dict(embed_dim=16), dict(embed_dim=32)], depth=2, num_heads=2)), 32),
    'hgnet': (dict(anchors=['hgnetv2_b0', 'hgnetv2_b1'], rule='stage', stages=(2,)), 64),
    # timm fixes NextViT's widths: blocks below a stage's width join the next one (stage 2: a unit per 5 blocks)
    'nextvit': (dict(anchors=['nextvit_small'] * 2, rule='stage', stages=(0, 2), anchor_kwargs=[
        dict(depths=(1, 1, 5, 1)), dict(depths=(2, 1, 10, 1))]), 64),
}
# features of an anchor equal timm's own forward_intermediates (same taps)
TIMM_FEATURES = ('mixer', 'resmlp_gmlp', 'beit', 'swinv2', 'darknet', 'mambaout', 'repvit', 'focalnet', 'fastvit',
                 'xcit', 'hgnet', 'nextvit')
_CACHE: dict = {}


def build(name: str) -> tuple[SNNet, torch.Tensor]:
    """The pair's SN-Net (eval mode) and a batch of 2 images; built once per module."""
    if name not in _CACHE:
        kwargs, side = PAIRS[name]
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model = SNNet(num_classes=10, **kwargs).eval()
        _CACHE[name] = model, torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    return _CACHE[name]


def stitches(model: SNNet) -> list[int]:
    """The first and last stitch of each stitched stage."""
    by_stage: dict = {}
    for c in model._configs[len(model.anchors):]:
        by_stage.setdefault(c.stage, []).append(c.id)
    return sorted({k for ids in by_stage.values() for k in (ids[0], ids[-1])})


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + '.') for p in prefixes)


def on_path(model: SNNet, k: int) -> set[str]:
    """Names (in the SN-Net) of the unit modules and stitching layers that route k runs."""
    route = model.route(k)
    names = {f'stitch_layers.{i}' for i in route.layers}
    for seg in route.segments:
        names |= {f'anchors.{seg.anchor}.{m}' for u in model._units[seg.anchor][seg.start:seg.stop] for m in u.modules}
    return names


def runs_on_path(model: SNNet, k: int, name: str) -> bool:
    """Whether route k runs tensor / module `name`: the first anchor's stem, the route's units and stitching layers,
    and the last anchor's final norm and head (whatever is neither stem nor unit)."""
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
        for k in stitches(model) + [0, 1]:
            ran.clear()
            model(x, stitch_id=k)
            assert ran == on_path(model, k), f'{pair} stitch {k}: {sorted(ran ^ on_path(model, k))}'
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def test_flops_equal_fvcore_and_export_equals_stitch(pair):
    model, x = build(pair)
    configs = model.stitch_configs((3, *x.shape[-2:]))
    x1 = x[:1]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for i, anchor in enumerate(model.anchors):
            assert round(configs[i].gflops * 1e9) == count_flops(anchor, x1).total(), f'{pair} anchor {i}'
        for k in stitches(model):
            m = model.export_stitch(k).eval()
            torch.testing.assert_close(m(x), model(x, stitch_id=k), rtol=1e-5, atol=1e-5)
            assert round(configs[k].gflops * 1e9) == count_flops(m, x1).total(), f'{pair} stitch {k}'


@torch.no_grad()
def test_forward_intermediates(pair):
    model, x = build(pair)
    try:
        for k in stitches(model)[-1:] + [0, 1]:
            model.set_stitch(k)
            final, feats = model.forward_intermediates(x)
            torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
            info = model.feature_info
            assert len(feats) == len(info)
            for f, i in zip(feats, info):
                assert f.shape[1] == i['num_chs'] and f.shape[-1] == -(-x.shape[-1] // i['reduction']), (pair, k, i)
            last = model.forward_intermediates(x, indices=[-2, -1], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(last[-1], feats[-1], rtol=0, atol=0)
        if pair in TIMM_FEATURES:
            for i, anchor in enumerate(model.anchors):
                model.set_stitch(i)
                ours = model.forward_intermediates(x, intermediates_only=True)
                theirs = anchor.forward_intermediates(x, intermediates_only=True)
                assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs)), (pair, i)
    finally:
        model.set_stitch(len(model.anchors) - 1)


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.running_mean.clone() for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None}


def test_train_step_touches_only_the_path(pair):
    """Gradients reach only the sampled stitch's tensors; BatchNorm statistics change exactly on its path."""
    model, x = build(pair)
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
    assert grads and all(runs_on_path(model, k, n) for n in grads), f'{pair} stitch {k}'
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {n for n in before if runs_on_path(model, k, n)}, f'{pair} stitch {k}'
    for n, m in model.named_modules():  # leave the cached model as built
        if n in before:
            m.running_mean.copy_(before[n])


def test_refused_variants():
    with torch.device('meta'):
        shared = timm.create_model('beit_base_patch16_224', use_rel_pos_bias=False, use_shared_rel_pos_bias=True)
    assert not can_stitch(shared)
    with pytest.raises(ValueError, match='shared relative position bias'):
        family_for(shared).units(shared)
    with torch.device('meta'):
        csp = timm.create_model('cspresnet50')
    assert not can_stitch(csp) and not can_stitch('cs3darknet_focus_s')
    with pytest.raises(ValueError, match='cross-stage-partial'):
        family_for(csp).units(csp)
    for name in ('mixer', 'xcit'):
        with pytest.raises(ValueError, match='fixed image size'):
            build(name)[0](torch.randn(1, 3, 48, 48))
    with torch.device('meta'):
        fork = timm.create_model('fastvit_t8', fork_feat=True)
    assert not can_stitch(fork)


@pytest.mark.parametrize('arch', [
    'mixer_b16_224', 'resmlp_12_224', 'gmlp_s16_224', 'gmixer_24_224', 'beit_base_patch16_224',
    'beitv2_base_patch16_224', 'swinv2_tiny_window8_256', 'darknet53', 'darknetaa53', 'dm_nfnet_f0',
    'eca_nfnet_l0', 'nf_regnet_b1', 'nf_resnet50', 'mambaout_femto', 'mambaout_base_plus_rw', 'repvit_m0_9',
    'repvit_m2_3',
    'focalnet_tiny_srf', 'focalnet_huge_fl4', 'fastvit_t8', 'fastvit_ma36', 'fastvit_mci0', 'fastvit_mci4',
    'xcit_nano_12_p16_224', 'xcit_large_24_p8_384', 'hgnet_tiny', 'hgnetv2_b6', 'nextvit_small',
    'nextvit_large'])
def test_can_stitch_pretrained_architectures(arch):
    assert can_stitch(arch)
