"""`anchor_checkpoints`: an SN-Net from the user's own anchors (train.py checkpoints, .safetensors, local-dir:),
strict all-or-nothing loading, `timm-snnet init --anchor-checkpoints`, the config.json round trip, and every command
of the "Stitch your own anchors" section of docs/own-anchors.md."""
import argparse
import json
import shlex
import shutil
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import TINY, tiny
from hub_fixtures import hub_endpoint, hub_server  # noqa: F401 (fixtures)
from huggingface_hub import HfApi
from image_folder import make_image_folder
from safetensors import safe_open
from safetensors.torch import save_file
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.data.model_config import resolve_input_data_config
from timm.models import load_checkpoint, save_for_hf
from timm.utils import CheckpointSaver, ModelEmaV3, ParseKwargs, get_outdir

from timm_snnet import save_snnet
from timm_snnet._anchors import AnchorCheckpointError, anchor_checkpoint_records, load_anchor_checkpoints
from timm_snnet._models import DEIT_TSB
from timm_snnet._utils import file_sha256
from timm_snnet.cli import main

NAME = 'snnet_deit_tsb'
CLASSES = 10
KW = TINY[NAME][0]
SIZE = KW['img_size']
KWARGS = [f'{k}={v!r}' for k, v in KW.items()]  # --model-kwargs tokens of the tiny SN-Net
OWN_ANCHORS_DOC = Path(__file__).resolve().parents[1] / 'docs' / 'own-anchors.md'  # its commands run below


def standalone(i: int, num_classes: int = CLASSES) -> torch.nn.Module:
    """Anchor i as its own timm model (what train.py trains)."""
    return timm.create_model(DEIT_TSB[i], img_size=SIZE, num_classes=num_classes, **KW['anchor_kwargs'][i])


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def train_steps(model: torch.nn.Module, seed: int, steps: int = 4) -> tuple[torch.optim.Optimizer, ModelEmaV3]:
    """A few AdamW steps on random labels, with train.py's EMA: trained weights and EMA weights differ."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = ModelEmaV3(model, decay=0.5)
    model.train()
    for step in range(steps):
        loss = F.cross_entropy(model(images(8, seed * 100 + step)), torch.randint(0, CLASSES, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model, step=step)
    return opt, ema


@pytest.fixture(scope='module')
def anchors(tmp_path_factory) -> dict:
    """Ti as a train.py checkpoint (CheckpointSaver), S as .safetensors, B as a save_for_hf folder (local-dir:)."""
    root = tmp_path_factory.mktemp('anchors')
    models, emas = [], []
    for i in range(3):
        model = standalone(i)
        opt, ema = train_steps(model, seed=i)
        models.append(model.eval())
        emas.append(ema.module.eval())
        if i == 0:
            args = argparse.Namespace(model=DEIT_TSB[0], num_classes=CLASSES, lr=1e-2)
            saver = CheckpointSaver(model, opt, args=args, model_ema=ema, checkpoint_dir=str(root / 'ti'),
                                    recovery_dir=str(root / 'ti'))
            (root / 'ti').mkdir()
            saver.save_checkpoint(0, metric=50.0)
        elif i == 1:
            save_file(model.state_dict(), str(root / 's.safetensors'))
        else:
            save_for_hf(model, root / 'b', safe_serialization=True)
    ti = root / 'ti' / 'model_best.pth.tar'
    specs = [str(ti), str(root / 's.safetensors'), f'local-dir:{root / "b"}']
    return dict(root=root, models=models, emas=emas, specs=specs,
                files=[ti, root / 's.safetensors', root / 'b' / 'model.safetensors'])


def assert_anchors_equal(model: torch.nn.Module, expected: list, x: torch.Tensor) -> None:
    """Each anchor config of `model` gives exactly the logits of its standalone model."""
    model.eval()
    with torch.no_grad():
        for i, ref in enumerate(expected):
            if ref is None:
                continue
            model.set_stitch(i)
            assert (model(x) - ref(x)).abs().max().item() == 0, f'anchor config {i}'


# --- loading -----------------------------------------------------------------------------------------------------
def test_snnet_from_anchor_checkpoints_equals_standalone_anchors(anchors) -> None:
    model = tiny(NAME, num_classes=CLASSES, anchor_checkpoints=anchors['specs'])
    assert_anchors_equal(model, anchors['models'], images())


def test_ema_prefix_module_prefix_and_none(anchors, tmp_path) -> None:
    ti = anchors['specs'][0]
    ddp = tmp_path / 'ddp.pth.tar'  # a DDP-wrapped model's keys
    torch.save(dict(state_dict={f'module.{k}': v for k, v in anchors['models'][1].state_dict().items()}), ddp)
    torch.manual_seed(0)
    model = tiny(NAME, num_classes=CLASSES, anchor_checkpoints=[f'ema:{ti}', str(ddp), None])
    assert_anchors_equal(model, [anchors['emas'][0], anchors['models'][1], None], images())
    model.set_stitch(0)
    with torch.no_grad():
        assert not torch.equal(model(images()), anchors['models'][0](images())), 'EMA and trained weights differ'
    torch.manual_seed(0)
    built = tiny(NAME, num_classes=CLASSES)  # None: the anchor as built (same seed, same init)
    for a, b in zip(model.anchors[2].state_dict().values(), built.anchors[2].state_dict().values()):
        assert torch.equal(a, b)


def test_hf_hub_anchor(anchors, hub_endpoint: str) -> None:  # noqa: F811
    """A fine-tuned anchor pushed to the Hub (here a local Hub server) as timm saves it: read by timm's loaders."""
    HfApi().create_repo('me/deit-b-mine')
    HfApi().upload_folder(repo_id='me/deit-b-mine', folder_path=str(anchors['root'] / 'b'))
    specs = [*anchors['specs'][:2], 'hf-hub:me/deit-b-mine']
    model = tiny(NAME, num_classes=CLASSES, anchor_checkpoints=specs)
    assert_anchors_equal(model, anchors['models'], images())
    records = anchor_checkpoint_records(specs, 3)
    assert [r['sha256'] for r in records] == [file_sha256(p) for p in anchors['files']]  # the cached copy's hash


