"""`pretrained=True` without our Hub repos: the authors' release files, served on 127.0.0.1 in their layout (built from
small anchors with their pickled extras), downloaded once, converted once into the cache, and read from there after.
The Hub-protocol server (HF_ENDPOINT) does not hold the repos, except in the test where the Hub wins."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import timm
import torch
from conftest import TINY
from hub_fixtures import hub_endpoint, hub_server, set_hub_offline  # noqa: F401 (fixtures)
from hub_server import HubServer
from test_convert import _RAN, _official, _Payload
from test_hub import RECIPES as HUB_RECIPES

from timm_snnet import HF_HUB_ORG, push_snnet, save_snnet
from timm_snnet._convert import convert_official_v1
from timm_snnet._load import SNNetLoadError
from timm_snnet._releases import REFERENCE_DIR, RELEASES
from timm_snnet._sources import RELEASE_URL_ENV, official_dir

ROOT = Path(__file__).resolve().parents[1]
# every release's tiny recipe (kwargs with the authors' depths, the authors' table or None for test_convert's):
# LeViT-192/256's 4-4-4 depths give the published 8 configs
RECIPES = {'snnet_levit_192_256': (TINY['snnet_levit_192_256'][0], None), **HUB_RECIPES}
RESNET = RECIPES['snnet_resnet'][0]  # tiny ResNet-18/50 with the authors' depths: the published 10 configs
INPUT = {'snnet_deit_tsb': (3, 32, 32), 'snnet_swin_tsb': (3, 32, 32), 'snnet_resnet': (3, 64, 64),
         'snnet_resnet18_swin_ti': (3, 64, 64), 'snnet_levit_192_256': (3, 64, 64)}


class ReleaseServer:
    """Serves `files` ({'/v1.0/snnet_deit.pth': bytes}) on 127.0.0.1 like a release host; logs every request."""

    def __init__(self, delay: float = 0.0):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.delay = delay
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(('GET', self.path))
                time.sleep(server.delay)
                body = server.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header('Content-Length', str(len(body or b'')))
                self.end_headers()
                self.wfile.write(body or b'')

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self._httpd.server_address[1]}'
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def serve(self, name: str, data: bytes) -> None:
        self.files[f'/{RELEASES[name].file}'] = data

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def release(hub_endpoint: str, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    server = ReleaseServer()
    monkeypatch.setenv(RELEASE_URL_ENV, server.url)
    yield server
    server.close()


def _file(name: str, tmp_path: Path, edit=None) -> Path:
    kwargs, table = RECIPES[name]
    return _official(name, tmp_path / 'authors', edit=edit, kwargs=kwargs, table=table)[0]


def _outputs(model, name: str) -> list[torch.Tensor]:
    x = torch.randn(2, *INPUT[name], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return [model.eval()(x, stitch_id=i) for i in range(model.num_configs)]


def _published(name: str) -> list[dict]:
    return [json.loads(line) for line in (REFERENCE_DIR / RELEASES[name].reference).read_text().splitlines()]


def _cache_files(name: str, kwargs: dict) -> list[str]:
    """Everything under the release cache but lock files."""
    root = official_dir(name, kwargs).parent
    return sorted(str(p.relative_to(root)) for p in root.rglob('*') if not p.name.endswith('.lock')) \
        if root.exists() else []


@pytest.mark.parametrize('name', sorted(RELEASES))
def test_fallback_converts_the_release(name: str, release: ReleaseServer, hub_server: HubServer,  # noqa: F811
                                       tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = _file(name, tmp_path)
    release.serve(name, ckpt.read_bytes())
    kwargs = RECIPES[name][0]
    with caplog.at_level(logging.INFO, logger='timm_snnet._sources'):
        model = timm.create_model(name, pretrained=True, **kwargs)
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    assert any(repo in p for _, p in hub_server.requests)  # the Hub was asked first
    assert release.requests == [('GET', f'/{RELEASES[name].file}')]
    assert f"{name}: pretrained weights from the authors' release {RELEASES[name].file}, converted in" in caplog.text
    assert f'{name}: converted {RELEASES[name].filename} in' in caplog.text
    assert _cache_files(name, kwargs) == [official_dir(name, kwargs).name + f for f in
                                          ('', '/config.json', '/model.safetensors')]  # no pickle kept

    converted, _ = convert_official_v1(ckpt, name, **kwargs)  # `timm-snnet convert`'s path
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model, name), _outputs(converted, name)))
    args = model._model_args
    assert (args['stitched_final_norm'] is False) == (name == 'snnet_deit_tsb')  # compatibility settings kept
    assert args['layer_assignment'] == converted._model_args.get('layer_assignment')

    table, published = model.stitch_table, _published(name)
    assert [r['top1'] for r in table] == [r['acc1'] for r in published]
    assert all(r['source'].startswith('ziplab/SN-Net v1 published results') for r in table)
    budget = sorted(r['gflops'] for r in table)[len(table) // 2]
    best = max((r for r in table if r['gflops'] <= budget), key=lambda r: r['top1'])
    assert model.select_stitch(max_gflops=budget) == best['id']  # ranks by the authors' accuracy


def test_second_load_offline_and_empty_cache(release: ReleaseServer, hub_server: HubServer,  # noqa: F811
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    name = 'snnet_resnet'
    release.serve(name, _file(name, tmp_path).read_bytes())
    first = timm.create_model(name, pretrained=True, **RESNET)
    hub_server.requests.clear()
    release.requests.clear()

    def no_pickle(*args, **kwargs):
        raise AssertionError('torch.load called on a cached load')

    monkeypatch.setattr(torch, 'load', no_pickle)
    with caplog.at_level(logging.INFO, logger='timm_snnet._sources'):
        second = timm.create_model(name, pretrained=True, **RESNET)
    assert not hub_server.requests and not release.requests  # no network, no pickle
    assert "from the authors' release" in caplog.text and 'converted resnet_18_50.pth in' not in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(_outputs(first, name), _outputs(second, name)))

    set_hub_offline(monkeypatch)
    offline = timm.create_model(name, pretrained=True, **RESNET)  # filled cache: loads
    assert offline.stitch_table == first.stitch_table and not release.requests

    empty = tmp_path / 'empty-cache'
    with pytest.raises(SNNetLoadError) as info:
        timm.create_model(name, pretrained=True, cache_dir=str(empty), **RESNET)
    text = str(info.value)
    folder = official_dir(name, dict(RESNET, cache_dir=str(empty)))
    for part in (f"Hub repo '{HF_HUB_ORG}/snnet_resnet.in1k'", f'{release.url}/v1.1/resnet_18_50.pth',
                 'HF_HUB_OFFLINE', str(folder), f'place it, unchanged, at {folder.parent / "resnet_18_50.pth"}',
                 RELEASE_URL_ENV):
        assert part in text
    assert not release.requests and not folder.exists()


def _evil(ckpt: dict) -> None:
    ckpt['args'] = _Payload()


def _extra_key(ckpt: dict) -> None:
    ckpt['state_dict']['module.anchors.1.fc.extra'] = torch.zeros(1)


@pytest.mark.parametrize('case', ['truncated', 'html', 'corrupt', 'unexpected key', 'disallowed class', 'missing'])
def test_bad_release_is_refused_and_nothing_cached(case: str, release: ReleaseServer, tmp_path: Path) -> None:
    name = 'snnet_resnet'
    good = _file(name, tmp_path).read_bytes()
    data = {
        'truncated': good[:len(good) // 2],
        'html': b'<!DOCTYPE html><html><body>Sign in to continue</body></html>',
        'corrupt': bytes(range(256)) * 64,
        'unexpected key': _file(name, tmp_path / 'x', _extra_key).read_bytes(),
        'disallowed class': _file(name, tmp_path / 'e', _evil).read_bytes(),
        'missing': None,
    }[case]
    if data is not None:
        release.serve(name, data)
    url = f'{release.url}/v1.1/resnet_18_50.pth'
    expected = {'truncated': 'it is truncated', 'html': 'it is a web page or error message, not a checkpoint',
                'corrupt': 'does not convert', 'unexpected key': r'1 unmapped \(anchors.1.fc.extra\)',
                'disallowed class': r'weights_only=True does not build \(test_convert._side_effect\)',
                'missing': '404'}[case]
    _RAN.clear()
    with pytest.raises(SNNetLoadError, match=expected) as info:
        timm.create_model(name, pretrained=True, **RESNET)
    assert url in str(info.value) and 'resnet_18_50.pth' in str(info.value)
    assert f"Hub repo '{HF_HUB_ORG}/snnet_resnet.in1k'" in str(info.value)  # every source tried is named
    assert not _RAN  # nothing from the pickle ran
    assert _cache_files(name, RESNET) == []  # no download, no folder: nothing a later load would trust

    release.serve(name, good)  # the next load, with the right file, converts it
    model = timm.create_model(name, pretrained=True, **RESNET)
    assert [r['top1'] for r in model.stitch_table] == [r['acc1'] for r in _published(name)]


def test_hub_wins_when_the_repo_exists(release: ReleaseServer, hub_server: HubServer,  # noqa: F811
                                       tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    name = 'snnet_resnet'
    ckpt = _file(name, tmp_path)
    release.serve(name, ckpt.read_bytes())
    published, _ = convert_official_v1(ckpt, name, **RESNET)
    with torch.no_grad():
        for p in published.parameters():
            p.mul_(0.5)  # not the release's weights: shows which source was read
    push_snnet(published, f'{HF_HUB_ORG}/snnet_resnet.in1k')
    with caplog.at_level(logging.INFO, logger='timm_snnet._sources'):
        model = timm.create_model(name, pretrained=True, **RESNET)
    assert not release.requests and f"pretrained weights from the Hub repo '{HF_HUB_ORG}/snnet_resnet.in1k'" \
        in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model, name), _outputs(published, name)))


def test_official_tag_reads_only_the_release(release: ReleaseServer, hub_server: HubServer,  # noqa: F811
                                             tmp_path: Path) -> None:
    name = 'snnet_resnet'
    assert f'{name}.official_in1k' in timm.list_pretrained('snnet_*')
    release.serve(name, _file(name, tmp_path).read_bytes())
    model = timm.create_model(f'{name}.official_in1k', pretrained=True, **RESNET)
    assert not hub_server.requests and len(release.requests) == 1
    folder = save_snnet(model, tmp_path / 'saved', readme=False)  # save_for_hf round trip: no source kwargs
    assert 'file' not in json.loads((folder / 'config.json').read_text())['pretrained_cfg']
    again = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(again, name), _outputs(model, name)))
    assert again.stitch_table == model.stitch_table
    reset = timm.create_model(f'{name}.official_in1k', pretrained=True, num_classes=7, **RESNET)  # timm drops heads
    assert reset.num_classes == 7 and len(release.requests) == 1  # from the cache
    assert torch.equal(reset.anchors[0].conv1.weight, model.anchors[0].conv1.weight)


_LOAD = """
import hashlib, json, logging, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import timm, timm_snnet
logging.basicConfig(level=logging.INFO, format='%(message)s')
Path(sys.argv[2]).touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.01)
model = timm.create_model('snnet_resnet', pretrained=True, **json.loads(sys.argv[1]))
print('DIGEST', hashlib.sha256(b''.join(t.numpy().tobytes() for t in model.state_dict().values())).hexdigest())
"""


@pytest.mark.slow
def test_two_processes_convert_once(hub_server: HubServer, tmp_path: Path) -> None:  # noqa: F811
    name = 'snnet_resnet'
    server = ReleaseServer(delay=0.5)  # both processes are waiting on the lock while the file downloads
    server.serve(name, _file(name, tmp_path).read_bytes())
    env = {**os.environ, 'HF_ENDPOINT': hub_server.url, 'HF_HOME': str(tmp_path / 'hf'), 'HF_HUB_OFFLINE': '0',
           'HF_HUB_CACHE': str(tmp_path / 'hf' / 'hub'), 'HF_HUB_DISABLE_XET': '1', 'HF_HUB_DISABLE_TELEMETRY': '1',
           'NO_PROXY': '127.0.0.1,localhost', 'no_proxy': '127.0.0.1,localhost', RELEASE_URL_ENV: server.url,
           'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), 'OMP_NUM_THREADS': '1'}
    go = tmp_path / 'go'
    procs = [subprocess.Popen([sys.executable, '-c', _LOAD, json.dumps(RESNET), str(tmp_path / f'ready{i}'), str(go)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        deadline = time.time() + 120
        while not all((tmp_path / f'ready{i}').exists() for i in range(2)) and time.time() < deadline:
            time.sleep(0.05)
        go.touch()  # both start loading at the same moment
        outputs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
        server.close()
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    logs = ''.join(err for _, err in outputs)
    assert logs.count('snnet_resnet: converted resnet_18_50.pth in') == 1  # one conversion
    assert logs.count("snnet_resnet: pretrained weights from the authors' release") == 2
    assert len(server.requests) == 1  # one download
    digests = {line for out, _ in outputs for line in out.splitlines() if line.startswith('DIGEST')}
    assert len(digests) == 1  # the same weights in both
