"""Family adapters of timm's wider zoo (SENet, TResNet, InceptionNeXt, EdgeNeXt, DaViT, FasterNet, EfficientFormerV2,
SwiftFormer, EfficientViT (MIT) B and L, CPUBone, StarNet, ...) on tiny real anchors of each timm class, checked by
tests/family_contract.py as tests/test_families.py checks the others: anchors equal plain timm, each stitch runs
exactly its route, FLOPs equal fvcore's count of the exported stitch, the exported stitch equals the SN-Net's, a
train step touches only the sampled path; and the pretrained architectures each adapter now takes."""
import copy

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
from timm.models import save_for_hf

from timm_snnet import SNNet
from timm_snnet.families import can_stitch


def _two(arch: str, front: dict, back: dict, side: int = 64, stages=(1, 2), **common) -> tuple[dict, int]:
    """A 'stage'-rule pair of two tiny anchors of `arch` (front shallower than back; `common`: both anchors'
    kwargs), and the input side."""
    kwargs = [{**common, **front}, {**common, **back}]
    return dict(anchors=[arch] * 2, rule='stage', stages=stages, anchor_kwargs=kwargs), side


# name -> (SNNet kwargs, input side): tiny real anchors (widths and depths shrunk with anchor_kwargs)
PAIRS = {
    'senet': _two('legacy_seresnet18', dict(layers=(1, 1, 2, 1)), dict(layers=(1, 2, 3, 1)), side=32),
    'tresnet': _two('tresnet_m', dict(layers=(1, 1, 2, 1), width_factor=0.25),
                    dict(layers=(1, 2, 3, 1), width_factor=0.25)),
    'metanext': _two('inception_next_atto', dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64)),
                     dict(depths=(1, 2, 3, 1), dims=(24, 48, 72, 96))),
    'edgenext': _two('edgenext_xx_small', dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), heads=(2, 2, 2, 2)),
                     dict(depths=(1, 2, 3, 1), dims=(24, 48, 72, 96), heads=(2, 2, 2, 2))),
    'davit': _two('davit_tiny', dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 2, 4)),
                  dict(depths=(1, 2, 3, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 2, 4)), window_size=2),
    'fasternet': _two('fasternet_t0', dict(depths=(1, 1, 2, 1), embed_dim=16, feature_dim=64),
                      dict(depths=(1, 2, 3, 1), embed_dim=24, feature_dim=64)),
    'efficientformerv2': _two('efficientformerv2_s0', dict(depths=(1, 1, 2, 2)), dict(depths=(1, 2, 3, 2)), img_size=64,
                              embed_dims=(16, 32, 48, 64), num_vit=1, mlp_ratios=2),
    # timm's SwiftFormer cfg fixes the input size (224)
    'swiftformer': _two('swiftformer_xs', dict(layers=(1, 1, 2, 1), embed_dims=(8, 16, 24, 32)),
                        dict(layers=(1, 2, 3, 1), embed_dims=(8, 16, 32, 48)), side=224),
    'efficientvit': _two('efficientvit_b0', dict(widths=(8, 16, 24, 32, 48), depths=(1, 1, 1, 2, 1), head_dim=8,
                                                 head_widths=(64, 80)),
                         dict(widths=(8, 16, 24, 32, 48), depths=(1, 1, 2, 3, 1), head_dim=8, head_widths=(64, 80))),
    'efficientvit_large': _two('efficientvit_l1', dict(widths=(8, 16, 24, 32, 48), depths=(1, 1, 1, 2, 1), head_dim=8,
                                                       head_widths=(64, 80)),
                               dict(widths=(8, 16, 24, 32, 48), depths=(1, 1, 2, 3, 1), head_dim=8,
                                    head_widths=(64, 80))),
    'cpubone': _two('cpubone_b0_bfrobust', dict(width_list=[8, 16, 24, 32, 48], depth_list=[0, 1, 2, 2, 1],
                                                head_widths=(64, 80)),
                    dict(width_list=[8, 16, 24, 32, 48], depth_list=[0, 1, 3, 3, 1], head_widths=(64, 80))),
    'starnet': _two('starnet_s1', dict(base_dim=8, depths=(1, 1, 2, 1)), dict(base_dim=16, depths=(1, 2, 3, 1))),
}

