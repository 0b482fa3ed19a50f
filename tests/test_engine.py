"""Engine behaviour on tiny anchors: anchors equal plain timm, ids, round trips, LS init, training, threads."""
import copy
from concurrent.futures import ThreadPoolExecutor

import pytest
import timm
import torch
from conftest import TINY, tiny, tiny_input
from safetensors.torch import load_file, save_file


def _plain_anchor(model, i):
    """A plain timm model of anchor i's class with the same weights."""
    anchor = model.anchors[i]
    plain = copy.deepcopy(anchor)
    assert type(plain) is type(anchor)
    return plain.eval()


def test_anchor_configs_equal_plain_timm(tiny_name):
    model = tiny(tiny_name).eval()
    x = tiny_input(tiny_name)
    for i, anchor in enumerate(model.anchors):
        plain = timm.create_model(model.anchors[i].pretrained_cfg['architecture'],
                                  **{**TINY[tiny_name][0].get('anchor_kwargs', [{}] * 3)[i],
                                     **({'img_size': TINY[tiny_name][0]['img_size']}
                                        if 'img_size' in TINY[tiny_name][0]
                                        and anchor.pretrained_cfg.get('fixed_input_size') else {})}).eval()
        plain.load_state_dict(anchor.state_dict())
        with torch.no_grad():
            diff = (model(x, stitch_id=i) - plain(x)).abs().max().item()
        assert diff <= 1e-5, f'anchor {i} differs from plain timm by {diff}'


@pytest.mark.parametrize('bad', [-1, 10_000, True, False, 1.0, '3', None, 2.5])
def test_bad_stitch_ids_rejected(bad):
    model = tiny('snnet_deit_tsb')
    n = model.num_configs
    if bad is None:
        with pytest.raises(ValueError, match=rf'0\.\.{n - 1}'):
            model.set_stitch(bad)
        return
    with pytest.raises(ValueError, match=rf'valid ids are integers 0\.\.{n - 1}'):
        model.set_stitch(bad)
    with pytest.raises(ValueError, match='valid ids'):
        model(tiny_input('snnet_deit_tsb'), stitch_id=bad)
    assert model.stitch_id == n_anchors(model) - 1


def n_anchors(model):
    return len(model.anchors)


def test_set_stitch_and_kwarg(tiny_name):
    model = tiny(tiny_name, stitch_id=4)
    assert model.stitch_id == 4
    model.set_stitch(0)
    assert model.stitch_id == 0
    assert tiny(tiny_name).stitch_id == n_anchors(model) - 1  # default: the largest anchor
    with pytest.raises(ValueError, match='out of range'):
        tiny(tiny_name, stitch_id=999)


def test_unknown_kwarg_raises_type_error(tiny_name):
    with pytest.raises(TypeError):
        tiny(tiny_name, not_a_kwarg=1)


def test_safetensors_round_trip_every_config(tiny_name, tmp_path):
    model = tiny(tiny_name).eval()
    path = tmp_path / 'model.safetensors'
    save_file(model.state_dict(), str(path))
    other = tiny(tiny_name).eval()
    other.load_state_dict(load_file(str(path)))
    x = tiny_input(tiny_name)
    with torch.no_grad():
        for k in range(model.num_configs):
            assert torch.equal(model(x, stitch_id=k), other(x, stitch_id=k)), f'config {k} differs'


def test_ls_init_reduces_stitching_error(tiny_name):
    torch.manual_seed(0)  # random anchors: for 2 of 12 seeds the R18 -> Swin-T stitches fit worse on held-out images
    model = tiny(tiny_name)
    calib, held_out = tiny_input(tiny_name, 16, seed=1), tiny_input(tiny_name, 8, seed=2)
    before = model.stitching_error(held_out)
    model.init_stitching_layers(calib, num_images=16, progress=False)
    after = model.stitching_error(held_out)
    assert set(before) == set(after) == {c.id for c in model.stitch_configs() if not c.is_anchor}
    improved = sum(after[k] < before[k] for k in before)
    assert improved == len(before), f'LS init improved only {improved}/{len(before)} stitches'


def test_ls_init_stable_on_constant_and_deterministic(tiny_name):
    torch.manual_seed(0)
    model = tiny(tiny_name)
    const = torch.ones(6, *TINY[tiny_name][1])
    model.init_stitching_layers(const, num_images=6, progress=False)
    first = {k: v.clone() for k, v in model.stitch_layers.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in first.values())
    model.init_stitching_layers(const, num_images=6, progress=False)
    assert all(torch.equal(v, first[k]) for k, v in model.stitch_layers.state_dict().items())  # deterministic
    error = model.stitching_error(const)
    # other batching only reorders the float64 sums: the fitted maps agree
    model.init_stitching_layers([(const[:3], None), (const[3:], None)], num_images=6, progress=False)
    assert model.stitching_error(const) == pytest.approx(error, rel=1e-3, abs=1e-7)
    for k, v in model.stitch_layers.state_dict().items():
        torch.testing.assert_close(v, first[k], rtol=1e-3, atol=1e-4)
    with torch.no_grad():
        out = model.eval()(const, stitch_id=model.num_configs - 1)
    assert torch.isfinite(out).all()


