"""Start-up checks for an SN-Net student in timm's knowledge distillation (train.py `--kd-model-name`).

timm's `LogitDistillationTask` creates the teacher with the student's class count and feeds it the student's input,
re-normalised from the student's `pretrained_cfg` mean/std to the teacher's. Three set-ups would train without an
error and teach nothing; these checks refuse them before the first step:

- the teacher's pretrained head has another class count: timm drops it and distils from a random classifier;
- the data are normalised with `--mean/--std` other than the student's `pretrained_cfg`, or the teacher's mean/std
  have another channel count: the teacher sees wrongly normalised images;
- `--kd-distill-type feature` or `token`: timm runs the student's `forward_features` / distillation head, which
  serve the active stitch only, so every step would train one config instead of sampling one.

A teacher whose normalisation differs from the student's in values only is fine: timm converts it exactly.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import timm
from timm.models import get_pretrained_cfg, parse_model_name
from timm.models._hub import load_model_config_from_hf, load_model_config_from_path
from timm.utils import ParseKwargs
from torch import nn

from ._errors import DistillationError
from ._snnet import SNNet

__all__ = ['DistillationError', 'teacher_config', 'check_distillation', 'check_train_args']

DISTILL_TYPES = ('logit', 'feature', 'token')


def teacher_config(name: str) -> dict:
    """The pretrained cfg timm's `create_model(name, pretrained=True)` would use for a teacher (no weights read)."""
    source, rest = parse_model_name(name)
    if source == 'local-dir':
        cfg, _, _ = load_model_config_from_path(rest)
    elif source == 'hf-hub':
        cfg, _, _ = load_model_config_from_hf(rest)
    else:
        if not timm.is_model(rest):
            raise DistillationError(f'unknown teacher model {name!r} (--kd-model-name): not in timm\'s registry; '
                                    f'use a timm model name, local-dir:PATH or hf-hub:REPO')
        try:
            found = get_pretrained_cfg(rest, allow_unregistered=True)
        except RuntimeError as e:  # a tag the architecture does not have
            tags = timm.list_pretrained(rest.split('.')[0] + '.*')
            raise DistillationError(f'teacher {name!r} (--kd-model-name): {e} Pretrained: {", ".join(tags[:8])}'
                                    + (' ...' if len(tags) > 8 else '')) from None
        if found is None or not (found.hf_hub_id or found.url or found.file):
            raise DistillationError(f'teacher {name!r} (--kd-model-name) has no pretrained weights in timm: it would '
                                    f'teach from a random initialisation; name a pretrained tag, local-dir:PATH or '
                                    f'hf-hub:REPO')
        cfg = found.to_dict()
    return dict(cfg)