PAIRS.update({
    # one attention group (3 blocks: conv, attention, ...) in the last stage; widths all differ (timm's iFormer
    # downsamples a stage only where its width changes, while its feature_info assumes every stage does)
    'iformer': _two('iformer_m', dict(depths=(1, 1, 2, 3)), dict(depths=(1, 2, 3, 3)), dims=(16, 32, 48, 64),
                    attn_groups=(0, 0, 0, 1)),
    'lowformer': _two('lowformer_b0', dict(width_list=[8, 16, 24, 32, 48], depth_list=[0, 1, 2, 2, 1]),
                      dict(width_list=[8, 16, 24, 32, 48], depth_list=[0, 1, 3, 3, 1])),
    # timm fixes GhostNet's depths (widths differ): stages 6 and 8 have 5 and 4 blocks, single-block stages around
    'ghostnet': (dict(anchors=['ghostnet_050', 'ghostnet_100'], rule='stage', stages=(6, 8)), 32),
    # 64: at 32 RepGhost's last stages see all-zero maps, whose BatchNorm statistics do not move
    # 128: at 64 the last stage's map is 1x1 and its depthwise convs' BatchNorm statistics stay put (plain timm too)
    'efficientvit_msra': _two('efficientvit_m0', dict(depth=(1, 1, 2)), dict(depth=(1, 2, 3)), stages=(1, 2),
                              side=128, img_size=128, embed_dim=(16, 32, 48), key_dim=(8, 8, 8), num_heads=(2, 2, 2),
                              window_size=(2, 2, 2)),
    'repghostnet': (dict(anchors=['repghostnet_050', 'repghostnet_058'], rule='stage', stages=(6, 8)), 64),
})


# one-stage transformers (rule 'window'): twins of two widths
def _window(arch: str, widths=(16, 32), side: int = 32, **common) -> tuple[dict, int]:
    kwargs = [dict(common, embed_dim=w) for w in widths]
    return dict(anchors=[arch] * 2, rule='window', img_size=side, anchor_kwargs=kwargs), side


PAIRS.update({
    # class-attention blocks after the last unit (head-side)
    'cait': _window('cait_xxs24_224', patch_size=8, depth=2, num_heads=2, depth_token_only=1),
    'vit_relpos': _window('vit_relpos_medium_patch16_cls_224', patch_size=8, depth=2, num_heads=2),
    'vit_relpos_rpn': _window('vit_relpos_medium_patch16_rpn_224', patch_size=8, depth=2, num_heads=2),
    # DINOv3: RoPE with dynamic_img_size (the grid of the built size), class + 4 register tokens
    'eva_dinov3': _window('vit_small_patch16_dinov3', patch_size=8, depth=2, num_heads=2),
    # conv stage 0, window-attention stages on NHWC maps
    'tiny_vit': _two('tiny_vit_5m_224', dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 48, 64)),
                     dict(depths=(1, 2, 3, 1), embed_dims=(16, 32, 64, 64)), num_heads=(1, 2, 2, 4),
                     window_sizes=(2, 2, 2, 2)),
})
# Qwen3-VL vision: no prefix tokens, RoPE per patch grid; the '_merge' classifier ends forward_features with the VLM
# projector, the encoder (no classifier: built without num_classes) ends its forward with it
QWEN = dict(img_size=32, patch_size=8, depth=2, num_heads=2, pos_embed_grid_size=4)
PAIRS.update({
    'qwen3_vit': _window('qwen3_vit_88m', **QWEN),
    'qwen3_vit_merge': _window('qwen3_vit_88m_merge', out_features=24, **QWEN),
})
ENCODERS = {'qwen3_vit_enc': _window('qwen3_vit_88m_enc', out_features=24, **QWEN)}
_build, _built = cached_builder(PAIRS), {}


def build(name: str) -> tuple[SNNet, torch.Tensor]:
    if name not in ENCODERS:
        return _build(name)
    if name not in _built:
        (kwargs, side), _ = ENCODERS[name], torch.manual_seed(0)
        _built[name] = SNNet(**kwargs).eval(), torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    return _built[name]


@pytest.fixture(params=sorted(PAIRS) + sorted(ENCODERS))
def pair(request) -> str:
    return request.param


def test_anchors_bit_equal_plain_timm(pair):
    check_anchors_bit_equal(*build(pair), pair)


def test_stitch_runs_exactly_its_route(pair):
    check_runs_exactly_its_route(*build(pair), pair)


def test_flops_equal_fvcore_and_export_equals_stitch(pair):
    check_flops_and_export(*build(pair), pair, limit=2)