def test_ls_init_rejects_bad_data(tiny_name):
    model = tiny(tiny_name)
    with pytest.raises(ValueError, match='no images'):
        model.init_stitching_layers([], progress=False)
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        model.init_stitching_layers([('not images', 1)], progress=False)


def test_train_step_grads_only_on_the_path(tiny_name):
    """The default (off_path='skip'), single process: the sampled path's parameters get gradients, no other does."""
    model = tiny(tiny_name).train()
    model(tiny_input(tiny_name)).mean().backward()
    model._step -= 1  # replay the draw
    off = {f'{m}.{p}' for m, p in model.off_path_names(model.sample_stitch())}
    assert off, 'the sampled path leaves parameters out'
    assert {n for n, p in model.named_parameters() if p.grad is None} == off


def test_train_step_every_param_gets_grad(tiny_name):
    """off_path='zero' (v1): every parameter joins each training step's graph with a zero gradient."""
    model = tiny(tiny_name, off_path='zero').train()
    x = tiny_input(tiny_name)
    out = model(x)
    sampled = int(model.sample_step) - 1
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no grad for {missing[:5]}'
    # the output is exactly the sampled path's output (replayed in train mode: BatchNorm uses batch statistics)
    model._step = sampled  # replay the same draw
    with torch.no_grad():
        k = model.sample_stitch()
        assert torch.equal(out.detach(), model(x, stitch_id=k))


def test_sampling_sequence_is_seeded_and_resumes(tiny_name):
    a, b = tiny(tiny_name, stitch_seed=7).train(), tiny(tiny_name, stitch_seed=7).train()
    seq_a = [a.sample_stitch() for _ in range(20)]
    assert seq_a == [b.sample_stitch() for _ in range(20)]
    assert len(set(seq_a)) > 3
    c = tiny(tiny_name, stitch_seed=7)
    c.load_state_dict(a.state_dict())  # resume: continues, does not restart
    assert int(c.sample_step) == 20
    assert [c.sample_stitch() for _ in range(5)] == [a.sample_stitch() for _ in range(5)]


def test_sampling_weights(tiny_name):
    model = tiny(tiny_name)
    weights = [0.0] * model.num_configs
    weights[1] = 1.0
    model.set_sampling_weights(weights)
    assert {model.sample_stitch() for _ in range(20)} == {1}
    with pytest.raises(ValueError, match='non-negative'):
        model.set_sampling_weights([1.0])


def test_per_call_stitch_thread_safe(tiny_name):
    model = tiny(tiny_name).eval()
    x = tiny_input(tiny_name)
    ids = list(range(model.num_configs)) * 2
    with torch.no_grad():
        expected = {k: model(x, stitch_id=k) for k in set(ids)}
        active = model.stitch_id
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda k: (k, model(x, stitch_id=k)), ids))
    assert model.stitch_id == active
    for k, out in outs:
        assert torch.equal(out, expected[k]), f'config {k} differs under threads'


def test_timm_contract(tiny_name):
    model = tiny(tiny_name, num_classes=7, drop_rate=0.1, drop_path_rate=0.1, in_chans=3).eval()
    x = tiny_input(tiny_name)
    for k in (0, model.num_configs - 1, 3):
        model.set_stitch(k)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        assert model.forward_head(feats).shape == (2, 7)
        back = model.stitch_configs()[k].back
        assert model.num_features == model.anchors[back].num_features
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == (2, model.num_features)
    assert all(m.num_classes == 0 for m in model.anchors)
    nwd = model.no_weight_decay()
    assert all(n.startswith('anchors.') for n in nwd)
    assert bool(nwd) == any(hasattr(m, 'no_weight_decay') for m in model.anchors)
    groups = model.group_matcher()
    assert 'stem' in groups and 'blocks' in groups
    from timm.models import group_parameters
    grouped = group_parameters(model, groups)
    assert sum(len(v) for v in grouped.values()) == len(list(model.parameters()))
    cfg = model.pretrained_cfg
    assert isinstance(cfg['first_conv'], tuple) and len(cfg['first_conv']) == len(model.anchors)
    assert isinstance(cfg['classifier'], tuple)
    state = model.state_dict()
    assert all(f'{c}.weight' in state for c in cfg['first_conv'])


def test_grad_checkpointing_same_output(tiny_name):
    model = tiny(tiny_name).eval()
    x = tiny_input(tiny_name)
    ref = model(x, stitch_id=3)
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x, stitch_id=3), ref)


def test_meta_device_construction(tiny_name):
    model = tiny(tiny_name, device='meta')
    assert all(p.is_meta for p in model.parameters())


def test_wrong_image_size_is_clear(tiny_name):
    model = tiny(tiny_name).eval()
    if not model.pretrained_cfg['fixed_input_size']:
        pytest.skip('the anchors take any image size')
    with pytest.raises(ValueError, match='image size'):
        model(torch.randn(1, 3, 40, 40))