def _only_first(spec: str) -> list:
    return [spec, None, None]


_RAN: list = []


def _side_effect() -> None:
    _RAN.append('ran')


class _Payload:
    """A pickled object that would run code when unpickled by a plain torch.load."""

    def __reduce__(self):
        return _side_effect, ()


def _bad_files(anchors, tmp_path) -> dict:
    state = anchors['models'][0].state_dict()
    resnet = timm.create_model('resnet18', num_classes=CLASSES)
    torch.save(dict(arch='resnet18', state_dict=resnet.state_dict(), args=argparse.Namespace(model='resnet18')),
               tmp_path / 'resnet.pth.tar')
    save_file({k: v for k, v in state.items() if k != 'blocks.0.norm1.weight'}, str(tmp_path / 'missing.safetensors'))
    save_file({**state, 'head_dist.weight': torch.zeros(3)}, str(tmp_path / 'extra.safetensors'))
    torch.save(dict(state_dict=state, args=_Payload()), tmp_path / 'evil.pth.tar')
    torch.save(dict(state_dict=state), tmp_path / 'no_ema.pth.tar')
    return {n: str(tmp_path / n) for n in ('resnet.pth.tar', 'missing.safetensors', 'extra.safetensors',
                                           'evil.pth.tar', 'no_ema.pth.tar')}


