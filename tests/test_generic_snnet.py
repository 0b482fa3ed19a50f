"""The generic `snnet` entry point: any timm anchors by name, ordered by FLOPs, the rule chosen by family, and
everything the named SN-Nets do (train.py, features, export, the Hub round trip), plus the errors for bad anchors."""
from pathlib import Path

import pytest
import timm
import torch
from conftest import tiny_input
from image_folder import make_image_folder
from test_train_contract import run_train, train_args
from timm.utils import ParseKwargs

from timm_snnet import can_stitch, save_snnet

# ConvNeXt-Atto / -Femto classes at 8-32 channels (atto is the cheaper one)
CONVNEXT = dict(anchors=('convnext_femto', 'convnext_atto'),
                anchor_kwargs=[dict(dims=(16, 24, 32, 48)), dict(dims=(8, 16, 24, 32))])
X = tiny_input('snnet_resnet')  # 2 x 3 x 64 x 64


def test_anchors_are_ordered_by_flops_with_their_kwargs():
    model = timm.create_model('snnet', **CONVNEXT).eval()
    assert model.anchor_names == ('convnext_atto', 'convnext_femto')
    assert [a.stem[0].out_channels for a in model.anchors] == [8, 16]  # each anchor kept its own kwargs
    args = model._model_args
    assert args['anchors'] == ('convnext_atto', 'convnext_femto') and args['rule'] == 'stage'
    assert args['stages'] == (0, 1, 2)  # every stage but the last
    configs = model.stitch_configs(input_size=(3, 64, 64))
    anchors = [c for c in configs if c.is_anchor]
    assert anchors[0].gflops < anchors[1].gflops and len(configs) > 2
    for a in range(2):  # each anchor config is the plain timm model
        assert torch.equal(model(X, stitch_id=a), model.anchors[a](X))
    kept = timm.create_model('snnet', sort_anchors=False, **CONVNEXT)
    assert kept.anchor_names == ('convnext_femto', 'convnext_atto')


def test_isotropic_anchors_take_the_window_rule():
    model = timm.create_model('snnet', anchors=('deit_small_patch16_224', 'deit_tiny_patch16_224'), img_size=32,
                              anchor_kwargs=[dict(patch_size=8, embed_dim=e, depth=4, num_heads=2) for e in (32, 16)])
    assert model._model_args['rule'] == 'window' and model.anchor_names[0] == 'deit_tiny_patch16_224'
    assert model.num_configs == 2 + 10  # window 2, stride 1 over 4 blocks: 10 stitches
    assert model(torch.randn(1, 3, 32, 32), stitch_id=5).shape == (1, 1000)


def test_model_kwargs_as_train_py_parses_them():
    """`train.py --model snnet --model-kwargs anchors=...`: timm's ParseKwargs (ast.literal_eval) gives the tuple."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    args = p.parse_args(['--model-kwargs', "anchors=('convnext_femto','convnext_atto')", 'stitch_id=3'])
    model = timm.create_model('snnet', **{**args.model_kwargs, 'anchor_kwargs': CONVNEXT['anchor_kwargs']})
    assert model.stitch_id == 3 and model.anchor_names == ('convnext_atto', 'convnext_femto')


def test_train_py_run(tmp_path: Path):
    """train.py's own order (create_model with every kwarg it passes, optimizer, EMA, checkpoints) on `snnet`."""
    data = make_image_folder(tmp_path / 'data', classes=4, train=8, val=4, size=64)
    args = train_args(data, tmp_path / 'out', model='snnet', model_kwargs=dict(CONVNEXT), img_size=None, epochs=1,
                      layer_decay=None)
    out = run_train(args, str(tmp_path / 'out'))
    assert out['stitches'] and all(0 <= k < out['model'].num_configs for k in out['stitches'])
    assert any(not torch.equal(out['initial'][k], v) for k, v in out['model'].state_dict().items())


def test_features_export_and_hub_round_trip(tmp_path: Path):
    model = timm.create_model('snnet', num_classes=10, **CONVNEXT).eval()
    k = model.num_configs - 1
    features = timm.create_model('snnet', features_only=True, stitch_id=k, **CONVNEXT)
    assert [f.shape[1] for f in features(X)] == features.feature_info.channels()
    stitch = model.export_stitch(k).eval()
    torch.testing.assert_close(stitch(X), model(X, stitch_id=k), rtol=0, atol=1e-5)
    model.set_stitch(k)
    save_snnet(model, tmp_path / 'repo', readme=False)
    loaded = timm.create_model(f'local-dir:{tmp_path / "repo"}', pretrained=True).eval()
    assert loaded.anchor_names == model.anchor_names and loaded.stitch_id == k
    for i in (0, k):
        assert torch.equal(loaded(X, stitch_id=i), model(X, stitch_id=i))


