"""timm's train.py / validate.py contract, exercised through timm's library in the scripts' own order.

pip does not ship the scripts, so this replays their calls: create_model with every kwarg train.py passes (and an
`--initial-checkpoint` from `timm-snnet init`), resolve_data_config, create_dataset / create_loader on a generated
ImageFolder, create_optimizer_v2 with --layer-decay, create_scheduler_v2, ClassificationTask + ModelEmaV3,
CheckpointSaver, resume_task_checkpoint / load_task_ema_checkpoint (train.py --resume), resume_checkpoint and
load_checkpoint (validate.py --checkpoint).
"""
import argparse
import math
import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import TINY, tiny, tiny_input
from image_folder import make_image_folder
from timm import utils
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import load_checkpoint, model_parameters, resume_checkpoint
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import ClassificationTask, LogitDistillationTask, load_task_ema_checkpoint, resume_task_checkpoint

from timm_snnet._evaluate import init_checkpoint

NAME = 'snnet_deit_tsb'
CLASSES = 4


def train_args(data: Path, output: Path, **overrides) -> argparse.Namespace:
    """train.py's parsed args (its defaults where not set), for a tiny CPU run."""
    kw = dict(TINY[NAME][0])
    args = dict(
        data_dir=str(data), dataset='', train_split='train', val_split='validation', model=NAME, pretrained=False,
        initial_checkpoint='', resume='', no_resume_opt=False, num_classes=CLASSES, gp=None, img_size=kw['img_size'],
        in_chans=None, input_size=None, crop_pct=None, mean=None, std=None, interpolation='', batch_size=8,
        model_kwargs=kw, opt='adamw', opt_eps=None, opt_betas=None, momentum=0.9, weight_decay=0.05,
        layer_decay=0.75, layer_decay_min_scale=0, layer_decay_no_opt_scale=None, opt_kwargs={},
        sched='cosine', sched_on_updates=False, lr=2e-3, epochs=2, warmup_epochs=0, warmup_lr=1e-5, min_lr=0,
        cooldown_epochs=0, decay_epochs=90, decay_rate=0.1, start_epoch=None, no_aug=False, scale=[0.08, 1.0],
        ratio=[3. / 4., 4. / 3.], hflip=0.5, vflip=0., color_jitter=0.4, aa=None, reprob=0., remode='pixel',
        recount=1, train_interpolation='random', smoothing=0.1, drop=0.0, drop_path=0.1, drop_block=None,
        bn_momentum=None, bn_eps=None, torchscript=False, model_ema=True, model_ema_decay=0.9,
        model_ema_warmup=False, seed=42, workers=0, pin_mem=False, no_prefetcher=False, checkpoint_hist=10,
        eval_metric='top1', device='cpu', output=str(output), grad_accum_steps=1, clip_grad=None, clip_mode='norm',
        kd_model_name=None, kd_distill_type='logit', kd_loss_type='kl', distill_loss_weight=None,
        task_loss_weight=None, kd_temperature=1.0,
    )
    args.update(overrides)
    return argparse.Namespace(**args)


