"""A saved model folder or Hub repo is untrusted: nothing in it may run code, fetch a file or size an allocation.

Each attack is a config.json edit next to a pickle that writes a marker file when a full unpickler loads it. Every
load route (local-dir:, hf-hub:, load_snnet, a registry name with a Hub repo, the CLI's --checkpoint DIR) must refuse
it with one `SNNetLoadError` naming the key, before the pickle is even opened (a Python audit hook watches).
"""
from __future__ import annotations

import builtins
import json
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import timm
from conftest import TINY, tiny
from hub_fixtures import hub_endpoint, hub_server  # noqa: F401 (fixtures)
from huggingface_hub import HfApi

from timm_snnet import SNNetLoadError, load_snnet, save_snnet
from timm_snnet.cli import main as cli

_OPENED: set[str] = set()
_WATCHED: set[str] = set()


def _audit(event: str, args: tuple) -> None:
    if event == 'open' and args and isinstance(args[0], (str, Path)) and str(args[0]) in _WATCHED:
        _OPENED.add(str(args[0]))


sys.addaudithook(_audit)


class _Payload:
    """Unpickled by a full unpickler, it writes `marker` (weights_only=True refuses it)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f'open({self.marker!r}, "w").write("ran")',)


@pytest.fixture
def trap(tmp_path: Path) -> dict[str, Path]:
    """A pickle that writes a marker when a full unpickler loads it; the audit hook records any open of it."""
    marker, evil = tmp_path / 'MARKER', tmp_path / 'evil.pth'
    data = pickle.dumps({'state_dict': _Payload(marker)})
    evil.write_bytes(data)
    _WATCHED.add(str(evil))
    yield dict(marker=marker, evil=evil, data=data)
    _WATCHED.discard(str(evil))
    assert not marker.exists(), 'a full unpickler ran the pickle'
    assert str(evil) not in _OPENED, 'the pickle was opened'


@pytest.fixture(scope='module')
def saved(tmp_path_factory) -> Path:
    return save_snnet(tiny('snnet_deit_tsb'), tmp_path_factory.mktemp('saved') / 'm', readme=False)


def _edit(config: dict, evil: Path) -> dict[str, Callable[[], None]]:
    """Attacks by name: each edits `config` in place."""
    args, url = config['model_args'], f'file://{evil}'

    def anchor_kw(**kw: Any) -> Callable[[], None]:
        return lambda: args['anchor_kwargs'][0].update(kw)

    def arg(**kw: Any) -> Callable[[], None]:
        return lambda: args.update(kw)

    def anchor(name: str) -> Callable[[], None]:
        return lambda: args['anchors'].__setitem__(0, name)

    return {
        'anchor_kwargs.pretrained_cfg_overlay': anchor_kw(pretrained=True, pretrained_cfg_overlay={'url': url}),
        'anchor_kwargs.pretrained_cfg': anchor_kw(pretrained_cfg={'url': url}),
        'anchor_kwargs.checkpoint_path': anchor_kw(checkpoint_path=str(evil)),
        'anchor_kwargs.pretrained': anchor_kw(pretrained=True),
        'anchor_kwargs.nested_url': anchor_kw(act_kwargs={'path': url}),
        'model_args.pretrained_anchors': arg(pretrained_anchors=True),
        'model_args.anchor_checkpoints': arg(anchor_checkpoints=[str(evil)] * 3),
        'model_args.pretrained_cfg_overlay': arg(pretrained_cfg_overlay={'url': url, 'source': ''}),
        'model_args.checkpoint_path': arg(checkpoint_path=str(evil)),
        'anchor.hf-hub': anchor('hf-hub:evil/weights'),
        'anchor.local-dir': anchor(f'local-dir:{evil.parent}'),
        'anchor.snnet': anchor('snnet_deit_tsb'),
        'anchor.exported_stitch': anchor('exported_stitch'),
        'pretrained_cfg.url': lambda: config['pretrained_cfg'].update(url=url),
        'pretrained_cfg.file': lambda: config['pretrained_cfg'].update(file=str(evil)),
        'pretrained_cfg.hf_hub_filename': lambda: config['pretrained_cfg'].update(hf_hub_filename='evil.pth'),
        'pretrained_cfg.custom_load': lambda: config['pretrained_cfg'].update(custom_load='hf'),
    }


ATTACKS = sorted(_edit({'model_args': {'anchor_kwargs': [{}], 'anchors': ['x']}, 'pretrained_cfg': {}},
                       Path('x')))


def _folder(saved: Path, dest: Path, attack: str, trap: dict) -> Path:
    dest.mkdir()
    for f in ('model.safetensors', 'config.json'):
        (dest / f).write_bytes((saved / f).read_bytes())
    (dest / 'pytorch_model.bin').write_bytes(trap['data'])  # a pickle in the folder too (never read either)
    config = json.loads((saved / 'config.json').read_text())
    _edit(config, trap['evil'])[attack]()
    (dest / 'config.json').write_text(json.dumps(config))
    return dest


@pytest.mark.parametrize('attack', ATTACKS)
def test_local_dir_routes_refuse(attack: str, saved: Path, tmp_path: Path, trap: dict) -> None:
    folder = _folder(saved, tmp_path / 'm', attack, trap)
    for load in (lambda: timm.create_model(f'local-dir:{folder}'), lambda: load_snnet(f'local-dir:{folder}')):
        try:
            load()
        except SNNetLoadError as e:
            assert 'Refusing to load' in str(e) or 'file' in str(e)
        except TypeError as e:  # timm itself: a saved key that collides with create_model's own arguments
            assert 'multiple values' in str(e)
        else:
            pytest.fail(f'{attack}: loaded')
    with pytest.raises(SNNetLoadError, match='Refusing to load'):
        load_snnet(f'local-dir:{folder}')


@pytest.mark.parametrize('command', ['export', 'sweep'])
def test_cli_checkpoint_folder_refuses(command: str, saved: Path, tmp_path: Path, trap: dict,
                                       capsys: pytest.CaptureFixture) -> None:
    from image_folder import make_image_folder
    folder = _folder(saved, tmp_path / 'm', 'anchor_kwargs.pretrained_cfg_overlay', trap)
    extra = (['--stitch', '0', '--output', str(tmp_path / 'out')] if command == 'export' else
             ['--data-dir', str(make_image_folder(tmp_path / 'data', train=1, val=1)), '--output', str(tmp_path / 'o')])
    with pytest.raises(SystemExit) as e:
        cli([command, '--model', 'snnet_deit_tsb', '--checkpoint', str(folder), *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'Refusing to load' in err and 'anchor_kwargs' in err


@pytest.mark.parametrize('attack', ['anchor_kwargs.pretrained_cfg_overlay', 'model_args.anchor_checkpoints',
                                    'anchor.hf-hub', 'pretrained_cfg.hf_hub_filename'])
def test_hub_routes_refuse(attack: str, saved: Path, tmp_path: Path, trap: dict,
                           hub_endpoint: str) -> None:  # noqa: F811
    folder = _folder(saved, tmp_path / 'm', attack, trap)
    HfApi().create_repo('evil/snnet')
    HfApi().upload_folder(repo_id='evil/snnet', folder_path=folder)
    for load in (lambda: load_snnet('hf-hub:evil/snnet'), lambda: timm.create_model('hf-hub:evil/snnet'),
                 lambda: timm.create_model('snnet_deit_tsb', pretrained=True,
                                           pretrained_cfg_overlay=dict(hf_hub_id='evil/snnet'))):
        with pytest.raises((SNNetLoadError, TypeError)):
            load()


def test_pickled_weights_in_a_folder_are_read_weights_only(saved: Path, tmp_path: Path, trap: dict) -> None:
    """timm's save_for_hf writes pytorch_model.bin by default: read with weights_only=True, a payload is refused."""
    folder = tmp_path / 'm'
    folder.mkdir()
    (folder / 'config.json').write_bytes((saved / 'config.json').read_bytes())
    (folder / 'pytorch_model.bin').write_bytes(trap['data'])
    for load in (lambda: timm.create_model(f'local-dir:{folder}', pretrained=True),
                 lambda: load_snnet(f'local-dir:{folder}')):
        with pytest.raises(SNNetLoadError, match='not a torch.save checkpoint'):
            load()


