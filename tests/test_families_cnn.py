"""CNN family adapters (EfficientNet, MobileNetV3, ConvNeXt, RegNet, ByobNet, ResNetV2, MetaFormer, MaxxVit) on
small real timm architectures: anchors equal plain timm, each stitch runs exactly its route, FLOPs equal fvcore's
count of the exported stitch, features, BatchNorm statistics only on the sampled path, and adapter lookup."""

import pytest
import timm
import torch
from family_contract import (
    cached_builder,
    check_anchors_bit_equal,
    check_features,
    check_flops_and_export,
    check_runs_exactly_its_route,
    check_train_step_on_path,
    stitches,
)
from timm.models.convnext import ConvNeXt
from torch import nn

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
build = cached_builder(PAIRS, rule='stage')


@pytest.fixture(params=sorted(PAIRS))
def pair(request) -> str:
    return request.param


def test_anchors_bit_equal_plain_timm(pair):
    check_anchors_bit_equal(*build(pair), pair)


def test_stitch_runs_exactly_its_route(pair):
    check_runs_exactly_its_route(*build(pair), pair)


def test_flops_equal_fvcore_and_export_equals_stitch(pair):
    check_flops_and_export(*build(pair), pair, limit=2)


def test_forward_intermediates_on_a_stitch(pair):
    model, x = build(pair)
    check_features(model, x, pair, stitches(model)[-1:])


@pytest.mark.parametrize('pair', BN)
def test_train_step_updates_bn_only_on_path(pair):
    check_train_step_on_path(*build(pair), pair)


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