def test_train_step_touches_only_the_path(pair):
    check_train_step_on_path(*build(pair), pair)


def test_forward_intermediates_match_feature_info(pair):
    """Each feature has the channels and reduction feature_info declares (GhostNet's were one stage off), on a stitch
    and on both anchors."""
    model, x = build(pair)
    check_features(model, x, pair, stitches(model)[-1:] + [0, 1])


@pytest.mark.parametrize('arch', [
    'legacy_seresnet18', 'legacy_senet154', 'tresnet_m', 'tresnet_v2_l', 'inception_next_atto', 'edgenext_small_rw',
    'davit_tiny', 'fasternet_t0', 'efficientformerv2_s0', 'swiftformer_xs', 'efficientvit_b0', 'efficientvit_l1',
    'cpubone_b0_bfrobust', 'starnet_s1', 'cait_xxs24_224', 'vit_relpos_base_patch16_clsgap_224',
    'vit_relpos_base_patch32_plus_rpn_256', 'tiny_vit_5m_224', 'vit_small_patch16_dinov3',
    'vit_base_patch16_sapiens2', 'qwen3_vit_88m', 'qwen3_vit_88m_merge', 'qwen3_vit_88m_enc'])
def test_can_stitch_pretrained_architectures(arch):
    assert can_stitch(arch)


def test_cait_through_the_generic_entry_prunes_and_groups():
    """CaiT through `timm.create_model('snnet')` (anchors ordered by meta FLOPs): pruned with its head, the class
    attention goes too (as timm's own prune); timm's layer decay takes CaiT's function matcher per anchor."""
    from timm.optim import create_optimizer_v2

    model = timm.create_model('snnet', anchors=('cait_xxs36_224', 'cait_xxs24_224'), img_size=32, anchor_kwargs=[
        dict(depth=d, embed_dim=16, num_heads=2, patch_size=8) for d in (3, 2)]).eval()
    assert model.anchor_names == ('cait_xxs24_224', 'cait_xxs36_224')
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, layer_decay=0.75)
    assert len(opt.param_groups) > 2 and sum(len(g['params']) for g in opt.param_groups) == len(
        list(model.parameters()))
    model.prune_intermediate_layers(indices=1, prune_norm=True, prune_head=True)
    feats = model.forward_intermediates(torch.randn(1, 3, 32, 32), indices=1, intermediates_only=True)
    assert feats[0].shape == (1, 16, 4, 4)


@pytest.mark.parametrize('name', ['efficientvit', 'efficientvit_large', 'metanext'])
def test_heads_that_pool_first_run_per_position_without_pooling(name, tmp_path):
    """EfficientViT's and InceptionNeXt's heads pool ahead of their own layers (timm asserts on global_pool=''):
    with pooling off, each position of the SN-Net's output is what timm's own head gives a 1x1 map of that position,
    after reset_classifier, when built so and in its exported stitches; global_pool='avg' gives timm's pooled head
    back."""
    built, x = build(name)
    model = copy.deepcopy(built)
    feats = model.forward_features(x)
    pooled = model.forward_head(feats, pre_logits=True)
    b, c, h, w = feats.shape
    cells = model.forward_head(feats.permute(0, 2, 3, 1).reshape(-1, c, 1, 1), pre_logits=True)  # timm's head
    model.reset_classifier(0, '')
    out = model(x)
    assert out.shape == (b, cells.shape[1], h, w)
    torch.testing.assert_close(out, cells.reshape(b, h, w, -1).permute(0, 3, 1, 2))
    model.reset_classifier(10, '')  # per-position logits: timm's classifier on every position's pre-logits
    logits, pre = model(x), model.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(logits, model.get_classifier()(pre.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    kwargs, _ = PAIRS[name]
    fresh = timm.create_model('snnet', **kwargs, num_classes=0, global_pool='').eval()
    fresh.load_state_dict(built.state_dict(), strict=False)  # all but the classifiers, which num_classes=0 drops
    torch.testing.assert_close(fresh(x), out, rtol=0, atol=0)
    stitch = fresh.export_stitch(1)
    assert stitch.anchors[0].global_pool == '' and torch.equal(stitch(x), fresh(x, stitch_id=1))
    save_for_hf(stitch, tmp_path, safe_serialization=True)  # rebuilt within the saved file's budget
    assert torch.equal(timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()(x), stitch(x))
    model.reset_classifier(0, 'avg')
    torch.testing.assert_close(model(x), pooled, rtol=0, atol=0)
