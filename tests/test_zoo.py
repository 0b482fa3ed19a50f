"""`timm-snnet zoo-plot`: the derived timm zoo table, dominance counting, the command end to end and its errors.

Fast: no FLOPs are counted here (a hand-made sweep table, or the authors' published counts in place of the meta-device
FLOPs pass, which takes 10-20 s on a full-size SN-Net)."""
import json
from pathlib import Path

import pytest

import timm_snnet._zoo as zoo_module
from timm_snnet._releases import REFERENCE_DIR
from timm_snnet._zoo import ZOO_TABLE, ZooModel, dominance, read_zoo
from timm_snnet.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_zoo_table_ships_and_holds_timms_numbers() -> None:
    rows, meta = read_zoo()
    assert ZOO_TABLE.parent == REFERENCE_DIR and len(rows) > 1000
    assert len(meta['commit']) == 40 and meta['timm_version'].startswith('1.0.')
    by_key = {(r.model, r.img_size): r for r in rows}
    assert len(by_key) == len(rows)  # one row per weight and evaluated size
    # timm's results-imagenet.csv / benchmark tables, as published
    assert by_key[('resnet50.a1_in1k', 224)] == ZooModel('resnet50.a1_in1k', 224, 80.382, 4.11)
    assert by_key[('resnet50.a1_in1k', 288)].gmacs == 6.8
    assert by_key[('swin_tiny_patch4_window7_224.ms_in1k', 224)].gmacs == pytest.approx(4.509, abs=0.01)
    assert all(0 < r.top1 < 100 and 0 < r.gmacs < 5000 and 32 <= r.img_size <= 1024 for r in rows)
    assert '"reference/*.csv"' in (ROOT / 'pyproject.toml').read_text()  # package data: it ships in the wheel


def test_the_same_unit_as_the_snnet_counts() -> None:
    """The Swin-T/S/B anchors of the authors' table (fvcore GFLOPs) against timm's GMACs for the same models."""
    rows, _ = read_zoo()
    timm_gmacs = {r.model.split('.')[0]: r.gmacs for r in rows if r.img_size == 224}
    official = [json.loads(line) for line in (REFERENCE_DIR / 'snnet_swin_tsb.official.jsonl').read_text().splitlines()]
    for cfg, name in zip(official[:3], ('swin_tiny', 'swin_small', 'swin_base')):
        assert cfg['flops'] / 1e9 == pytest.approx(timm_gmacs[f'{name}_patch4_window7_224'], abs=0.01)


def test_dominance_on_a_hand_made_table() -> None:
    points = [dict(id=0, path='A', gmacs=1.0, top1=70.0), dict(id=3, path='A -> B', gmacs=2.004, top1=75.0),
              dict(id=4, path='A -> B', gmacs=2.5, top1=76.0)]
    zoo = [ZooModel('cheaper', 224, 60.0, 0.9),   # fewer GMACs than any point: never dominated
           ZooModel('equal', 224, 70.0, 1.0),     # ties on both: dominated (no more GMACs, no less top-1)
           ZooModel('rounded', 224, 74.0, 2.0),   # 2.004 rounds to the table's 2.00: dominated by id 3
           ZooModel('better', 224, 80.0, 9.0),    # more accurate than every point
           ZooModel('big', 224, 69.0, 3.0)]       # every point: the cheapest (id 0) is `by`
    out = {d['model']: d for d in dominance(points, zoo)}
    assert set(out) == {'equal', 'rounded', 'big'}
    assert out['equal']['by']['id'] == 0 and out['equal']['count'] == 1
    assert out['rounded']['by']['id'] == 3 and out['rounded']['count'] == 1
    assert out['big']['by']['id'] == 0 and out['big']['count'] == 3


def _sweep(path: Path) -> Path:
    rows = [dict(id=0, path='Ti', gflops=1.26, top1=71.0), dict(id=1, path='S', gflops=4.6, top1=79.5),
            dict(id=2, path='Ti[1] -> S[2]', gflops=3.0, top1=78.0), dict(id=3, path='Ti[2] -> S[4]', gflops=2.0,
                                                                            top1=75.0)]
    path.write_text(json.dumps(dict(model='snnet_deit_tsb', rows=rows)))
    return path