def test_valid_folder_still_loads(saved: Path) -> None:
    model = load_snnet(f'local-dir:{saved}')
    assert model.num_configs == tiny('snnet_deit_tsb').num_configs



def test_bad_argument_values_in_a_folder_are_one_line_refusals(saved: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """An argument value timm refuses with an assert (a pooling name no anchor has), in an SN-Net's or an exported
    stitch's config.json: loading says which folder and why, and the CLI answers in one line with exit 2."""
    stitch = tmp_path / 'stitch'
    timm.models.save_for_hf(tiny('snnet_deit_tsb').export_stitch(1), stitch, safe_serialization=True)
    for src in (saved, stitch):
        folder = tmp_path / f'bad-{src.name}'
        folder.mkdir()
        (folder / 'model.safetensors').write_bytes((src / 'model.safetensors').read_bytes())
        config = json.loads((src / 'config.json').read_text())
        config['model_args']['global_pool'] = 'bogus'
        (folder / 'config.json').write_text(json.dumps(config))
        with pytest.raises(SNNetLoadError, match=rf'Refusing to load local-dir:{folder}: .* do not build a model: '
                                                 r'AssertionError: .*pooling'):
            timm.create_model(f'local-dir:{folder}', pretrained=True)
        with pytest.raises(SystemExit) as e:
            cli(['configs', '--model', f'local-dir:{folder}'])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and 'pooling' in err, err


_BIG = textwrap.dedent('''
    import json, sys, time

    def peak_mb():  # this process's own peak RSS (ru_maxrss would carry over the forking pytest's size)
        line = next(x for x in open('/proc/self/status') if x.startswith('VmHWM:'))
        return int(line.split()[1]) / 1024

    import timm_snnet
    from timm_snnet import SNNetLoadError, load_snnet
    folder, kind = sys.argv[1], sys.argv[2]
    config = json.load(open(folder + '/config.json'))
    args = config['model_args']
    if kind == 'large':  # three ViT-L anchors next to a tiny model's weights
        args['anchors'] = ['vit_large_patch16_224'] * 3
        args['anchor_kwargs'] = [{}] * 3
        args.pop('img_size', None)
    else:  # a million blocks (refused from the header's sizes), or 4000 (stopped by the build's tensor budget)
        args['anchor_kwargs'][0]['depth'] = 10 ** 6 if kind == 'deep' else 4000
    json.dump(config, open(folder + '/config.json', 'w'))
    t = time.perf_counter()
    try:
        load_snnet('local-dir:' + folder)
    except SNNetLoadError as e:
        print(json.dumps(dict(error=str(e), s=time.perf_counter() - t,
                              rss_mb=peak_mb())))
''')


@pytest.mark.parametrize('kind', ['large', 'deep', 'budget'])
def test_size_is_checked_before_allocating(kind: str, saved: Path, tmp_path: Path) -> None:
    folder = tmp_path / 'm'
    folder.mkdir()
    for f in ('model.safetensors', 'config.json'):
        (folder / f).write_bytes((saved / f).read_bytes())
    start = time.perf_counter()
    out = subprocess.run([sys.executable, '-c', _BIG, str(folder), kind], capture_output=True, text=True,
                         timeout=120, env={'HF_HUB_OFFLINE': '1', 'PATH': '/usr/bin:/bin', 'HOME': str(tmp_path),
                                                     'PYTHONPATH': str(Path(__file__).resolve().parents[1])})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result['s'] < 30 and time.perf_counter() - start < 120  # seconds, even on a loaded CI machine
    assert result['rss_mb'] < 1500  # three real ViT-L anchors: 4.4 GB
    expected = {'large': ('differ in shape', 'more than'), 'deep': ('larger than anything the weights file holds',),
                'budget': ('more than',)}[kind]
    assert any(e in result['error'] for e in expected), result['error']


def test_checkpoint_file_pickle_is_refused(tmp_path: Path, trap: dict) -> None:
    from timm_snnet import load_model
    with pytest.raises(ValueError, match='a weights-only load refuses') as e:
        load_model('snnet_deit_tsb', trap['evil'], TINY['snnet_deit_tsb'][0])
    assert 'weights_only=False' not in str(e.value)
    _OPENED.discard(str(trap['evil']))  # read by the weights-only unpickler, which refused it: allowed here


def test_anchor_url_weights_skip_timms_unpickler_fallback(tmp_path: Path, trap: dict,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's URL loader retries a weights_only TypeError with torch.hub's full unpickler; anchors never use it."""
    import timm.models._builder as builder
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(builder, 'load_state_dict_from_url', lambda *a, **k: pytest.fail('timm URL loader used'))
    kwargs = TINY['snnet_deit_tsb'][0]
    overlay = dict(url=f'file://{trap["evil"]}', hf_hub_id=None)  # timm's URL route for this anchor
    anchor_kwargs = [dict(kwargs['anchor_kwargs'][0], pretrained_cfg_overlay=overlay), *kwargs['anchor_kwargs'][1:]]
    with pytest.raises(RuntimeError, match='weights_only'):
        timm.create_model('snnet_deit_tsb', img_size=32, anchor_kwargs=anchor_kwargs, pretrained_anchors=True)
    _OPENED.discard(str(trap['evil']))  # copied by the download and refused by the weights-only unpickler
