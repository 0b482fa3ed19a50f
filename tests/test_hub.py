"""Hub round trips over real HTTP (local Hub-protocol server), offline loads, local-dir:, and every load error."""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import TINY, tiny, tiny_input
from hub_fixtures import hub_endpoint, hub_server, set_hub_offline  # noqa: F401 (fixtures)
from hub_server import HubServer
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download
from safetensors.torch import save_file
from test_convert import SWIN_TSB, _deit_table, _official

from timm_snnet import HF_HUB_ORG, push_snnet, save_snnet
from timm_snnet._load import SNNetLoadError, load_snnet
from timm_snnet._publish import parse_card_table
from timm_snnet._releases import REFERENCE_DIR
from timm_snnet.cli import main as cli

REPO = 'tester/snnet-tiny'
ARCH_ARGS = {'anchors', 'anchor_kwargs', 'names', 'rule', 'stages', 'kernel_size', 'stride', 'layer_assignment',
             'stitched_final_norm', 'stitch_id', 'stitch_table', 'anchor_share', 'off_path'}




def _trained(name: str, **kwargs) -> torch.nn.Module:
    """A tiny SN-Net away from its defaults: perturbed weights, sampler advanced 5 steps, stitch 4 active."""
    torch.manual_seed(0)
    model = tiny(name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    for _ in range(5):
        model.sample_stitch()
    model.set_stitch(4)
    return model.eval()


def _sweep(model, path: Path, ids=None) -> Path:
    """A sweep.json in timm_snnet._evaluate's format (made-up accuracies)."""
    configs = model.stitch_configs()
    rows = [dict(id=c.id, path=model.describe(c), gflops=c.gflops, params=c.params, top1=40 + 2.5 * c.id % 37,
                 top5=70 + c.id % 29, latency_ms_b1=1.0, latency_ms_bN=2.0)
            for c in configs if ids is None or c.id in ids]
    path.write_text(json.dumps(dict(model=model.pretrained_cfg['architecture'], checkpoint=dict(path='x', sha256='0'),
                                    data=dict(root='imagenet', split='val'), device='cpu', batch_size=8, rows=rows)))
    return path


def _outputs(model, name: str) -> list[torch.Tensor]:
    x = tiny_input(name)
    with torch.no_grad():
        return [model(x, stitch_id=i) for i in range(model.num_configs)]


def _assert_same(loaded, model, name: str) -> None:
    assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded, name), _outputs(model, name)))
    assert loaded.stitch_id == model.stitch_id
    assert int(loaded.sample_step) == int(model.sample_step) == loaded._step
    twin = copy.deepcopy(model)
    assert [loaded.sample_stitch() for _ in range(4)] == [twin.sample_stitch() for _ in range(4)]  # sampler resumes
    assert loaded.stitch_table == model.stitch_table


def test_push_then_hf_hub_every_family(hub_endpoint: str, hub_server: HubServer, tmp_path: Path,  # noqa: F811
                                       tiny_name: str) -> None:
    model = _trained(tiny_name)
    sweep = _sweep(model, tmp_path / 'sweep.json')
    push_snnet(model, REPO, sweep=sweep, private=True)
    assert hub_server.repos[('model', REPO)].private
    files = set(HfApi().list_repo_files(REPO))
    assert files == {'.gitattributes', 'config.json', 'model.safetensors', 'README.md', 'pareto.png'}

    loaded = timm.create_model(f'hf-hub:{REPO}', pretrained=True).eval()
    _assert_same(loaded, model, tiny_name)
    assert [r['top1'] for r in loaded.stitch_table] == [r['top1'] for r in json.loads(sweep.read_text())['rows']]

    config = json.loads(Path(hf_hub_download(REPO, 'config.json')).read_text())
    assert config['architecture'] == tiny_name and ARCH_ARGS <= set(config['model_args'])
    assert config['model_args']['stitch_id'] == 4 and config['pretrained_cfg']['hf_hub_filename'] == 'model.safetensors'
    assert not any(p.endswith(('.bin', '.pth')) for _, p in hub_server.requests)  # nothing pickled either way


