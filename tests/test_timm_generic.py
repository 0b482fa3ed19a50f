"""timm's own model tests (tests/test_models.py from timm's sdist), run on each SN-Net as timm runs them on its anchors.

`make test` fetches that file into .venv/timm-tests. A timm test runs on an SN-Net when timm runs it on every one of
its anchors' architectures: the test's own `model_name` list (built by timm's filters: NON_STD_FILTERS,
EXCLUDE_FILTERS, FEAT_INTER_FILTERS, ...) holds them all. So Swin and ResNet SN-Nets take the standard cfg test and
the features_only test, DeiT takes the non-standard one, as in timm. Left out: torchscript tests (timm deprecates
them), and tests that need published pretrained weights (`pretrained=True`): none are published yet.
`test_timm_selection` prints the selection per model. Full-size models, as timm uses.

timm's prune contract (prunes a deep copy at every feature index; timm keeps it out of its own CI as slow) takes 25-61
s on the full-size DeiT and Swin SN-Nets. Their families keep it in `make test` through `snnetfam_deit_distilled`
and `snnet_resnet18_swin_ti`; `SNNET_TIMM_TESTS_ALL=1` runs it on them too.
"""
import importlib.util
import inspect
import os
from functools import lru_cache, partial
from pathlib import Path

import pytest
import timm
import torch

TIMM_TESTS = Path(os.environ.get('TIMM_TESTS_DIR', Path(__file__).resolve().parents[1] / '.venv' / 'timm-tests'))
NEEDS_WEIGHTS = ('test_model_load_pretrained', 'test_model_features_pretrained')
# ours (the generic `snnet` on its default anchors too), then one per adapter family
MODELS = timm.list_models('snnet') + timm.list_models('snnet_*') + timm.list_models('snnetfam_*')


@lru_cache(None)
def _timm_tests():
    path = TIMM_TESTS / 'test_models.py'
    if not path.exists():
        pytest.fail(f'{path} missing: run `make timm-tests` (make test does it)')
    spec = importlib.util.spec_from_file_location('timm_generic_test_models', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model_names(test) -> list[str]:
    """The `model_name` list timm parametrizes a test with (empty when it has none)."""
    for mark in getattr(test, 'pytestmark', []):
        if mark.name == 'parametrize' and mark.args[0].split(',')[0].strip() == 'model_name':
            return [v if isinstance(v, str) else v[0] for v in mark.args[1]]
    return []


def _meta_model(model_name: str):
    with torch.device('meta'):
        return timm.create_model(model_name, device='meta')


@lru_cache(None)
def _anchor_archs(model_name: str) -> tuple[str, ...]:
    """The anchors' architectures from the SN-Net's cfg notes (`anchors: a, b`, written by timm_snnet's snnet_cfg):
    collecting builds no model (test_timm_selection checks them against the built SN-Nets)."""
    note = next(n for n in timm.models.get_pretrained_cfg(model_name).notes if n.startswith('anchors: '))
    return tuple(a.split('.')[0] for a in note[len('anchors: '):].split(', '))


@lru_cache(None)
def timm_tests_for(model_name: str) -> tuple[str, ...]:
    """The tests of timm's test_models.py that timm runs on every anchor of `model_name` (torchscript excluded)."""
    module, archs = _timm_tests(), _anchor_archs(model_name)
    out = []
    for name, test in inspect.getmembers(module, inspect.isfunction):
        marks = {m.name for m in getattr(test, 'pytestmark', [])}
        if not name.startswith('test_') or 'torchscript' in name or 'torchscript' in marks or name in NEEDS_WEIGHTS:
            continue
        names = {n.split('.')[0] for n in _model_names(test)}  # tags dropped
        if names and all(a in names for a in archs):
            out.append(name)
    return tuple(out)


SLOW_CASES = () if os.environ.get('SNNET_TIMM_TESTS_ALL') == '1' else (
    ('snnet_deit_tsb', 'test_prune_intermediate_layers_contract'),
    ('snnet_swin_tsb', 'test_prune_intermediate_layers_contract'),
)


def _cases() -> list[tuple[str, str]]:
    if not (TIMM_TESTS / 'test_models.py').exists():
        return [(m, 'missing') for m in MODELS]
    return [(m, t) for m in MODELS for t in timm_tests_for(m) if (m, t) not in SLOW_CASES]


def test_timm_selection():
    """Per model, which of timm's tests run: the same split as timm's (standard cfg test for Swin / ResNet)."""
    for m in MODELS:
        print(f'{m} ({", ".join(_anchor_archs(m))}): {", ".join(timm_tests_for(m))}')
        assert _anchor_archs(m) == tuple(a.pretrained_cfg['architecture'] for a in _meta_model(m).anchors), m
    common = {'test_model_forward', 'test_model_backward', 'test_model_forward_fx', 'test_model_backward_fx',
              'test_model_forward_intermediates', 'test_model_forward_intermediates_features',
              'test_prune_intermediate_layers_contract'}
    ours = [m for m in MODELS if not m.startswith('snnetfam_')]  # the snnetfam_* follow timm's split as it is
    for m in ours:
        assert common <= set(timm_tests_for(m)), m
    for m in ('snnetfam_deit_distilled', 'snnet_resnet18_swin_ti'):  # ViT and Swin keep it while SLOW_CASES defer
        assert (m, 'test_prune_intermediate_layers_contract') in _cases(), m
    assert 'test_model_default_cfgs_non_std' in timm_tests_for('snnet_deit_tsb')
    assert 'test_model_default_cfgs' not in timm_tests_for('snnet_deit_tsb')
    for m in ('snnet_swin_tsb', 'snnet_resnet', 'snnet_resnet18_swin_ti'):
        assert {'test_model_default_cfgs', 'test_model_forward_features'} <= set(timm_tests_for(m)), m
        assert 'test_model_default_cfgs_non_std' not in timm_tests_for(m), m


@pytest.mark.slow
@pytest.mark.parametrize('model_name,test_name', _cases())
def test_timm_generic(model_name, test_name, monkeypatch):
    module = _timm_tests()
    test = getattr(module, test_name)
    params = inspect.signature(test).parameters
    if 'backward' in test_name:
        # timm's backward tests assert a gradient on every parameter after one training forward: the opposite of the
        # paper's algorithm, which the default (off_path='skip') follows by leaving parameters off the sampled path
        # out of the graph. 'zero' keeps them in with zero gradients (test_off_path.py checks the default).
        monkeypatch.setattr(module, 'create_model', partial(timm.create_model, off_path='zero'))
    kwargs = {}
    if 'batch_size' in params:
        kwargs['batch_size'] = 2 if 'backward' in test_name else 1
    if 'cfg_device' in params:  # the same value as timm's own fixture
        kwargs['cfg_device'] = 'meta' if module._HAS_DEVICE_CONTEXT else module.torch_device
    if 'model_kwargs' in params:  # timm's per-model head variants (e.g. convnext_atto's MLP pre-logits): ours as built
        kwargs['model_kwargs'] = {}
    test(model_name, **kwargs)
