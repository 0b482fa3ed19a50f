"""Anchors of different families joined where their resolutions meet (`join='reduction'`): CNN -> ViT tokens, ViT
tokens -> CNN map, EfficientNet's seven stages -> ConvNeXt's four, and Swin's NHWC maps -> ConvNeXt's NCHW ones (same
stages, another layout). The family contract on small real anchors (anchors equal plain timm, each stitch runs
exactly its route, FLOPs equal fvcore's count, export equals the stitch, a train step touches only the path), the
least-squares init, the config rule, and what cannot be joined."""
import warnings

import pytest
import timm
import torch
from family_contract import (
    check_anchors_bit_equal,
    check_flops_and_export,
    check_runs_exactly_its_route,
    check_train_step_on_path,
)

from timm_snnet import enumerate_configs
from timm_snnet._configs import junction_depths, junction_stages, proportional_pairs
from timm_snnet._stitching import GridStitch

RESNET = ('resnet18', dict(channels=(8, 16, 32, 64), stem_width=8))
DEIT = ('deit_tiny_patch16_224', dict(embed_dim=16, depth=4, num_heads=2))
CONVNEXT = ('convnext_atto', dict(dims=(8, 16, 24, 32), depths=(1, 1, 3, 1)))
SWIN = ('swin_tiny_patch4_window7_224', dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_size=4))
# name -> (anchors with their kwargs, in the SN-Net's order; the join the generic snnet picks)
PAIRS = {
    'cnn_to_vit': ((RESNET, DEIT), 'reduction'),
    'vit_to_cnn': ((DEIT, RESNET), 'reduction'),
    'efficientnet_to_convnext': ((('tinynet_e', {}), CONVNEXT), 'reduction'),
    'swin_to_convnext': ((SWIN, CONVNEXT), 'stage'),
}
_CACHE: dict = {}


def build(name: str):
    if name not in _CACHE:
        anchors, _ = PAIRS[name]
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model = timm.create_model('snnet', anchors=[a for a, _ in anchors], anchor_kwargs=[k for _, k in anchors],
                                      sort_anchors=False, img_size=64, num_classes=10).eval()
        _CACHE[name] = model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return _CACHE[name]


@pytest.fixture(params=sorted(PAIRS))
def pair(request) -> str:
    return request.param


def test_join_and_junctions(pair):
    model, _ = build(pair)
    assert model._model_args['join'] == PAIRS[pair][1]
    if PAIRS[pair][1] == 'reduction':
        reductions = [sorted({u.reduction for u in units}) for units in model.units]
        assert model.junctions == sorted(set(reductions[0]) | set(reductions[1]))
        shared = [s for s, r in enumerate(model.junctions) if all(r in rs for rs in reductions)]
        assert set(model._model_args['stages']) <= set(shared) and model._model_args['stages']
    crossing = [layer for layer in model.stitch_layers if isinstance(layer, GridStitch)]
    kinds = {f.layout for f in model.families}
    assert bool(crossing) == (len(kinds) > 1)


def test_anchors_bit_equal_plain_timm(pair):
    check_anchors_bit_equal(*build(pair), pair)


def test_stitch_runs_exactly_its_route(pair):
    check_runs_exactly_its_route(*build(pair), pair)


def test_flops_equal_fvcore_and_export_equals_stitch(pair):
    check_flops_and_export(*build(pair), pair)


def test_train_step_touches_only_the_path(pair):
    check_train_step_on_path(*build(pair), pair)


@torch.no_grad()
def test_least_squares_init(pair):
    """The least-squares init never does worse than the random layers on its own images, and a token back's prefix
    tokens start at the mean of the back anchor's own prefix tokens at the cut."""
    model, x = build(pair)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    try:
        before = model.stitching_error(images)
        model.init_stitching_layers(images, num_images=8, batch_size=4, progress=False)
        after = model.stitching_error(images)
        assert set(after) == set(before) and all(after[k] <= before[k] + 1e-6 for k in after), (before, after)
        for _, layer, _, (b, bu) in model._ls_pairs():
            prefix = getattr(model.stitch_layers[layer], 'prefix', None)
            if prefix is not None:
                acts = model._activations(b, images, {bu})[bu]
                torch.testing.assert_close(prefix[0], acts[:, :prefix.shape[1]].mean(0), rtol=1e-4, atol=1e-5)
    finally:
        model.load_state_dict(state)