def test_cli_push_card_matches_sweep(hub_endpoint: str, hub_server: HubServer, tmp_path: Path) -> None:  # noqa: F811
    name = 'snnet_deit_tsb'
    model = _trained(name)
    ckpt = tmp_path / 'trained.safetensors'
    save_file(model.state_dict(), str(ckpt))
    sweep = _sweep(model, tmp_path / 'sweep.json', ids={0, 1, 2, 4, 7})  # a partial sweep: the card lists every id
    HfApi().create_repo(REPO)
    HfApi().upload_file(path_or_fileobj=b'pickle', path_in_repo='pytorch_model.bin', repo_id=REPO)
    kw = TINY[name][0]
    assert cli(['push', '--model', name, '--checkpoint', str(ckpt), '--repo-id', REPO, '--sweep', str(sweep),
                '--private', '--model-kwargs', f'img_size={kw["img_size"]}', f'anchor_kwargs={kw["anchor_kwargs"]}',
                'stitch_id=4']) == 0
    assert set(HfApi().list_repo_files(REPO)) == {'.gitattributes', 'config.json', 'model.safetensors', 'README.md',
                                                 'pareto.png'}  # the old pickle is gone
    assert Path(hf_hub_download(REPO, 'pareto.png')).read_bytes()[:4] == b'\x89PNG'

    card = ModelCard.load(hf_hub_download(REPO, 'README.md'))
    assert card.data.library_name == 'timm' and card.data.license == 'apache-2.0'
    assert {'timm', 'image-classification', 'snnet'} <= set(card.data.tags)
    for line in ('timm.create_model(\'hf-hub:tester/snnet-tiny\', pretrained=True)', 'model.set_stitch(4)',
                 'model.select_stitch(max_gflops=', 'validate.py --model hf-hub:tester/snnet-tiny', '(pareto.png)'):
        assert line in card.text
    table = {int(r['id'].split()[0]): r for r in parse_card_table(card.text)}
    assert sorted(table) == list(range(model.num_configs))
    for row in json.loads(sweep.read_text())['rows']:
        cells = table[row['id']]
        assert cells['path'] == f'`{row["path"]}`'
        assert cells['top-1 (%)'] == f'{row["top1"]:.2f}' and cells['top-5 (%)'] == f'{row["top5"]:.2f}'
        assert cells['params (M)'] == f'{row["params"] / 1e6:.2f}'
    assert table[3]['top-1 (%)'] == '-'  # not measured
    model.set_stitch_table(json.loads(sweep.read_text())['rows'])  # what push stored
    _assert_same(load_snnet(f'hf-hub:{REPO}').eval(), model, name)


