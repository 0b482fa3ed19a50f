"""Family adapters on small real timm architectures, one parametrisation over every pair of anchors: anchors equal
plain timm, each stitch runs exactly its route, FLOPs equal fvcore's count of the exported stitch, the exported stitch
equals the SN-Net's, features (timm's own where the taps agree), a train step touches only the sampled path
(BatchNorm statistics included); and adapter lookup, refused variants, pretrained architectures that can stitch.
DeiT-distilled, EVA-02 and LeViT: tests/test_families_vit.py."""

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
from timm.layers import GatedMlp
from timm.models import register_model
from timm.models.convnext import ConvNeXt
from timm.models.cspnet import CspStagesCfg, CspStemCfg
from timm.models.focalnet import FocalNet, _create_focalnet
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock, SpatialGatingBlock, _create_mixer
from torch import nn

from timm_snnet.families import can_stitch, family_for


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


# name -> (SNNet kwargs, input side). Anchors are real timm architectures, shrunk with anchor_kwargs where slow.
# CNN families (EfficientNet, MobileNetV3, ConvNeXt, RegNet, ByobNet, ResNetV2, MetaFormer, MaxxVit), rule 'stage'
CNN = {
    'convnext': (dict(anchors=['convnext_atto', 'convnext_femto'], stages=(1, 2), anchor_kwargs=[
        dict(depths=(1, 2, 2, 1), dims=(16, 32, 64, 128)), dict(depths=(1, 2, 3, 1), dims=(24, 48, 96, 192))]), 64),
    # b1's ft_in1k weights normalise as b0's (its default tag's 0.5 / 0.5 gets an input conversion, tested in
    # test_generic_snnet.py): the anchors here are bit-equal to plain timm
    'efficientnet': (dict(anchors=['efficientnet_b0', 'efficientnet_b1.ft_in1k'], stages=(0, 3, 6)), 64),
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
# more families (MLP-Mixer / ResMLP / gMLP, BEiT, Swin V2, CSPNet, ...)
MORE = {
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
PAIRS = {**{name: (dict(kwargs, rule='stage'), side) for name, (kwargs, side) in CNN.items()}, **MORE}
# how much of the contract a pair runs: the CNN pairs export 2 stitches, check the last stitch's features, and take a
# train step where they have BatchNorm; the others export every stitch, check the anchors' features too, and all step
BN = ('efficientnet', 'mobilenetv3', 'regnet', 'byobnet', 'resnetv2', 'maxxvit')
TRAIN_STEP = BN + tuple(sorted(MORE))
build = cached_builder(PAIRS)


@pytest.fixture(params=sorted(PAIRS))
def pair(request) -> str:
    return request.param


def test_anchors_bit_equal_plain_timm(pair):
    check_anchors_bit_equal(*build(pair), pair)


def test_stitch_runs_exactly_its_route(pair):
    check_runs_exactly_its_route(*build(pair), pair)


def test_flops_equal_fvcore_and_export_equals_stitch(pair):
    check_flops_and_export(*build(pair), pair, limit=2 if pair in CNN else 0)


@torch.no_grad()
def test_forward_intermediates(pair):
    model, x = build(pair)
    check_features(model, x, pair, stitches(model)[-1:] + ([] if pair in CNN else [0, 1]))
    if pair in TIMM_FEATURES:  # the anchors' features are timm's own
        try:
            for i, anchor in enumerate(model.anchors):
                model.set_stitch(i)
                ours = model.forward_intermediates(x, intermediates_only=True)
                theirs = anchor.forward_intermediates(x, intermediates_only=True)
                assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs)), (pair, i)
        finally:
            model.set_stitch(len(model.anchors) - 1)


@pytest.mark.parametrize('pair', TRAIN_STEP)
def test_train_step_touches_only_the_path(pair):
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
        efficientformer = timm.create_model('efficientformer_l1')
    with pytest.raises(TypeError, match=r'EfficientFormer .*nearest supported: EfficientFormerV2, EfficientNet'):
        family_for(efficientformer)
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