def test_config_rule():
    """Stages are the reductions the anchors' units run at; each anchor's depth there; stitched where all have
    blocks, but the last; a deeper front leaves at the same share of the stage."""
    junctions, depths = junction_depths([[2, 4, 4, 8, 16, 16, 16, 32], [4, 8, 8, 16, 16, 16, 16, 32, 32]])
    assert junctions == [2, 4, 8, 16, 32] and depths == [[1, 2, 1, 3, 1], [0, 1, 2, 4, 2]]
    assert junction_stages(depths) == (1, 2, 3)
    assert proportional_pairs(12, 6) == [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3), (7, 4), (8, 4), (9, 5),
                                         (10, 5)]
    assert proportional_pairs(2, 6) == [(0, 1), (0, 2), (1, 3), (1, 4), (1, 5)]  # the paper's, where the back is deeper
    configs, layers = enumerate_configs([[1, 2, 1, 3, 1], [0, 1, 2, 4, 2]], (1, 2, 3), 'stage', join='reduction')
    stitches = [c for c in configs if not c.is_anchor]
    assert len(layers) == len(stitches) and [c.layer for c in stitches] == list(range(len(stitches)))
    # stage 1: a back of one block has no block to resume at after the front's cut
    assert {c.stage for c in stitches} == {2, 3} and all(c.back_block >= 1 for c in stitches)


def test_what_cannot_be_joined():
    with pytest.raises(ValueError, match=r"stages \[0\] are not shared by every anchor: .*reduction \(\{0: 2, 1: 4"):
        timm.create_model('snnet', anchors=('tinynet_e', 'convnext_atto'), stages=(0,),
                          anchor_kwargs=[{}, CONVNEXT[1]])


def test_paper_pairs_keep_their_configs():
    """Anchors with the same stages at the same reductions meet stage to stage: ResNet-18 -> Swin-T keeps the
    authors' 6 stitches, ids and layers (the generic entry picks the stage join by itself)."""
    official = timm.create_model('snnet_resnet18_swin_ti', device='meta')
    generic = timm.create_model('snnet', anchors=official.pretrained_cfg['notes'][0][len('anchors: '):].split(', '),
                                device='meta', stages=(1, 2))
    assert generic._model_args['join'] == 'stage' and generic.junctions is None
    assert [c.as_dict() for c in generic.configs] == [c.as_dict() for c in official.configs]
    assert len(official.configs) == 8


def test_onnx_export_of_a_cross_family_stitch(tmp_path):
    """A CNN -> ViT stitch (map to tokens, the back's class token learnt) exports to ONNX and matches eager."""
    from timm_snnet import check_onnx, export_onnx
    model, x = build('cnn_to_vit')
    stitch = model.export_stitch(model.num_configs - 1).eval()
    assert check_onnx(export_onnx(stitch, tmp_path / 'stitch.onnx'), stitch, x) < 1e-5


def test_features_of_every_stitch():
    """features_only over two families: one level per reduction every stitch reaches (EfficientNet's 1/2 is not
    ConvNeXt's), the same feature_info for every stitch, each stitch's levels at those shapes."""
    anchors, _ = PAIRS['efficientnet_to_convnext']
    model = timm.create_model('snnet', anchors=[a for a, _ in anchors], anchor_kwargs=[k for _, k in anchors],
                              sort_anchors=False, features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for k in range(model.num_configs):
            model.set_stitch(k)
            feats = model(x)
            assert [f.shape[1] for f in feats] == model.feature_info.channels(), k
            assert [f.shape[-1] for f in feats] == [64 // r for r in model.feature_info.reduction()], k
