"""An SN-Net as the student of timm's knowledge distillation: train.py's `--kd-model-name` logit path (the teacher
created by timm from a `local-dir:` name), and the start-up checks that refuse set-ups that would not teach."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import TINY
from image_folder import make_image_folder
from test_train_contract import CLASSES, NAME, _restore_rngs, run_train, train_args
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import save_for_hf

from timm_snnet._distill import DistillationError, check_distillation, check_train_args

ROOT = Path(__file__).resolve().parents[1]
TEACHER_ARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def save_teacher(folder: Path, num_classes: int = CLASSES, in_chans: int = 3, **cfg) -> str:
    """A tiny timm ViT saved as timm saves for the Hub (config.json + model.safetensors), by default with DeiT's
    normalisation; returns its local-dir name."""
    torch.manual_seed(1)
    model = timm.create_model('vit_tiny_patch16_224', num_classes=num_classes, in_chans=in_chans, **TEACHER_ARGS)
    model.pretrained_cfg = {**model.pretrained_cfg, 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD, **cfg}
    save_for_hf(model, str(folder), model_args=dict(TEACHER_ARGS, in_chans=in_chans), safe_serialization=True)
    return f'local-dir:{folder}'


@pytest.fixture(scope='module')
def distilled(tmp_path_factory):
    root = tmp_path_factory.mktemp('kd')
    data = make_image_folder(root / 'data', classes=CLASSES, train=8, val=2, size=32)
    teacher = save_teacher(root / 'teacher')
    args = train_args(data, root / 'out', kd_model_name=teacher, epochs=1, model_ema=False, batch_size=8,
                      task_loss_weight=0.5, kd_temperature=2.0)
    with _restore_rngs():
        out = run_train(args, root / 'out')
    return dict(root=root, data=data, teacher=teacher, args=args, out=out)


def test_logit_distillation_trains_sampled_stitches(distilled):
    """train.py's LogitDistillationTask: the student keeps sampling stitches, the loss carries a KD term from the
    teacher timm created (its saved head, not a random one), and the teacher stays frozen and in eval mode."""
    out = distilled['out']
    task, student = out['task'], out['model']
    assert len(set(out['stitches'])) >= 3, out['stitches']  # one sampled config per step, as without distillation
    assert len(out['kd_losses']) == len(out['stitches']) and all(k > 0 for k in out['kd_losses'])
    assert (task.task_loss_weight, task.distill_loss_weight, task.temperature) == (0.5, 0.5, 2.0)
    saved = timm.create_model(distilled['teacher'], pretrained=True)
    head = task.teacher.model.get_classifier()
    assert torch.equal(head.weight, saved.get_classifier().weight)  # the teacher's own head was loaded
    assert task.teacher.model.training is False
    for name, p in task.teacher.model.state_dict().items():
        assert torch.equal(p, saved.state_dict()[name]), name
    changed = [n for n, p in student.state_dict().items() if not torch.equal(p, out['initial'][n])]
    assert any(n.startswith('stitch_layers.') for n in changed) and any(n.startswith('anchors.') for n in changed)
    assert check_train_args(['--model', NAME, '--num-classes', str(CLASSES), '--kd-model-name', distilled['teacher'],
                             '--model-kwargs', f'img_size={TINY[NAME][0]["img_size"]}']) \
        == f"distilling from {distilled['teacher']!r} ({CLASSES} classes, the same normalisation)"


def test_bad_teachers_are_refused_before_training(tmp_path):
    """A teacher whose head has another class count, another channel count of normalisation, data normalised
    unlike the student's pretrained_cfg, and feature/token distillation: each a clear DistillationError."""
    student = timm.create_model(NAME, num_classes=CLASSES, device='meta', **TINY[NAME][0])
    five = save_teacher(tmp_path / 'five', num_classes=5)
    with pytest.raises(DistillationError, match=r'trained for 5 classes, the student has 4: timm would drop'):
        check_distillation(student, five)
    inception = save_teacher(tmp_path / 'inception', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert 'timm converts its input from mean' in check_distillation(student, inception)  # exact: allowed
    with pytest.raises(DistillationError, match=r'data are normalised with mean \(0\.5, 0\.5, 0\.5\).*pretrained_cfg'):
        check_distillation(student, inception, mean=(0.5,), std=(0.5,))
    grey = timm.create_model(NAME, num_classes=CLASSES, in_chans=1, device='meta',
                             pretrained_cfg_overlay=dict(mean=(0.3,), std=(0.4,)), **TINY[NAME][0])
    rgb = save_teacher(tmp_path / 'rgb')
    with pytest.raises(DistillationError, match=r'normalises 3 channels .* input has 1'):
        check_distillation(grey, rgb)
    for kind in ('feature', 'token'):
        with pytest.raises(DistillationError, match=rf'--kd-distill-type {kind} cannot train an SN-Net.*'
                                                    r'active stitch only.*widths \[16, 32, 48\]'):
            check_distillation(student, rgb, kind)
    with pytest.raises(DistillationError, match=r"unknown teacher model 'regnety_16'"):
        check_distillation(student, 'regnety_16')
    with pytest.raises(DistillationError, match=r'Invalid pretrained tag \(x\).*Pretrained: deit_tiny_distilled'):
        check_distillation(student, 'deit_tiny_distilled_patch16_224.x')
    untrained = next(m for m in timm.list_models('vit_*') if not timm.list_pretrained(m + '.*'))
    with pytest.raises(DistillationError, match=r'no pretrained weights'):
        check_distillation(student, untrained)
    assert check_train_args(['--model', 'resnet18', '--kd-model-name', 'nothing']) is None  # not an SN-Net: not ours


@pytest.mark.parametrize('entry', [('-m', 'timm_snnet.cli', 'run'), ('-m', 'timm_snnet.cli.run')])
def test_launcher_stops_before_train_py_runs(tmp_path, entry):
    """`timm-snnet run train.py ... --kd-model-name` with a 5-class teacher for a 4-class student: one line, exit 2,
    and train.py never starts (the stand-in script would write a file)."""
    script = tmp_path / 'train.py'
    marker = tmp_path / 'started'
    script.write_text(f'open({str(marker)!r}, "w").close()\n')
    teacher = save_teacher(tmp_path / 'five', num_classes=5)
    proc = subprocess.run(
        [sys.executable, *entry, str(script), '--model', NAME, '--num-classes', str(CLASSES),
         '--kd-model-name', teacher, '--model-kwargs', f'img_size={TINY[NAME][0]["img_size"]}'],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'HF_HUB_OFFLINE': '1'}, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith('timm-snnet run: teacher') and 'trained for 5 classes' in lines[0]
    assert not marker.exists()


def _train_commands(path: Path) -> list[list[str]]:
    """Every `timm-snnet run train.py ... --kd-model-name ...` command in a doc's bash blocks, as arguments."""
    text = path.read_text().replace('\\\n', ' ')
    commands = [shlex.split(line.split('#')[0]) for line in text.splitlines()
                if line.startswith('timm-snnet run train.py') and '--kd-model-name' in line]
    return [c[3:] for c in commands]


@pytest.mark.parametrize('doc', ['README.md', 'docs/training.md'])
def test_documented_recipes_pass_the_checks(doc):
    """The distillation command lines the docs print pass the launcher's checks (the `...` left out)."""
    commands = _train_commands(ROOT / doc)
    assert commands
    for args in commands:
        assert check_train_args([a for a in args if a != '...']).startswith('distilling from'), args