# DeiT (ImageNet's mean/std) and an AugReg ViT (0.5 / 0.5) at 16-32 channels, 32x32
OWN_NORMS = dict(anchors=('deit_tiny_patch16_224', 'vit_tiny_patch16_224.augreg_in21k_ft_in1k'), img_size=32,
                 anchor_kwargs=[dict(patch_size=8, embed_dim=e, depth=2, num_heads=2) for e in (16, 32)])


def _normalise(raw: torch.Tensor, mean, std) -> torch.Tensor:
    return (raw - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


@pytest.mark.parametrize('norm', [None, ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))])
def test_anchors_with_their_own_normalisation(norm, tmp_path):
    """One input normalisation (the first anchor's, or one named): each anchor config equals its plain timm model on
    the same raw image, stitches and exports run on it, and a saved model keeps it."""
    given = {} if norm is None else dict(input_mean=norm[0], input_std=norm[1])
    model = timm.create_model('snnet', **OWN_NORMS, **given).eval()
    own = [(tuple(a.pretrained_cfg['mean']), tuple(a.pretrained_cfg['std'])) for a in model.anchors]
    assert own[0] != own[1]
    mean, std = norm or own[0]
    assert (model.pretrained_cfg['mean'], model.pretrained_cfg['std']) == (mean, std)
    assert sorted(model.input_conversions) == (['1'] if norm is None else ['0', '1'])
    raw = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = _normalise(raw, mean, std)
    for a in range(2):
        plain = model.anchors[a](_normalise(raw, *own[a]))
        torch.testing.assert_close(model(x, stitch_id=a), plain, rtol=1e-5, atol=1e-5)
    k = model.num_configs - 1
    torch.testing.assert_close(model.export_stitch(k).eval()(x), model(x, stitch_id=k), rtol=0, atol=1e-6)
    save_snnet(model, tmp_path / 'repo', readme=False)
    loaded = timm.create_model(f'local-dir:{tmp_path / "repo"}', pretrained=True).eval()
    assert (loaded.input_mean, loaded.input_std) == (mean, std)
    assert torch.equal(loaded(x, stitch_id=1), model(x, stitch_id=1))


def test_default_anchors():
    """`timm.create_model('snnet')` builds, as timm builds every listed name: its default anchors, its cfg theirs."""
    model = timm.create_model('snnet')
    assert model.anchor_names == ('convnext_atto', 'convnext_femto') and len(model.stitch_configs()) > 2
    assert model.pretrained_cfg['mean'] == timm.get_pretrained_cfg('convnext_femto').mean


def test_bad_anchors_get_clear_errors():
    with pytest.raises(TypeError, match=r"snnet needs anchors=\(name, name, ...\).*convnext_atto"):
        timm.create_model('snnet', anchors='resnet50')
    with pytest.raises(TypeError, match=r'no SN-Net adapter for VGG .*(nearest supported|supported anchor)'):
        timm.create_model('snnet', anchors=('vgg11', 'vgg13'))
    with pytest.raises(ValueError, match=r"stage counts differ .*VisionTransformer.*1 stage.*ResNet.*4 stage.*"
                                         r"join='reduction'"):
        timm.create_model('snnet', anchors=('deit_tiny_patch16_224', 'resnet18'), join='stage')
    with pytest.raises(ValueError, match=r'no spatial reduction is shared .*deit_tiny_patch16_224 .*\[16\]; '
                                         r'eva02_tiny_patch14_224 .*\[14\]'):
        timm.create_model('snnet', anchors=('deit_tiny_patch16_224', 'eva02_tiny_patch14_224'))
    with pytest.raises(ValueError, match=r'normalises 3 input channel\(s\) \(mean \(0.485.*has 1 \(mean \(0.5,\).*'
                                         r'cannot change the channel count'):
        timm.create_model('snnet', anchors=('deit_tiny_patch16_224', 'vit_tiny_patch16_224'), input_mean=(0.5,),
                          input_std=(0.5,))
    with pytest.raises(ValueError, match=r'token sequences differ \(1 and 5 class / register tokens'):
        timm.create_model('snnet', anchors=('deit_tiny_patch16_224', 'deit_small_patch16_224'), sort_anchors=False,
                          anchor_kwargs=[{}, dict(reg_tokens=4)])
    with pytest.raises(ValueError, match='the generic snnet has no published weights.*pretrained_anchors=True'):
        timm.create_model('snnet', pretrained=True, **CONVNEXT)


def test_can_stitch():
    assert can_stitch('convnext_atto') and can_stitch('levit_128') and can_stitch('deit_tiny_distilled_patch16_224')
    assert not can_stitch('vgg11')
    assert can_stitch(timm.create_model('efficientnet_b0', device='meta'))