@pytest.mark.parametrize('case, kwargs, match', [
    ('ti', {}, r"model_best.pth.tar' for anchor 0 \(deit_tiny_patch16_224\): head.weight has 10 classes in the "
               r'file, the anchor is built with num_classes=1000. Pass num_classes=10'),
    ('missing.safetensors', dict(num_classes=CLASSES),
     r'missing.safetensors.*1 missing keys \(blocks.0.norm1.weight\)'),
    ('extra.safetensors', dict(num_classes=CLASSES), r'extra.safetensors.*1 unexpected keys \(head_dist.weight\)'),
    ('resnet.pth.tar', dict(num_classes=CLASSES), r'resnet.pth.tar.*holds a resnet18, the anchor is a '
                                                  r'deit_tiny_patch16_224'),
    ('local-dir:b', dict(num_classes=CLASSES), r'config.json names architecture deit_base_patch16_224, the anchor is '
                                               r'a deit_tiny_patch16_224'),
    ('s.safetensors', dict(num_classes=CLASSES), r's.safetensors.*differ in shape, e.g. cls_token: file \(1, 1, 32\), '
                                                 r'anchor \(1, 1, 16\)'),
    ('evil.pth.tar', dict(num_classes=CLASSES), r'evil.pth.tar.*weights_only=True does not build '
                                                r'\(test_anchor_checkpoints._side_effect\)'),
    ('ema:no_ema.pth.tar', dict(num_classes=CLASSES), r'no_ema.pth.tar.*has no EMA weights'),
    ('ema:s.safetensors', dict(num_classes=CLASSES), r'holds one state dict: drop the prefix'),
    ('nowhere.pth', dict(num_classes=CLASSES), r"'.*nowhere.pth': no such file"),
    ('', dict(num_classes=CLASSES), r'is a folder: pass local-dir:'),
])
def test_bad_anchor_checkpoint_clear_error_and_no_model(anchors, tmp_path, case, kwargs, match) -> None:
    files = {**_bad_files(anchors, tmp_path), 'ti': anchors['specs'][0], 'local-dir:b': anchors['specs'][2],
             's.safetensors': anchors['specs'][1]}
    ema, name = ('ema:', case[4:]) if case.startswith('ema:') else ('', case)
    spec = ema + files.get(name, str(tmp_path / name))
    _RAN.clear()
    model = None
    with pytest.raises(AnchorCheckpointError, match=match):
        model = tiny(NAME, anchor_checkpoints=_only_first(spec), **kwargs)
    assert model is None and not _RAN, 'no model, and nothing in the pickle ran'