def test_command_writes_the_figure_and_the_counts(tmp_path: Path, capsys) -> None:
    table = _sweep(tmp_path / 'sweep.json')
    out = tmp_path / 'out'
    assert main(['zoo-plot', 'snnet_deit_tsb', '--table', str(table), '--output', str(out), '--no-progress']) == 0
    assert 'dominate' in capsys.readouterr().out
    assert (out / 'zoo.png').read_bytes()[:4] == b'\x89PNG'
    result = json.loads((out / 'zoo.json').read_text())
    rows, meta = read_zoo()
    assert result['zoo_models'] == len(rows) and result['zoo']['commit'] == meta['commit']
    assert result['stitches'] == 2 and [a['id'] for a in result['anchors']] == [0, 1]
    # the two stitches, by hand
    stitches = [(3.0, 78.0, 2), (2.0, 75.0, 3)]
    expected = {(r.model, r.img_size) for r in rows for g, t, _ in stitches if g <= r.gmacs and t >= r.top1}
    assert result['dominated'] == len(expected) == len(result['dominated_models']) > 0
    assert {(d['model'], d['img_size']) for d in result['dominated_models']} == expected
    assert all(d['by']['id'] in (2, 3) for d in result['dominated_models'])
    assert str(table) in result['snnet_source'] and result['zoo']['timm_version'] == meta['timm_version']
    # a filter narrows the zoo; existing files are refused without --overwrite
    with pytest.raises(SystemExit) as e:
        main(['zoo-plot', 'snnet_deit_tsb', '--table', str(table), '--output', str(out)])
    assert e.value.code == 2 and '--overwrite' in capsys.readouterr().err
    assert main(['zoo-plot', 'snnet_deit_tsb', '--table', str(table), '--output', str(out), '--overwrite',
                 '--zoo-filter', 'resnet50.*', '--max-gmacs', '5']) == 0
    result = json.loads((out / 'zoo.json').read_text())
    assert 0 < result['zoo_models'] < 40 and result['zoo']['zoo_filter'] == ['resnet50.*']


def test_released_model_uses_the_published_top1(tmp_path: Path, monkeypatch) -> None:
    """Without --table: the model is built on the meta device and its configs carry the authors' top-1 (the FLOPs
    pass is replaced by the authors' own counts, which the release tests check against it)."""
    def published(model, name):
        assert next(model.parameters()).is_meta and name == 'snnet_swin_tsb'
        lines = (REFERENCE_DIR / 'snnet_swin_tsb.official.jsonl').read_text().splitlines()
        return [dict(id=r['cfg_id'], path=('Ti', 'S', 'B')[r['cfg_id']] if r['cfg_id'] < 3 else 'Ti -> S',
                     gflops=r['flops'] / 1e9, top1=r['acc1']) for r in map(json.loads, lines)]

    monkeypatch.setattr(zoo_module, 'official_rows', published)
    result = zoo_module.zoo_plot('snnet_swin_tsb', tmp_path, progress=False)
    assert result['stitches'] == 38 and [a['path'] for a in result['anchors']] == ['Ti', 'S', 'B']
    assert 'snnet_swin_tsb.official.jsonl' in result['snnet_source']
    assert result['dominated'] >= result['dominated_only_by_stitches'] > 0
    assert (tmp_path / 'zoo.png').exists()


@pytest.mark.parametrize('argv, phrase', [
    (['snnet_swin'], "unknown SN-Net 'snnet_swin'"),
    (['resnet50'], "unknown SN-Net 'resnet50'"),
    (['snnetv2_deit3_s_b'], 'no published per-config top-1'),
    (['snnet_deit_tsb', '--table', '{root}/missing.json'], 'no sweep results at'),
    (['snnet_deit_tsb', '--table', '{root}/notes.txt'], 'is not valid JSON'),
    (['snnet_deit_tsb', '--output', '{root}/notes.txt'], 'is a file: pass a folder'),
    (['snnet_deit_tsb', '--zoo-filter', 'nothing*'], 'no zoo model matches'),
    (['snnet_deit_tsb', '--max-gmacs', '-1'], '--max-gmacs must be a positive number'),
    (['snnet_deit_tsb', '--zoo-table', '{root}/notes.txt'], 'model,img_size,top1,gmacs'),
])
def test_bad_input_is_one_line_exit_2(argv: list, phrase: str, tmp_path: Path, capsys) -> None:
    (tmp_path / 'notes.txt').write_text('not json\n')
    argv = [a.format(root=tmp_path) for a in argv]
    if '--output' not in argv:
        argv += ['--output', str(tmp_path / 'out')]
    with pytest.raises(SystemExit) as e:
        main(['zoo-plot', *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    assert phrase in lines[0] and lines[0].startswith('timm-snnet zoo-plot'), lines[0]
    assert not (tmp_path / 'out').exists()