def test_registry_name_pretrained_offline_and_empty_cache(hub_endpoint: str, hub_server: HubServer,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pretrained=True reads the default tag's repo (config.json + model.safetensors), never the anchors' weights."""
    name = 'snnet_deit_tsb'
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    assert repo == f'{HF_HUB_ORG}/snnet_deit_tsb.in1k'
    model = _trained(name, stitched_final_norm=False)
    push_snnet(model, repo)
    loaded = timm.create_model(name, pretrained=True, pretrained_anchors=True).eval()  # tiny: from config.json
    _assert_same(loaded, model, name)
    assert loaded.stitched_final_norm is False
    assert not any('deit_tiny_patch16_224' in p for _, p in hub_server.requests)  # no anchor weights
    reset = timm.create_model(name, pretrained=True, num_classes=7)  # timm drops every anchor's head
    assert reset.num_classes == 7 and torch.equal(reset.anchors[0].blocks[0].attn.qkv.weight,
                                                  model.anchors[0].blocks[0].attn.qkv.weight)

    set_hub_offline(monkeypatch, True)
    n = len(hub_server.requests)
    _assert_same(timm.create_model(name, pretrained=True).eval(), model, name)
    _assert_same(load_snnet(f'hf-hub:{repo}').eval(), model, name)
    assert len(hub_server.requests) == n

    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'empty-cache'))
    for load in (lambda: load_snnet(f'hf-hub:{repo}'), lambda: timm.create_model(name, pretrained=True)):
        with pytest.raises(SNNetLoadError, match=rf"{repo}', file 'config.json': .*HF_HUB_OFFLINE=1.*unset"):
            load()
    assert len(hub_server.requests) == n


def test_local_dir_round_trip(tmp_path: Path, tiny_name: str) -> None:
    model = _trained(tiny_name)
    folder = save_snnet(model, tmp_path / 'out')  # no measured accuracy: a card without a plot
    assert {p.name for p in folder.iterdir()} == {'config.json', 'model.safetensors', 'README.md'}
    _assert_same(timm.create_model(f'local-dir:{folder}', pretrained=True).eval(), model, tiny_name)
    adapted = timm.create_model(f'local-dir:{folder}', pretrained=True, in_chans=1, num_classes=5)  # timm adapts
    assert adapted.num_classes == 5 and adapted.in_chans == 1
    with pytest.raises(FileExistsError, match='not empty'):
        save_snnet(model, folder)


# --- errors: each names the repo (or folder), the file and what to do, and returns no model ------------------------
def _repo_with(folder: Path, repo: str, drop: str = '', replace: dict | None = None) -> None:
    for name, data in (replace or {}).items():
        (folder / name).write_bytes(data)
    if drop:
        (folder / drop).unlink()
    HfApi().create_repo(repo)
    HfApi().upload_folder(repo_id=repo, folder_path=folder)


def test_missing_repo(hub_endpoint: str) -> None:  # noqa: F811
    with pytest.raises(SNNetLoadError, match=r"Hub repo 'tester/nope', file 'config.json': the repo does not exist.*"
                                             r"timm-snnet push"):
        load_snnet('hf-hub:tester/nope')
    with pytest.raises(SNNetLoadError, match=r"'tester/nope', file 'config.json'.*timm-snnet/snnet_deit_tsb"):
        timm.create_model('snnet_deit_tsb', pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id='tester/nope'))


def test_missing_and_corrupt_weights(hub_endpoint: str, tmp_path: Path) -> None:  # noqa: F811
    model = _trained('snnet_deit_tsb')
    _repo_with(save_snnet(model, tmp_path / 'a', readme=False), 'tester/no-weights', drop='model.safetensors')
    for load in (lambda: load_snnet('hf-hub:tester/no-weights'),
                 lambda: timm.create_model('hf-hub:tester/no-weights', pretrained=True)):
        with pytest.raises(SNNetLoadError, match=r"'tester/no-weights', file 'model.safetensors': the repo has no such "
                                                 r"file.*nothing pickled.*timm-snnet push --model snnet_deit_tsb"):
            load()
    _repo_with(save_snnet(model, tmp_path / 'b', readme=False), 'tester/corrupt',
               replace={'model.safetensors': b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": "b"}  '})
    with pytest.raises(SNNetLoadError, match=r"'tester/corrupt', file 'model.safetensors': it is not a valid "
                                             r"safetensors file.*Delete the cached copy \(.*models--tester--corrupt"):
        load_snnet('hf-hub:tester/corrupt')
    _repo_with(save_snnet(model, tmp_path / 'c', readme=False), 'tester/bad-config',
               replace={'config.json': b'{"architecture": '})
    with pytest.raises(SNNetLoadError, match=r"'tester/bad-config', file 'config.json': it is not valid JSON"):
        load_snnet('hf-hub:tester/bad-config')


def test_other_architecture(hub_endpoint: str) -> None:  # noqa: F811
    timm.models.push_to_hf_hub(timm.create_model('test_resnet', num_classes=3), 'tester/resnet',
                               safe_serialization=True)
    with pytest.raises(SNNetLoadError, match=r"'tester/resnet', file 'config.json' is for architecture 'test_resnet', "
                                             r"which is not an SN-Net.*timm.create_model\('hf-hub:tester/resnet'\)"):
        load_snnet('hf-hub:tester/resnet')
    push_snnet(_trained('snnet_resnet'), REPO)
    with pytest.raises(SNNetLoadError, match=rf"pretrained snnet_deit_tsb: .*'{REPO}', file 'config.json' is for "
                                             r"architecture 'snnet_resnet'"):
        timm.create_model('snnet_deit_tsb', pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=REPO))


def test_anchors_do_not_match(hub_endpoint: str) -> None:  # noqa: F811
    push_snnet(_trained('snnet_deit_tsb'), REPO)
    other = [dict(patch_size=8, embed_dim=e, depth=4, num_heads=2) for e in (16, 32, 64)]
    overlay = dict(hf_hub_id=REPO)
    for load in (lambda: timm.create_model(f'hf-hub:{REPO}', pretrained=True, anchor_kwargs=other),
                 lambda: load_snnet('snnet_deit_tsb', pretrained_cfg_overlay=overlay, anchor_kwargs=other)):
        with pytest.raises(SNNetLoadError, match=rf"'{REPO}', file 'model.safetensors': its tensors do not fit the "
                                                 r"model built here: \d+ tensors differ in shape \(e.g. "
                                                 r"anchors.2.*file \(.*48.*\), model .*64.*create_model\('hf-hub:"):
            load()


def test_local_dir_errors(tmp_path: Path) -> None:
    folder = save_snnet(_trained('snnet_deit_tsb'), tmp_path / 'm', readme=False)
    (folder / 'model.safetensors').unlink()
    with pytest.raises(SNNetLoadError, match=rf"folder '{folder}', file 'model.safetensors': the folder does not "
                                             r"hold it.*timm-snnet convert"):
        load_snnet(f'local-dir:{folder}')
    (folder / 'config.json').unlink()
    with pytest.raises(SNNetLoadError, match=rf"folder '{folder}', file 'config.json'"):
        load_snnet(f'local-dir:{folder}')
    with pytest.raises(ValueError, match='not an SN-Net'):
        load_snnet('resnet18')


def test_push_dry_run_uploads_nothing(hub_endpoint: str, hub_server: HubServer, tmp_path: Path) -> None:  # noqa: F811
    model = _trained('snnet_resnet')
    ckpt = tmp_path / 'c.safetensors'
    save_file(model.state_dict(), str(ckpt))
    kw = TINY['snnet_resnet'][0]
    assert cli(['push', '--model', 'snnet_resnet', '--checkpoint', str(ckpt), '--repo-id', REPO, '--dry-run',
                '--save-dir', str(tmp_path / 'out'), '--model-kwargs', f'anchor_kwargs={kw["anchor_kwargs"]}']) == 0
    assert {p.name for p in (tmp_path / 'out').iterdir()} == {'config.json', 'model.safetensors', 'README.md'}
    assert not hub_server.repos


# --- hub/publish.py: everything up to the upload, then the upload to the local server -------------------------------
REFERENCE = REFERENCE_DIR  # the authors' published per-config results (package data)
RECIPES = {  # tiny anchors with the authors' depths, so that the configs are those of the published results
    'snnet_deit_tsb': (dict(img_size=32, anchor_kwargs=[dict(patch_size=8, embed_dim=e, depth=12, num_heads=2)
                                                        for e in (16, 32, 48)]), _deit_table(12)),
    'snnet_swin_tsb': (SWIN_TSB, None),
    'snnet_resnet': (TINY['snnet_resnet'][0], None),
    'snnet_resnet18_swin_ti': (TINY['snnet_resnet18_swin_ti'][0], None),
}


def _publish_script():
    spec = importlib.util.spec_from_file_location('hub_publish', Path(__file__).resolve().parents[1] / 'hub' /
                                                  'publish.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_publish_recipe(name: str, hub_endpoint: str, tmp_path: Path) -> None:  # noqa: F811
    if not REFERENCE.is_dir():
        pytest.skip(f'reference results {REFERENCE} not found')
    kwargs, table = RECIPES[name]
    ckpt, _, _ = _official(name, tmp_path, kwargs=kwargs, table=table)
    publish = _publish_script()
    assert publish.main([name, '--checkpoint', str(ckpt), '--workdir', str(tmp_path / 'build'), '--reference-dir',
                         str(REFERENCE), '--model-kwargs', *(f'{k}={v!r}' for k, v in kwargs.items())]) == 0

    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    assert repo.startswith(f'{HF_HUB_ORG}/{name}.')
    model = timm.create_model(name, pretrained=True)  # the default tag: SN-Net weights from the published repo
    converted = timm.create_model(f'local-dir:{tmp_path / "build" / name / "converted"}', pretrained=True)
    ours, theirs = model.state_dict(), converted.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k != 'stitch_table_json')  # + the attached table
    published = [json.loads(line) for line in (REFERENCE / publish.RELEASES[name][1]).read_text().splitlines()]
    assert [r['top1'] for r in model.stitch_table] == [r['acc1'] for r in published]
    card = ModelCard.load(hf_hub_download(repo, 'README.md'))
    assert card.data.base_model and publish.RELEASES[name][0].rsplit('/', 1)[1] in card.text
    rows = parse_card_table(card.text)
    assert [r['top-1 (%)'] for r in rows] == [f'{r["acc1"]:.2f}' for r in published]
    args = json.loads(Path(hf_hub_download(repo, 'config.json')).read_text())['model_args']
    assert (args['stitched_final_norm'] is False) == (name == 'snnet_deit_tsb')
    assert (args['layer_assignment'] is None) == (name == 'snnet_deit_tsb')