def test_wrong_entry_count_and_nothing_half_loaded(anchors, tmp_path) -> None:
    with pytest.raises(AnchorCheckpointError, match='2 entries for 3 anchors'):
        tiny(NAME, num_classes=CLASSES, anchor_checkpoints=anchors['specs'][:2])
    with pytest.raises(AnchorCheckpointError, match='one entry per anchor'):
        tiny(NAME, num_classes=CLASSES, anchor_checkpoints=anchors['specs'][0])
    # two good files and a bad third: the first two anchors are left untouched
    model = tiny(NAME, num_classes=CLASSES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = _bad_files(anchors, tmp_path)['missing.safetensors']
    with pytest.raises(AnchorCheckpointError, match='missing keys'):
        load_anchor_checkpoints(model.anchors, DEIT_TSB, [*anchors['specs'][:2], bad], progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- config.json round trip --------------------------------------------------------------------------------------
def test_saved_snnet_does_not_need_the_anchor_files(anchors, tmp_path) -> None:
    moved = tmp_path / 'anchors'
    shutil.copytree(anchors['root'], moved)
    specs = [s.replace(str(anchors['root']), str(moved)) for s in anchors['specs']]
    model = tiny(NAME, num_classes=CLASSES, anchor_checkpoints=specs, stitch_id=5).eval()
    save_snnet(model, tmp_path / 'ours', readme=False)
    save_for_hf(model, tmp_path / 'plain', safe_serialization=True)  # timm's own reads the live model_args too
    for folder in ('ours', 'plain'):  # the weights are in the file: no machine-specific anchor paths are saved
        assert json.loads((tmp_path / folder / 'config.json').read_text())['model_args']['anchor_checkpoints'] is None
    shutil.rmtree(moved)
    x = images()
    with torch.no_grad():
        expect = model(x)
        for folder in ('ours', 'plain'):
            loaded = timm.create_model(f'local-dir:{tmp_path / folder}', pretrained=True).eval()
            assert loaded.stitch_id == 5 and torch.equal(loaded(x), expect), folder


# --- timm-snnet init --anchor-checkpoints ------------------------------------------------------------------------
def _calibration_images(data: Path, model: torch.nn.Module) -> torch.Tensor:
    cfg = resolve_input_data_config(model)  # as init does
    dataset = create_dataset('', root=str(data), split='train')
    loader = create_loader(dataset, cfg['input_size'], 64, interpolation=cfg['interpolation'],
                           crop_pct=cfg['crop_pct'], mean=cfg['mean'], std=cfg['std'], use_prefetcher=False,
                           num_workers=0)
    return next(iter(loader))[0]


def test_init_command_loads_anchors_and_records_their_sha256(anchors, tmp_path, capsys) -> None:
    data = make_image_folder(tmp_path / 'data', classes=CLASSES, train=2, val=1, size=SIZE)
    out = tmp_path / 'init.safetensors'
    assert main(['init', '--model', NAME, '--data-dir', str(data), '--num-classes', str(CLASSES), '--output',
                 str(out), '--workers', '0', '--device', 'cpu', '--anchor-checkpoints', *anchors['specs'],
                 '--model-kwargs', *KWARGS]) == 0
    printed = capsys.readouterr().out
    assert f'train with: timm-snnet run train.py {data} --model {NAME} --initial-checkpoint {out} --num-classes ' \
           f'{CLASSES}' in printed and 'anchor_checkpoints' not in printed
    with safe_open(str(out), 'pt') as f:
        meta = f.metadata()
    records = json.loads(meta['anchor_checkpoints'])
    assert [r['checkpoint'] for r in records] == anchors['specs']
    assert [r['sha256'] for r in records] == [file_sha256(p) for p in anchors['files']]
    assert 'anchor_checkpoints' not in json.loads(meta['model_kwargs'])
    # train.py: create_model(..., checkpoint_path=init) with the printed kwargs, no anchor files needed
    trained = timm.create_model(NAME, num_classes=CLASSES, checkpoint_path=str(out), **KW)
    assert_anchors_equal(trained, anchors['models'], images())
    x = _calibration_images(data, trained)
    random = tiny(NAME, num_classes=CLASSES, anchor_checkpoints=anchors['specs'])  # same anchors, random layers
    before, after = random.stitching_error(x), trained.stitching_error(x)
    assert all(after[k] < before[k] for k in before), 'every stitching layer is least-squares initialised'


def test_init_command_bad_anchor_writes_nothing(anchors, tmp_path) -> None:
    data = make_image_folder(tmp_path / 'data', classes=CLASSES, train=1, val=1, size=SIZE)
    out = tmp_path / 'init.safetensors'
    with pytest.raises(SystemExit, match=r'head.weight has 10 classes in the file, the anchor is built with '
                                         r'num_classes=1000. Pass num_classes=10'):
        main(['init', '--model', NAME, '--data-dir', str(data), '--output', str(out), '--workers', '0',
              '--anchor-checkpoints', anchors['specs'][0], 'none', 'none', '--model-kwargs', *KWARGS])
    assert not out.exists()


# --- docs/own-anchors.md: "Stitch your own anchors" -------------------------------------------------------------
def readme_commands() -> list[list[str]]:
    """The commands of the section's bash block, continuation lines joined, comments dropped."""
    section = OWN_ANCHORS_DOC.read_text().split('## Stitch your own anchors', 1)[1].split('\n## ', 1)[0]
    block = section.split('```bash', 1)[1].split('```', 1)[0].replace('\\\n', ' ')
    return [shlex.split(line, comments=True) for line in block.splitlines() if shlex.split(line, comments=True)]


def _script_args(argv: list[str], validate: bool = False) -> argparse.Namespace:
    """The train.py / validate.py flags the section uses (an unknown flag fails the test)."""
    p = argparse.ArgumentParser(exit_on_error=False)
    p.add_argument('data')
    p.add_argument('--model', required=True)
    p.add_argument('--num-classes', type=int)
    p.add_argument('--img-size', type=int)
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    if validate:
        p.add_argument('--checkpoint', required=True)
    else:
        for flag in ('--pretrained', '--model-ema'):
            p.add_argument(flag, action='store_true')
        p.add_argument('--epochs', type=int, default=300)
        p.add_argument('--initial-checkpoint', default='')
        p.add_argument('--output', required=True)
        p.add_argument('--experiment', required=True)
    return p.parse_args(argv)


def _loader(model: torch.nn.Module, a: argparse.Namespace, split: str, training: bool):
    cfg = resolve_data_config(vars(a), model=model)  # as the scripts do: --img-size sizes the data
    data = a.data
    dataset = create_dataset('', root=data, split=split, is_training=training)
    return create_loader(dataset, cfg['input_size'], 8, is_training=training, interpolation=cfg['interpolation'],
                         crop_pct=cfg['crop_pct'], mean=cfg['mean'], std=cfg['std'], use_prefetcher=False,
                         num_workers=0)


@torch.no_grad()
def _top1(model: torch.nn.Module, a: argparse.Namespace) -> float:
    model.eval()
    pairs = [(model(x).argmax(-1) == y) for x, y in _loader(model, a, 'validation', False)]
    return 100.0 * float(torch.cat(pairs).float().mean())


def replay_train(argv: list[str]) -> Path:
    """train.py in its order: create_model (checkpoint_path=--initial-checkpoint), AdamW steps with an EMA, and
    CheckpointSaver in OUTPUT/EXPERIMENT ranking by eval top-1. Tiny anchors have no timm weights: --pretrained is
    skipped, and at most 2 epochs run."""
    a = _script_args(argv)
    model = timm.create_model(a.model, pretrained=False, num_classes=a.num_classes,
                              checkpoint_path=a.initial_checkpoint, **a.model_kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ema = ModelEmaV3(model, decay=0.9) if a.model_ema else None
    out = Path(get_outdir(a.output, a.experiment))
    saver = CheckpointSaver(model, opt, args=a, model_ema=ema, checkpoint_dir=str(out), recovery_dir=str(out))
    for epoch in range(min(a.epochs, 2)):
        model.train()
        for x, y in _loader(model, a, 'train', True):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model)
        saver.save_checkpoint(epoch, metric=_top1(model, a))
    return out


def replay_validate(argv: list[str]) -> tuple[torch.nn.Module, float]:
    """validate.py: create_model with --model-kwargs, strict load_checkpoint, eval top-1."""
    a = _script_args(argv, validate=True)
    model = timm.create_model(a.model, num_classes=a.num_classes, **a.model_kwargs)
    load_checkpoint(model, a.checkpoint)
    return model, _top1(model, a)


def _tiny_argv(argv: list[str], data: Path) -> list[str]:
    """/data/mydata -> the generated folder; the tiny anchors' kwargs appended to --model-kwargs (kept last); for
    the scripts --img-size with them (README: the scripts do not pass it to the model); one latency run per stitch."""
    argv = [str(data) if t == '/data/mydata' else t for t in argv]
    model = argv[argv.index('--model') + 1]
    if model in DEIT_TSB:
        extra = [f'img_size={SIZE}', *(f'{k}={v!r}' for k, v in KW['anchor_kwargs'][DEIT_TSB.index(model)].items())]
    else:
        extra = KWARGS
    cut = argv.index('--model-kwargs') if '--model-kwargs' in argv else len(argv)
    size = {'run': ['--img-size', str(SIZE)], 'sweep': ['--latency-warmup', '0', '--latency-iters', '1']}
    return [*argv[:cut], *size.get(argv[1], []), '--model-kwargs', *argv[cut + 1:], *extra]


def test_readme_stitch_your_own_anchors_commands(tmp_path, monkeypatch, capsys) -> None:
    commands = readme_commands()
    assert [c[:3] for c in commands] == [['timm-snnet', 'run', 'train.py']] * 3 + [
        ['timm-snnet', 'init', '--model'], ['timm-snnet', 'run', 'train.py'], ['timm-snnet', 'run', 'validate.py'],
        ['timm-snnet', 'sweep', '--model']]
    data = make_image_folder(tmp_path / 'data', classes=CLASSES, train=2, val=1, size=SIZE)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    for argv in commands:
        argv = _tiny_argv(argv, data)
        if argv[1] != 'run':
            assert main(argv[1:]) == 0, argv
        elif argv[2] == 'train.py':
            assert (replay_train(argv[3:]) / 'model_best.pth.tar').is_file()
        else:
            model, top1 = replay_validate(argv[3:])
            assert model.stitch_id == 20 and 0 <= top1 <= 100
    printed = capsys.readouterr().out
    init = commands[3][commands[3].index('--output') + 1]
    assert f'--initial-checkpoint {init} --num-classes {CLASSES}' in printed, 'step 3 is the command init prints'
    with safe_open(init, 'pt') as f:
        records = json.loads(f.metadata()['anchor_checkpoints'])
    assert [r['sha256'] for r in records] == [
        file_sha256(tmp_path / 'output' / 'anchors' / e / 'model_best.pth.tar') for e in ('ti', 's', 'b')]
    assert [r['ema'] for r in records] == [False, False, True]
    rows = json.loads((tmp_path / 'sweep' / 'sweep.json').read_text())['rows']
    assert len(rows) == tiny(NAME).num_configs
