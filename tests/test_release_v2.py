"""`pretrained=True` for SN-Netv2 without our Hub repo: the authors' Hub repo (`ziplab/snnetv2_deit3_s_l_imagenet_1k`)
on the local Hub-protocol server holds a synthetic checkpoint in their layout (tiny DeiT-III S/L anchors with the real
12 / 24 depths, so all 135 configs and the published S -> L table apply); it is downloaded with `hf_hub_download`,
converted once into the cache, and read from there after, by the same chain as the v1 release files."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
from hub_fixtures import hub_endpoint, hub_server, set_hub_offline  # noqa: F401 (fixtures)
from hub_server import HubServer
from huggingface_hub import HfApi, try_to_load_from_cache
from test_snnetv2 import ROWS, TINY_V2, _authors_checkpoint, _x

from timm_snnet import HF_HUB_ORG
from timm_snnet._convert import convert_official_v2, official_stitch_table
from timm_snnet._load import SNNetLoadError
from timm_snnet._releases import HUB_RELEASES
from timm_snnet._sources import official_dir, official_rows

NAME = 'snnetv2_deit3_s_l'
REPO, FILE = HUB_RELEASES[NAME].repo_id, HUB_RELEASES[NAME].file
OURS = f'{HF_HUB_ORG}/{NAME}.in22k_ft_in1k'


@pytest.fixture(scope='module')
def authors(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """The authors'-layout file and its conversion by `convert_official_v2` (what `timm-snnet convert` gives)."""
    path = tmp_path_factory.mktemp('authors') / FILE
    _authors_checkpoint(path)
    return path, convert_official_v2(path, NAME, **TINY_V2)[0]


def _publish(data: bytes) -> None:
    api = HfApi()
    api.create_repo(REPO, exist_ok=True)
    api.upload_file(path_or_fileobj=data, path_in_repo=FILE, repo_id=REPO)


def _outputs(model: torch.nn.Module) -> list[torch.Tensor]:
    x = _x()
    with torch.no_grad():
        return [model.eval()(x, stitch_id=i) for i in range(model.num_configs)]


def _file_gets(server: HubServer) -> int:
    return sum(m == 'GET' and p.endswith(f'{REPO}/resolve/main/{FILE}') for m, p in server.requests)


def _official_cache() -> list[str]:
    root = official_dir(NAME, TINY_V2).parent
    return sorted(str(p.relative_to(root)) for p in root.rglob('*') if not p.name.endswith('.lock')) \
        if root.exists() else []


def _pickle_in_hub_cache() -> bool:
    return isinstance(try_to_load_from_cache(REPO, FILE), str)