def _per_channel(values: Sequence[float], channels: int) -> Optional[tuple[float, ...]]:
    """`values` for `channels` channels (one value broadcasts), or None when the counts differ."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    return values * channels if len(values) == 1 else None


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(x - y) <= 1e-6 for x, y in zip(a, b))


def check_distillation(
        student: nn.Module,
        teacher: str,
        distill_type: str = 'logit',
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
) -> str:
    """Raise DistillationError when timm's distillation of `student` (an SN-Net) from `teacher` would not teach it; else
    return a one-line summary. `mean`/`std`: the data normalisation when it is not the student's pretrained_cfg."""
    if distill_type not in DISTILL_TYPES:
        raise DistillationError(f'unknown distillation type {distill_type!r}; valid: {", ".join(DISTILL_TYPES)}')
    if isinstance(student, SNNet) and distill_type != 'logit':
        widths = sorted({getattr(a, 'head_hidden_size', a.num_features) for a in student.anchors})
        what = ('matches pooled pre-logits features through one projection' if distill_type == 'feature' else
                "needs a distillation head's second output")
        raise DistillationError(
            f"--kd-distill-type {distill_type} cannot train an SN-Net: timm's {distill_type} distillation {what} and "
            f'calls forward_features on the active stitch only, so every step would train config '
            f'{student.stitch_id} instead of sampling one (the configs end in widths {widths}); use '
            f'--kd-distill-type logit, the distillation the paper used')
    cfg = teacher_config(teacher)
    student_classes, teacher_classes = student.num_classes, cfg.get('num_classes')
    if teacher_classes != student_classes:
        raise DistillationError(
            f'teacher {teacher!r} was trained for {teacher_classes} classes, the student has {student_classes}: timm '
            f"would drop the teacher's classifier and distil from a random one; use a teacher fine-tuned on the "
            f"student's {student_classes} classes")
    channels = getattr(student, 'in_chans', 3)
    s_cfg = student.pretrained_cfg
    if mean is None and std is None and tuple(s_cfg['mean']) == tuple(cfg.get('mean', ())) \
            and tuple(s_cfg['std']) == tuple(cfg.get('std', ())):
        return f'distilling from {teacher!r} ({teacher_classes} classes, the same normalisation)'
    s_mean, s_std = _per_channel(s_cfg['mean'], channels), _per_channel(s_cfg['std'], channels)
    d_mean = _per_channel(mean, channels) if mean is not None else s_mean
    d_std = _per_channel(std, channels) if std is not None else s_std
    t_mean = _per_channel(cfg.get('mean', (0.485, 0.456, 0.406)), channels)
    t_std = _per_channel(cfg.get('std', (0.229, 0.224, 0.225)), channels)
    if None in (s_mean, s_std, d_mean, d_std):
        raise DistillationError(f'the normalisation (mean {tuple(mean or s_cfg["mean"])}, std '
                                f'{tuple(std or s_cfg["std"])}) does not match the student\'s {channels} input '
                                f'channels')
    if t_mean is None or t_std is None:
        raise DistillationError(
            f'teacher {teacher!r} normalises {len(cfg["mean"])} channels (mean {tuple(cfg["mean"])}), the student\'s '
            f'input has {channels}: timm would feed the teacher re-normalised images of the wrong shape; use a teacher '
            f'for {channels}-channel input')
    if not (_close(d_mean, s_mean) and _close(d_std, s_std)):
        raise DistillationError(
            f"the data are normalised with mean {d_mean} std {d_std}, but the student's pretrained_cfg says mean "
            f"{s_mean} std {s_std}: timm's distillation converts the teacher's input from the pretrained_cfg, so "
            f'teacher {teacher!r} (mean {t_mean}, std {t_std}) would see wrongly normalised images; drop '
            f"--mean/--std or save the student with its data's normalisation in its pretrained_cfg")
    if _close(t_mean, s_mean) and _close(t_std, s_std):
        return f'distilling from {teacher!r} ({teacher_classes} classes, the same normalisation)'
    return (f'distilling from {teacher!r} ({teacher_classes} classes; timm converts its input from mean {s_mean} std '
            f'{s_std} to mean {t_mean} std {t_std})')


def _train_parser() -> argparse.ArgumentParser:
    """The train.py arguments the checks read (the script's own names and defaults)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument('--model', default='resnet50')
    p.add_argument('--kd-model-name', default=None)
    p.add_argument('--kd-distill-type', default='logit')
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--in-chans', type=int, default=None)
    p.add_argument('--input-size', type=int, nargs=3, default=None)
    p.add_argument('--mean', type=float, nargs='+', default=None)
    p.add_argument('--std', type=float, nargs='+', default=None)
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    return p


def check_train_args(argv: Sequence[str]) -> Optional[str]:
    """The checks for a train.py command line: None without `--kd-model-name` or when the student is not an SN-Net.
    The student is built on the meta device (no memory, no weights) with train.py's kwargs."""
    args, _ = _train_parser().parse_known_args(list(argv))
    if args.kd_model_name is None:
        return None
    source, name = parse_model_name(args.model)
    if source is None and not name.startswith('snnet'):  # a plain timm student: not ours to build or check
        return None
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    kwargs = dict(args.model_kwargs)
    if args.num_classes is not None:
        kwargs['num_classes'] = args.num_classes
    student = timm.create_model(args.model, in_chans=in_chans, device='meta', **kwargs)
    if not isinstance(student, SNNet):
        return None
    return check_distillation(student, args.kd_model_name, args.kd_distill_type, args.mean, args.std)