def run_train(args: argparse.Namespace, out_dir: Path) -> dict:
    """train.py main() + train_one_epoch(), single process, in the script's order. Returns what the tests check."""
    device = torch.device(args.device)
    utils.random_seed(args.seed, 0)
    model = timm.create_model(
        args.model, pretrained=args.pretrained, in_chans=args.in_chans or 3, num_classes=args.num_classes,
        drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block, global_pool=args.gp,
        bn_momentum=args.bn_momentum, bn_eps=args.bn_eps, scriptable=args.torchscript,
        checkpoint_path=args.initial_checkpoint, **args.model_kwargs)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    data_config = resolve_data_config(vars(args), model=model)
    model.to(device=device)

    common = dict(mean=data_config['mean'], std=data_config['std'], pin_memory=args.pin_mem, img_dtype=torch.float32,
                  device=device, distributed=False, use_prefetcher=not args.no_prefetcher)
    dataset_train = create_dataset(args.dataset, root=args.data_dir, split=args.train_split, is_training=True,
                                   class_map='', download=False, batch_size=args.batch_size, seed=args.seed,
                                   repeats=0, input_img_mode='RGB', input_key=None, target_key=None,
                                   num_samples=None, trust_remote_code=False)
    dataset_eval = create_dataset(args.dataset, root=args.data_dir, split=args.val_split, is_training=False,
                                  class_map='', download=False, batch_size=args.batch_size, input_img_mode='RGB')
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, scale=args.scale,
        ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        auto_augment=args.aa, interpolation=args.train_interpolation, num_workers=args.workers,
        worker_seeding='all', batch_choice_seed=args.seed, **common)
    loader_eval = create_loader(
        dataset_eval, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=False,
        interpolation=data_config['interpolation'], num_workers=args.workers, crop_pct=data_config['crop_pct'],
        **common)

    train_loss_fn = LabelSmoothingCrossEntropy(args.smoothing)
    if args.kd_model_name is not None:  # train.py: the teacher is created inside the task from its name
        assert args.kd_distill_type == 'logit'
        task = LogitDistillationTask(
            student_model=model, teacher_model=args.kd_model_name, criterion=train_loss_fn,
            loss_type=args.kd_loss_type, distill_loss_weight=args.distill_loss_weight,
            task_loss_weight=args.task_loss_weight, temperature=args.kd_temperature, device=device, verbose=False)
    else:
        task = ClassificationTask(model, criterion=train_loss_fn, device=device, verbose=False)
    model = task.get_trainable_module()
    eval_model = task.get_eval_model()
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    resume_epoch = None
    if args.resume:
        resume_epoch = resume_task_checkpoint(task, args.resume, optimizer=optimizer, log_info=False)
    task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
    if args.resume:
        load_task_ema_checkpoint(task, args.resume)
    out_dir = utils.get_outdir(str(out_dir))
    saver = utils.CheckpointSaver(model=model, optimizer=optimizer, args=args, checkpoint_dir=out_dir,
                                  recovery_dir=out_dir, decreasing=False, max_history=args.checkpoint_hist,
                                  task=task)
    accum = args.grad_accum_steps
    updates_per_epoch = (len(loader_train) + accum - 1) // accum
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=False), updates_per_epoch=updates_per_epoch)
    start_epoch = args.start_epoch if args.start_epoch is not None else (resume_epoch or 0)
    if start_epoch > 0:
        lr_scheduler.step(start_epoch)

    stitches, step_at_start = [], int(model.sample_step)
    sample = model.sample_stitch

    def recording_sample() -> int:  # set after setup_ema, so the EMA copy does not hold it
        stitches.append(sample())
        return stitches[-1]

    model.sample_stitch = recording_sample
    lrs, epoch_losses, eval_top1, kd_losses = [], [], [], []
    for epoch in range(start_epoch, num_epochs):
        model.train()
        num_updates, losses = epoch * updates_per_epoch, []
        optimizer.zero_grad()
        for batch_idx, (input, target) in enumerate(loader_train):
            need_update = batch_idx == len(loader_train) - 1 or (batch_idx + 1) % accum == 0
            assert model.training  # a distillation task keeps only its teacher in eval mode
            result = task(input, target)
            loss = result['loss']
            if 'kd_loss' in result:
                kd_losses.append(result['kd_loss'].item())
            (loss / accum if accum > 1 else loss).backward()
            if need_update:
                if args.clip_grad is not None:
                    utils.dispatch_clip_grad(model_parameters(model, exclude_head='agc' in args.clip_mode),
                                             value=args.clip_grad, mode=args.clip_mode)
                optimizer.step()
            losses.append(loss.item())
            if not need_update:
                continue
            num_updates += 1
            optimizer.zero_grad()
            task.update_ema(step=num_updates)
            lr_scheduler.step_update(num_updates=num_updates, metric=sum(losses) / len(losses))
        epoch_losses.append(sum(losses) / len(losses))
        top1 = _validate(eval_model, loader_eval)
        eval_top1.append(top1)
        saver.save_checkpoint(epoch, metric=top1)
        lr_scheduler.step(epoch + 1, top1)
        lrs.append(optimizer.param_groups[-1]['lr'])
    del model.sample_stitch
    return dict(model=model, initial=initial, ema=task.get_trainable_module(ema=True).module, optimizer=optimizer,
                start_epoch=start_epoch, step_at_start=step_at_start, stitches=stitches, losses=epoch_losses,
                top1=eval_top1, lrs=lrs, updates_per_epoch=updates_per_epoch, loader_eval=loader_eval, task=task,
                kd_losses=kd_losses)


@torch.no_grad()
def _validate(model: torch.nn.Module, loader) -> float:
    """train.py validate(): eval mode (the active stitch), top-1 over the loader."""
    model.eval()
    hits = seen = 0
    for input, target in loader:
        hits += int((model(input).argmax(-1) == target).sum())
        seen += len(target)
    return 100.0 * hits / seen


@torch.no_grad()
def _mean_loss_all_stitches(model: torch.nn.Module, loader) -> float:
    model.eval()
    losses = [torch.nn.functional.cross_entropy(model(x, stitch_id=k), y).item()
              for x, y in loader for k in range(model.num_configs)]
    return sum(losses) / len(losses)