def test_authors_hub_repo_converted_once(authors, hub_server: HubServer, hub_endpoint: str,  # noqa: F811
                                         monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path, converted = authors
    _publish(path.read_bytes())
    hub_server.requests.clear()
    with caplog.at_level(logging.INFO, logger='timm_snnet._sources'):
        model = timm.create_model(NAME, pretrained=True, **TINY_V2)
    assert any(OURS in p for _, p in hub_server.requests)  # our repo was asked first (absent)
    assert _file_gets(hub_server) == 1
    assert f"pretrained weights from the authors' Hub repo '{REPO}' ({FILE}), converted in" in caplog.text
    assert f'{NAME}: converted {FILE} in' in caplog.text
    folder = official_dir(NAME, TINY_V2).name
    assert _official_cache() == [folder + f for f in ('', '/config.json', '/model.safetensors')]
    assert not _pickle_in_hub_cache()  # downloaded by the load, dropped once converted
    assert model.stitch_rank == 4 and model.num_configs == 135
    expected = _outputs(converted)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model), expected))  # every config

    table = model.stitch_table  # the authors' S -> L results, in their ids (13 was never evaluated)
    assert [r['id'] for r in table] == [r['cfg_id'] for r in ROWS] and 13 not in {r['id'] for r in table}
    assert [(r['top1'], r['top5']) for r in table] == [(r['acc1'], r['acc5']) for r in ROWS]
    assert [r['official_gflops'] for r in table] == [r['flops'] / 1e9 for r in ROWS]
    assert all(r['source'].startswith('ziplab/SN-Netv2 published results') for r in table)
    assert table == official_stitch_table(NAME, converted)  # `timm-snnet convert` attaches the same table
    budget = sorted(r['gflops'] for r in table)[len(table) // 2]
    best = max((r for r in table if r['gflops'] <= budget), key=lambda r: r['top1'])
    assert model.select_stitch(max_gflops=budget) == best['id']

    hub_server.requests.clear()

    def no_pickle(*args, **kwargs):
        raise AssertionError('torch.load called on a cached load')

    monkeypatch.setattr(torch, 'load', no_pickle)
    again = timm.create_model(NAME, pretrained=True, **TINY_V2)
    assert not hub_server.requests  # no request, no pickle
    set_hub_offline(monkeypatch)
    offline = timm.create_model(NAME, pretrained=True, **TINY_V2)
    assert not hub_server.requests and offline.stitch_table == table
    assert all(torch.equal(a, b) for a, b in zip(_outputs(again), expected))


@pytest.mark.parametrize('case', ['html', 'truncated', 'absent'])
def test_bad_or_absent_authors_file_leaves_nothing(case: str, authors, hub_server: HubServer,  # noqa: F811
                                                   hub_endpoint: str) -> None:  # noqa: F811
    good = authors[0].read_bytes()
    data = {'html': b'<!DOCTYPE html><html><body>Sign in to continue</body></html>', 'truncated': good[:len(good) // 2],
            'absent': None}[case]
    if data is not None:
        _publish(data)
    expected = {'html': 'it is a web page or error message, not a checkpoint', 'truncated': 'it is truncated',
                'absent': 'the repo does not exist'}[case]
    with pytest.raises(SNNetLoadError, match=expected) as info:
        timm.create_model(NAME, pretrained=True, **TINY_V2)
    text = str(info.value)
    assert f"Hub repo '{OURS}'" in text and REPO in text and FILE in text  # every source tried is named
    assert 'HF_ENDPOINT' in text and '--from official-v2' in text
    assert _official_cache() == [] and not _pickle_in_hub_cache()  # nothing a later load would trust

    _publish(good)  # the next load, with the right file, converts it
    model = timm.create_model(NAME, pretrained=True, **TINY_V2)
    assert len(model.stitch_table) == len(ROWS)


def test_official_tag_offline_and_tables(authors, hub_server: HubServer, hub_endpoint: str,  # noqa: F811
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _publish(authors[0].read_bytes())
    hub_server.requests.clear()
    model = timm.create_model(f'{NAME}.official_in22k_ft_in1k', pretrained=True, **TINY_V2)
    assert not any(OURS in p for _, p in hub_server.requests) and _file_gets(hub_server) == 1  # the authors' only
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model), _outputs(authors[1])))

    set_hub_offline(monkeypatch)
    empty = Path(authors[0].parent) / 'empty-cache'
    with pytest.raises(SNNetLoadError) as info:
        timm.create_model(NAME, pretrained=True, cache_dir=str(empty), **TINY_V2)
    folder = official_dir(NAME, dict(TINY_V2, cache_dir=str(empty)))
    text = str(info.value)
    for part in (f"(1) Hub repo '{OURS}'", f"(2) the authors' Hub repo '{REPO}', file '{FILE}'", 'HF_HUB_OFFLINE=1',
                 f'place it, unchanged, at {folder.parent / FILE}'):
        assert part in text
    assert not folder.exists()

    # S -> B and B -> L: no published results, no table; S -> L of other depths: not the published configs
    assert official_rows(None, 'snnetv2_deit3_s_b') is None and official_rows(None, 'snnetv2_deit3_b_l') is None
    shallow = timm.create_model(NAME, img_size=32, stitch_rank=4, anchor_kwargs=[
        dict(patch_size=8, embed_dim=e, num_heads=2, depth=d) for e, d in ((16, 4), (32, 8))])
    assert shallow.num_configs != 135 and official_rows(shallow, NAME) is None
