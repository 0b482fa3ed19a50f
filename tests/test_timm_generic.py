"""timm's own generic model tests (tests/test_models.py from timm's sdist) run against every snnet model.

`make test` fetches that file into .venv/timm-tests. SN-Nets are ViT-like in their heads, so they take the
non-standard cfg test, the way timm treats `deit*`.
"""
import importlib.util
import inspect
import os
from functools import partial
from pathlib import Path

import pytest
import timm

TIMM_TESTS = Path(os.environ.get('TIMM_TESTS_DIR', Path(__file__).resolve().parents[1] / '.venv' / 'timm-tests'))
GENERIC = ('test_model_forward', 'test_model_backward', 'test_model_default_cfgs_non_std',
           'test_model_forward_fx', 'test_model_backward_fx')


def _load_timm_tests():
    path = TIMM_TESTS / 'test_models.py'
    if not path.exists():
        pytest.skip(f'{path} missing: run `make timm-tests` (make test does it)')
    spec = importlib.util.spec_from_file_location('timm_generic_test_models', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def timm_tests():
    return _load_timm_tests()


@pytest.mark.slow
@pytest.mark.parametrize('test_name', GENERIC)
@pytest.mark.parametrize('model_name', timm.list_models('snnet_*'))
def test_timm_generic(timm_tests, test_name, model_name, monkeypatch):
    test = getattr(timm_tests, test_name)
    if 'backward' in test_name:
        # timm's backward tests require a gradient on every parameter after one training forward. The default
        # (off_path='skip', the paper) leaves parameters off the sampled path out of the graph; 'zero' keeps them in
        # (test_off_path.py and test_engine.py check the default).
        monkeypatch.setattr(timm_tests, 'create_model', partial(timm.create_model, off_path='zero'))
    kwargs = {}
    if 'cfg_device' in inspect.signature(test).parameters:  # the same value as timm's own fixture
        kwargs['cfg_device'] = 'meta' if timm_tests._HAS_DEVICE_CONTEXT else timm_tests.torch_device
    test(model_name, 2 if 'backward' in test_name else 1, **kwargs)