@contextmanager
def _restore_rngs():
    """train.py seeds the global RNGs (utils.random_seed); leave them as they were for later tests."""
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        yield
    random.setstate(states[0])
    np.random.set_state(states[1])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """`timm-snnet init`, then 2 epochs as train.py runs them, then a resume from the epoch-0 checkpoint."""
    with _restore_rngs():
        return _trained(tmp_path_factory)


def _trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('contract')
    data = make_image_folder(root / 'data', classes=CLASSES, train=16, val=4, size=32)
    init = init_checkpoint(NAME, data, root / 'init.safetensors', model_kwargs=TINY[NAME][0], num_classes=CLASSES,
                           num_images=32, workers=0, progress=False)
    args = train_args(data, root / 'out', initial_checkpoint=str(init))
    fresh = timm.create_model(NAME, num_classes=CLASSES, checkpoint_path=str(init), **TINY[NAME][0])
    first = run_train(args, root / 'out')
    resumed = run_train(train_args(data, root / 'out2', resume=str(root / 'out' / 'checkpoint-0.pth.tar')),
                        root / 'out2')
    return dict(root=root, data=data, init=init, fresh=fresh, first=first, resumed=resumed, args=args)


def test_initial_checkpoint_is_safetensors_loaded_by_create_model(trained):
    """train.py --initial-checkpoint init.safetensors: timm's load_checkpoint reads it strictly, LS init included."""
    fresh = trained['fresh']
    plain = timm.create_model(NAME, num_classes=CLASSES, **TINY[NAME][0])
    pairs = zip(fresh.stitch_layers.parameters(), plain.stitch_layers.parameters())
    assert any(not torch.equal(a, b) for a, b in pairs)
    init = tiny(NAME, num_classes=CLASSES)
    load_checkpoint(init, str(trained['init']))
    for (k, a), b in zip(fresh.state_dict().items(), init.state_dict().values()):
        assert torch.equal(a, b), k


def test_train_two_epochs_loss_decreases_and_checkpoints(trained):
    first = trained['first']
    out = trained['root'] / 'out'
    for name in ('checkpoint-0.pth.tar', 'checkpoint-1.pth.tar', 'last.pth.tar', 'model_best.pth.tar'):
        assert (out / name).is_file(), name
    assert len(first['stitches']) == 2 * first['updates_per_epoch']
    assert len(set(first['stitches'])) > 3, 'training samples many stitches'
    assert first['losses'][1] < first['losses'][0], first['losses']
    before = _mean_loss_all_stitches(trained['fresh'], first['loader_eval'])
    after = _mean_loss_all_stitches(first['model'], first['loader_eval'])
    assert after < before - 0.05, (before, after)
    assert first['lrs'][0] < trained['args'].lr, 'cosine schedule stepped'
    assert int(first['model'].sample_step) == len(first['stitches'])


def test_resume_continues_epoch_and_stitch_sequence(trained):
    first, resumed = trained['first'], trained['resumed']
    n = first['updates_per_epoch']
    assert resumed['start_epoch'] == 1
    assert resumed['step_at_start'] == n
    assert resumed['stitches'] == first['stitches'][n:], 'the resumed run draws the same stitches as the unbroken one'
    assert math.isclose(resumed['lrs'][-1], first['lrs'][-1])
    ckpt = trained['root'] / 'out2' / 'last.pth.tar'
    assert ckpt.is_file()
    # the legacy resume_checkpoint (older train.py) agrees: epoch + 1 and the sampler position
    model = tiny(NAME, num_classes=CLASSES)
    assert resume_checkpoint(model, str(ckpt), log_info=False) == 2
    assert model._step == 2 * n == int(model.sample_step)


def test_ema_copies_sample_step_and_averages_weights(trained):
    """ModelEmaV3 copies integer buffers (the sampler step, the stitch table) and averages float ones."""
    model, ema = trained['first']['model'], trained['first']['ema']
    assert int(ema.sample_step) == int(model.sample_step)
    assert torch.equal(ema.stitch_table_json, model.stitch_table_json)
    assert not torch.equal(ema.anchors[0].head.weight, model.anchors[0].head.weight)


def test_validate_one_stitch_from_checkpoint(trained):
    """validate.py: create_model(**model_kwargs with stitch_id=K) then load_checkpoint(--checkpoint[, --use-ema])."""
    ckpt = str(trained['root'] / 'out' / 'last.pth.tar')
    trained_model = trained['first']['model'].eval()
    x, _ = next(iter(trained['first']['loader_eval']))
    for use_ema, ref in ((False, trained_model), (True, trained['first']['ema'].eval())):
        for k in (0, 5, trained_model.num_configs - 1):
            model = timm.create_model(NAME, num_classes=CLASSES, global_pool=None, **TINY[NAME][0], stitch_id=k)
            load_checkpoint(model, ckpt, use_ema)
            model.eval()
            with torch.no_grad():
                assert torch.allclose(model(x), ref(x, stitch_id=k), atol=1e-5), (use_ema, k)


