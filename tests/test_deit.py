"""snnet_deit_tsb at full size: registry, the 71 official configs, FLOPs/params, pretrained anchors."""
import dataclasses
import json
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from timm_snnet._configs import enumerate_configs
from timm_snnet._releases import REFERENCE_DIR

REFERENCE = REFERENCE_DIR  # the authors' published per-config results (package data)


def _reference(name: str) -> list[dict]:
    path = REFERENCE / f'{name}.official.jsonl'
    if not path.exists():
        pytest.skip(f'reference file {path} not found')
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope='module')
def deit():
    return timm.create_model('snnet_deit_tsb')


def test_registered():
    assert 'snnet_deit_tsb' in timm.list_models('snnet*')


def test_configs_match_official(deit):
    ref = _reference('snnet_deit_tsb')
    start = time.perf_counter()
    configs = deit.stitch_configs()
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f'config table took {elapsed:.1f}s'
    assert [c.id for c in configs] == [r['cfg_id'] for r in ref] == list(range(71))
    for c, r in zip(configs, ref):
        assert c.gflops * 1e9 == pytest.approx(r['flops'], rel=0.01), c
        assert c.params == pytest.approx(r['params'], rel=0.01), c
    assert [round(c.gflops, 2) for c in configs[:3]] == [1.26, 4.61, 17.58]
    # anchors are exact; stitched configs differ only by the back final norm (FLOPs) and front pos/cls (params)
    assert all(c.gflops * 1e9 == r['flops'] and c.params == r['params'] for c, r in zip(configs[:3], ref))


def test_config_records(deit):
    configs = deit.stitch_configs()
    c = configs[3]
    assert (c.front, c.back, c.front_block, c.back_block, c.layer) == (0, 1, 0, 0, 0)
    assert deit.describe(c) == 'Ti[0..0] -> S[0..]'
    assert deit.describe(configs[36]) == 'Ti[0..11] -> S[11..]' and configs[37].front == 1
    assert len({c.layer for c in configs if not c.is_anchor}) == len(deit.stitch_layers) == 22
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.id = 5


@pytest.mark.parametrize('kernel_size,stride,count', [(1, 1, 27), (2, 1, 71), (3, 1, 111), (4, 1, 147), (2, 2, 51)])
def test_window_counts(kernel_size, stride, count):
    configs, _ = enumerate_configs([[12]] * 3, kernel_size=kernel_size, stride=stride)
    assert len(configs) == count


def test_window_kwargs_reach_model():
    model = timm.create_model('snnet_deit_tsb', kernel_size=3, device='meta')
    assert model.num_configs == 111


def test_pretrained_anchors_through_timm(tmp_path):
    """pretrained_anchors=True loads each anchor through timm's own pretrained path (local files here)."""
    kwargs = [dict(patch_size=8, embed_dim=e, depth=2, num_heads=2) for e in (16, 32, 48)]
    sources = []
    for i, kw in enumerate(kwargs):
        src = timm.create_model('deit_tiny_patch16_224', img_size=32, **kw)
        path = tmp_path / f'anchor{i}.safetensors'
        save_file(src.state_dict(), str(path))
        sources.append(src)
        kw['pretrained_cfg_overlay'] = dict(file=str(path), hf_hub_id=None, url=None)
    model = timm.create_model('snnet_deit_tsb', img_size=32, anchor_kwargs=kwargs, pretrained_anchors=True).eval()
    x = torch.randn(2, 3, 32, 32)
    for i, src in enumerate(sources):
        for (name, p), q in zip(model.anchors[i].state_dict().items(), src.state_dict().values()):
            assert torch.equal(p, q), name
        with torch.no_grad():
            assert torch.allclose(model(x, stitch_id=i), src.eval()(x), atol=1e-6)