def test_layer_decay_groups_through_group_matcher(trained):
    """--layer-decay: each parameter in one group; stems lowest, block i of every anchor at layer i, stitching layers
    and heads at the full learning rate."""
    model = tiny(NAME, num_classes=CLASSES)
    opt = create_optimizer_v2(model, **optimizer_kwargs(cfg=trained['args']))
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g['lr_scale'] for g in opt.param_groups for p in g['params']}
    assert sorted(scale) == sorted(names.values()), 'every parameter is in exactly one group'
    assert sum(len(g['params']) for g in opt.param_groups) == len(names)
    stem = {v for k, v in scale.items() if 'patch_embed' in k or 'pos_embed' in k}
    blocks = {v for k, v in scale.items() if '.blocks.' in k}
    stitching = {v for k, v in scale.items() if k.startswith('stitch_layers.')}
    heads = {v for k, v in scale.items() if '.head.' in k}
    assert len(stem) == 1 and max(stem) < min(blocks)
    assert heads == stitching == {1.0}
    depth = TINY[NAME][0]['anchor_kwargs'][0]['depth']
    assert len(blocks) == depth, 'block i of every anchor shares layer i'


def test_train_step_checkpoint_resume_every_model(tiny_name, tmp_path):
    """Every registered SN-Net: train.py's create_model kwargs, --layer-decay, a task step, EMA, save and resume."""
    def build():
        return timm.create_model(
            tiny_name, pretrained=False, in_chans=3, num_classes=CLASSES, drop_rate=0., drop_path_rate=0.1,
            drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False,
            checkpoint_path='', **TINY[tiny_name][0])

    model = build()
    task = ClassificationTask(model, criterion=torch.nn.CrossEntropyLoss(), verbose=False)
    opt = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))
    task.setup_ema(decay=0.9)
    saver = utils.CheckpointSaver(model=model, optimizer=opt, args=argparse.Namespace(model=tiny_name),
                                  checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path), task=task)
    x, y = tiny_input(tiny_name, batch=2), torch.tensor([0, 1])
    model.train()
    task(x, y)['loss'].backward()
    opt.step()
    opt.zero_grad()
    task.update_ema(step=1)
    saver.save_checkpoint(0, metric=0.0)
    other = ClassificationTask(build(), criterion=torch.nn.CrossEntropyLoss(), verbose=False)
    other_opt = create_optimizer_v2(other.trainable_module, opt='adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert resume_task_checkpoint(other, str(tmp_path / 'last.pth.tar'), optimizer=other_opt, log_info=False) == 1
    other.setup_ema(decay=0.9)
    load_task_ema_checkpoint(other, str(tmp_path / 'last.pth.tar'))
    for (k, a), b in zip(model.state_dict().items(), other.trainable_module.state_dict().values()):
        assert torch.equal(a, b), k
    assert other.trainable_module._step == 1
    assert int(other.get_trainable_module(ema=True).module.sample_step) == 1


def test_grad_accum_clip_ema_leave_off_path_parameters_untouched(tmp_path):
    """--grad-accum-steps 2 --clip-grad 1 --model-ema, AdamW with weight decay, stitches only (anchor_share=0): a
    parameter on none of the drawn paths (Ti's head, B's stem) is never stepped, keeps its initial value, and so does
    its EMA; the others moved."""
    data = make_image_folder(tmp_path / 'data', classes=CLASSES, train=8, val=1, size=32)
    args = train_args(data, tmp_path / 'out', epochs=1, grad_accum_steps=2, clip_grad=1.0,
                      model_kwargs={**TINY[NAME][0], 'anchor_share': 0.0})
    with _restore_rngs():
        run = run_train(args, tmp_path / 'out')
    model, ema, opt = run['model'], run['ema'], run['optimizer']
    assert run['updates_per_epoch'] == 2 and len(run['stitches']) == 4
    assert all(k >= 3 for k in run['stitches']), 'anchor_share=0 draws only stitches'
    off = set.intersection(*({f'{m}.{p}' for m, p in model.off_path_names(k)} for k in run['stitches']))
    assert {'anchors.0.head.weight', 'anchors.2.patch_embed.proj.weight'} <= off
    params, ema_params = dict(model.named_parameters()), dict(ema.named_parameters())
    for n, p in params.items():
        if n in off:
            assert not opt.state[p], f'{n} was stepped off the path'
            assert torch.equal(p, run['initial'][n]) and torch.equal(ema_params[n], run['initial'][n]), n
    assert sum(not torch.equal(p, run['initial'][n]) for n, p in params.items() if n not in off) > len(params) // 3
