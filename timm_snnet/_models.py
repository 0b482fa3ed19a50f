"""timm glue: the entry points and their cfgs, the checkpoint filter, and the one list of the args that rebuild an
SN-Net. Importing this module registers the models in timm's model registry.

How `pretrained=True` finds SN-Net weights (the Hub repo, else the authors' release converted once) belongs to the
weights layer above this one; `timm_snnet._sources` plugs it in with `set_pretrained_source` when the package is
imported.
"""
from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models._input import update_model_args
from torch import nn

from ._configs import choose_join, junction_depths, junction_stages
from ._dense import create_features, wants_getter
from ._errors import Mismatch
from ._exported import EXPORT_NAME, ExportedStitch
from ._flops import meta_flops
from ._releases import DEFAULT_HUB_URL, DEFAULT_RELEASE_URL, HF_HUB_ORG, OFFICIAL_TAG, release_url
from ._snnet import SNNet
from ._utils import as_tuple
from .families import family_for

__all__ = ['HF_HUB_ORG', 'ARCH_ARGS', 'SHAPE_ARGS', 'SNNet', 'PretrainedSource', 'check_fit', 'checkpoint_filter_fn',
           'create_from_anchors', 'export_model_args', 'record_model_args', 'set_pretrained_source', 'snnet_cfg']


@dataclass(frozen=True)
class PretrainedSource:
    """The weights layer's part in `pretrained=True` (each function takes the variant and the create_model kwargs)."""
    kwargs: Callable[[str, dict[str, Any]], dict[str, Any]]  # the kwargs that build the variant for its SN-Net weights
    errors: Callable[[str, dict[str, Any]], AbstractContextManager]  # a context: loading failures -> SNNetLoadError
    check_saved: Callable[[str, dict[str, Any], bool], None]  # (..., pretrained): refuse an untrusted config.json


_pretrained_source: Optional[PretrainedSource] = None


def set_pretrained_source(source: PretrainedSource) -> None:
    """Plug in the weights layer (`_sources` does when the package is imported)."""
    global _pretrained_source
    _pretrained_source = source


def _weights() -> PretrainedSource:
    if _pretrained_source is None:
        raise RuntimeError('no weights layer plugged in: import timm_snnet, not timm_snnet._models alone')
    return _pretrained_source


def _feature_cfg(kwargs: dict[str, Any]) -> dict[str, Any]:
    """features_only with feature_cls='getter' goes through timm's FeatureGetterNet (forward_intermediates of the
    active stitch, chosen with `stitch_id=`). Default out_indices: every feature of that stitch."""
    cfg = dict(feature_cls='getter', out_indices=kwargs.pop('out_indices', None), **kwargs.pop('feature_cfg', {}))
    if cfg['out_indices'] is None and cfg.get('prune') is False:
        raise ValueError('features_only with feature_cfg=dict(prune=False) needs explicit out_indices, e.g. (1, 2, 3)')
    return cfg


def _create_snnet(variant: str, pretrained: bool = False, **kwargs: Any) -> SNNet:
    _weights().check_saved(variant, kwargs, pretrained)  # a folder's or Hub repo's config.json, before any build
    if kwargs.get('features_only'):
        if not wants_getter(kwargs):  # every stitch, one feature_info (_dense); feature_cls='getter': timm's getter,
            return create_features(_create_snnet, variant, pretrained, kwargs)  # pruned to one stitch
        kwargs['feature_cfg'] = _feature_cfg(kwargs)
    if pretrained:  # SN-Net weights (anchors included), built with the model_args saved beside them; the Hub repo,
        kwargs = _weights().kwargs(variant, kwargs)  # else the authors' release converted once (_sources)
    errors = _weights().errors(variant, kwargs) if pretrained else nullcontext()
    with errors:  # SNNetLoadError naming the repo / file, no model returned
        model = build_model_with_cfg(SNNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)
    record_model_args(_inner(model), kwargs)  # complete, JSON-serialisable model_args for save_for_hf / hf-hub:
    return model


def _inner(model: nn.Module) -> SNNet:
    """The SN-Net itself (features_only wraps it in timm's FeatureGetterNet)."""
    return model if isinstance(model, SNNet) else model.model


def _anchor_layers(cfgs: list[dict[str, Any]]) -> dict[str, tuple[str, ...]]:
    """first_conv and classifier of each anchor (by its own timm cfg; a tuple names several), as flat tuples."""
    return {key: tuple(f'anchors.{i}.{name}' for i, c in enumerate(cfgs) for name in as_tuple(c[key]))
            for key in ('first_conv', 'classifier')}


def snnet_cfg(anchors: tuple[str, ...], **kwargs: Any) -> dict[str, Any]:
    """A cfg naming every anchor's layers, with the anchors' eval transform (the largest anchor's crop, size and
    interpolation) and the first anchor's normalisation (the SN-Net's input; other anchors convert it)."""
    cfgs = [get_pretrained_cfg(a) for a in anchors]
    first, last = cfgs[0], cfgs[-1]
    return {
        'num_classes': 1000, 'input_size': last.input_size, 'pool_size': last.pool_size, 'crop_pct': last.crop_pct,
        'interpolation': last.interpolation, 'fixed_input_size': any(c.fixed_input_size for c in cfgs),
        'mean': first.mean, 'std': first.std, 'license': 'apache-2.0', 'hf_hub_filename': 'model.safetensors',
        'paper_ids': 'arXiv:2302.06586', 'paper_name': 'Stitchable Neural Networks',
        'notes': ('anchors: ' + ', '.join(anchors),), **_anchor_layers([c.to_dict() for c in cfgs]),
        **kwargs,
    }


# SNNet arguments that rebuild the architecture (and its training behaviour); recorded (defaults included) in every
# model's timm model_args
ARCH_ARGS = ('anchors', 'anchor_kwargs', 'rule', 'stages', 'kernel_size', 'stride', 'layer_assignment',
              'stitched_final_norm', 'stitch_seed', 'sampling', 'flops_gap', 'stitch_rank', 'anchor_share',
              'off_path', 'input_mean', 'input_std', 'join')
# create_model kwargs that shape the tensors: a conversion is built with them, and they key its cache folder
SHAPE_ARGS = ('img_size', *ARCH_ARGS[:6])


# --- model_args --------------------------------------------------------------------------------------------------
def record_model_args(model: SNNet, kwargs: dict[str, Any]) -> None:
    """Record every argument that rebuilds `model` (entry-point defaults included) in its timm model_args."""
    defaults = inspect.signature(SNNet).parameters
    args = {k: kwargs.get(k, defaults[k].default) for k in ARCH_ARGS}
    update_model_args(model, **args, names=list(model.anchor_names), stitch_id=model.stitch_id,
                      stitch_table=model.stitch_table)


def export_model_args(model: SNNet) -> dict[str, Any]:
    """Changes since construction, for config.json (timm's own save_for_hf reads the same through `_model_args`)."""
    return model.live_model_args()


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: SNNet) -> dict[str, torch.Tensor]:
    """Check SN-Net weights against the model before timm loads them (its load is not strict when heads are reset)."""
    check_fit({k: tuple(v.shape) for k, v in state_dict.items()}, model)
    return state_dict


def check_fit(shapes: dict[str, tuple[int, ...]], model: nn.Module) -> None:
    """Raise `Mismatch` unless tensors of these shapes are exactly the model's (heads and stems timm adapts aside)."""
    own = model.state_dict()
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    adapted = ()  # timm adapts these after this filter: heads for other num_classes, stems for other in_chans
    if model.num_classes != cfg.get('num_classes', model.num_classes):
        adapted += tuple(f'{c}.' for c in as_tuple(cfg.get('classifier')))
    if model.in_chans != (cfg.get('input_size') or (3,))[0]:
        adapted += tuple(f'{c}.weight' for c in as_tuple(cfg.get('first_conv')))
    missing = [k for k in own if k not in shapes and not k.startswith(adapted)]
    unexpected = [k for k in shapes if k not in own]
    wrong = [k for k in own if k in shapes and k != 'stitch_table_json' and not k.startswith(adapted)
             and tuple(shapes[k]) != tuple(own[k].shape)]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(f'{len(wrong)} tensors differ in shape (e.g. {k}: file {tuple(shapes[k])}, '
                     f'model {tuple(own[k].shape)})')
    if missing:
        parts.append(f'{len(missing)} missing (e.g. {missing[0]})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected (e.g. {unexpected[0]})')
    detail = ', '.join(parts)
    if any('.transform.' in k for k in unexpected):
        detail += ('; it looks like an official SN-Net v1 checkpoint: convert it first with '
                   '`timm-snnet convert --from official-v1`')
    raise Mismatch(detail)


def _release(model: str) -> str:
    """The authors' release file of `model` (`OFFICIAL_TAG` tags load only it, converted once into the cache)."""
    return release_url(model, DEFAULT_RELEASE_URL)


def _model_args(defaults: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Entry-point defaults, overridden by user kwargs."""
    return {**defaults, **kwargs}


def create_from_anchors(variant: str, pretrained: bool, defaults: dict[str, Any], kwargs: dict[str, Any]) -> SNNet:
    """Build, then name the layers of the anchors actually built (a custom `anchors=` list included)."""
    model = _create_snnet(variant, pretrained, **_model_args(defaults, kwargs))
    inner = _inner(model)
    model.pretrained_cfg.update(_anchor_layers([m.pretrained_cfg for m in inner.anchors]))
    if kwargs.get('input_mean') is not None or kwargs.get('input_std') is not None:  # the input normalisation named
        model.pretrained_cfg.update(mean=inner.input_mean, std=inner.input_std)
    return model


# --- the anchors and the cfgs of the registered SN-Nets --------------------------------------------------------------
DEIT_TSB = ('deit_tiny_patch16_224', 'deit_small_patch16_224', 'deit_base_patch16_224')
# The paper's Swin anchors are the ImageNet-22k pretrained, 1k fine-tuned weights (what untagged Swin-S/B load in
# timm; untagged Swin-T loads its 1k weights, so every tag is explicit). The ResNet and ResNet -> Swin anchors are
# what the authors' timm (0.6) loaded untagged: torchvision ResNet-18, RSB A1 ResNet-50, Swin-T 1k.
SWIN_TSB = tuple(f'swin_{s}_patch4_window7_224.ms_in22k_ft_in1k' for s in ('tiny', 'small', 'base'))
RESNET_18_50 = ('resnet18.tv_in1k', 'resnet50.a1_in1k')
RESNET18_SWIN_TI = ('resnet18.tv_in1k', 'swin_tiny_patch4_window7_224.ms_in1k')
# ConvNeXt-T/S/B (ImageNet-22k pretrained, 1k fine-tuned), stitched in stages 0-2 (ConvNeXt-S and -B share depths)
CONVNEXT_TSB = tuple(f'convnext_{s}.fb_in22k_ft_in1k' for s in ('tiny', 'small', 'base'))
# the generic `snnet` without `anchors=`: two small ConvNeXts of timm's own weights, so that
# `timm.create_model('snnet')` builds, as timm (test_models.py, benchmark.py) builds every name it lists
SNNET_DEFAULT_ANCHORS = ('convnext_atto.d2_in1k', 'convnext_femto.d1_in1k')
# EfficientNet-B0/B1/B2 (timm's own weights), seven stages of MBConv blocks; stitched where the depths allow
EFFICIENTNET_B0_B2 = ('efficientnet_b0.ra_in1k', 'efficientnet_b1.ft_in1k', 'efficientnet_b2.ra_in1k')
# The paper's LeViT-192/256 SN-Net (ziplab/SN-Net `stitching_levit/`): the authors' anchors are facebookresearch/LeViT's
# distilled LeViT-192 and -256 (timm's `levit_192` / `levit_256`, LevitDistilled, 224x224). Stitches lie in stages 0
# and 1; each stage pairs block j with j + 1 (depths 4-4-4).
LEVIT_192_256 = ('levit_192.fb_dist_in1k', 'levit_256.fb_dist_in1k')
# SN-Netv2: the authors' anchors are DeiT-III ImageNet-21k pretrained, 1k fine-tuned (their deit_3_*_224_21k.pth:
# timm's fb_in22k_ft_in1k tags); their eval transform is DeiT-III's (resize 224, centre crop 1.0). Released models use
# low-rank stitching layers of rank 64.
DEIT3 = {s: f'deit3_{s}_patch16_224.fb_in22k_ft_in1k' for s in ('small', 'base', 'large')}
SNNETV2_PAIRS = {'s_b': ('small', 'base'), 's_l': ('small', 'large'), 'b_l': ('base', 'large')}


def _v2_cfg(pair: str, official: bool = False) -> dict[str, Any]:
    """Our Hub repo, or (official) the authors' Hub file, converted once into the cache (timm_snnet._sources)."""
    where = dict(url=release_url(f'snnetv2_deit3_{pair}', DEFAULT_HUB_URL)) if official else dict(
        hf_hub_id=f'{HF_HUB_ORG}/snnetv2_deit3_{pair}.in22k_ft_in1k')
    return snnet_cfg(tuple(DEIT3[s] for s in SNNETV2_PAIRS[pair]), crop_pct=1.0, paper_ids='arXiv:2307.00154',
                     paper_name='Stitched ViTs are Flexible Vision Backbones', **where)


# models over any timm anchors (the generic `snnet`, one exported stitch): ImageNet defaults until the anchors are known
_ANY_ANCHORS_CFG = {
    'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'crop_pct': 0.875,
    'interpolation': 'bicubic', 'mean': timm.data.IMAGENET_DEFAULT_MEAN, 'std': timm.data.IMAGENET_DEFAULT_STD,
    'license': 'apache-2.0', 'hf_hub_filename': 'model.safetensors', 'paper_ids': 'arXiv:2302.06586',
    'paper_name': 'Stitchable Neural Networks',
}

default_cfgs = generate_default_cfgs({
    # DeiT's own eval transform (resize 256, crop 224), as SN-Net was evaluated (timm's DeiT cfgs crop 0.9)
    'snnet_deit_tsb.in1k': snnet_cfg(DEIT_TSB, crop_pct=0.875, hf_hub_id=f'{HF_HUB_ORG}/snnet_deit_tsb.in1k'),
    f'snnet_deit_tsb.{OFFICIAL_TAG}in1k': snnet_cfg(DEIT_TSB, crop_pct=0.875, url=_release('snnet_deit_tsb')),
    'snnet_swin_tsb.in22k_ft_in1k': snnet_cfg(SWIN_TSB, hf_hub_id=f'{HF_HUB_ORG}/snnet_swin_tsb.in22k_ft_in1k'),
    'snnet_resnet.in1k': snnet_cfg(RESNET_18_50, hf_hub_id=f'{HF_HUB_ORG}/snnet_resnet.in1k'),
    'snnet_resnet18_swin_ti.in1k': snnet_cfg(
        RESNET18_SWIN_TI, hf_hub_id=f'{HF_HUB_ORG}/snnet_resnet18_swin_ti.in1k'),
    f'snnet_swin_tsb.{OFFICIAL_TAG}in22k_ft_in1k': snnet_cfg(SWIN_TSB, url=_release('snnet_swin_tsb')),
    f'snnet_resnet.{OFFICIAL_TAG}in1k': snnet_cfg(RESNET_18_50, url=_release('snnet_resnet')),
    f'snnet_resnet18_swin_ti.{OFFICIAL_TAG}in1k': snnet_cfg(RESNET18_SWIN_TI, url=_release('snnet_resnet18_swin_ti')),
    'snnet': snnet_cfg(SNNET_DEFAULT_ANCHORS),
    'snnet_convnext_tsb.in22k_ft_in1k': snnet_cfg(CONVNEXT_TSB),
    'snnet_efficientnet_b0_b2.in1k': snnet_cfg(EFFICIENTNET_B0_B2),
    'snnet_levit_192_256.in1k': snnet_cfg(LEVIT_192_256, hf_hub_id=f'{HF_HUB_ORG}/snnet_levit_192_256.in1k'),
    f'snnet_levit_192_256.{OFFICIAL_TAG}in1k': snnet_cfg(LEVIT_192_256, url=_release('snnet_levit_192_256')),
    **{f'snnetv2_deit3_{p}.in22k_ft_in1k': _v2_cfg(p) for p in SNNETV2_PAIRS},  # the default tags come first
    **{f'snnetv2_deit3_{p}.{OFFICIAL_TAG}in22k_ft_in1k': _v2_cfg(p, official=True) for p in SNNETV2_PAIRS},
    EXPORT_NAME: _ANY_ANCHORS_CFG,
})


@register_model
def snnet_deit_tsb(pretrained: bool = False, **kwargs: Any) -> SNNet:
    """SN-Net over DeiT-Ti/S/B (71 configs: 3 anchors + 2 x 34 stitches, window 2 stride 1)."""
    defaults = dict(anchors=DEIT_TSB, names=('Ti', 'S', 'B'), rule='window')
    return create_from_anchors('snnet_deit_tsb', pretrained, defaults, kwargs)


# --- hierarchical families: Swin, ResNet, ResNet -> Swin ------------------------------------------------------------


@register_model
def snnet_swin_tsb(pretrained: bool = False, **kwargs: Any) -> SNNet:
    """SN-Net over Swin-Ti/S/B (41 configs: 3 anchors + 38 stitches inside stages 0, 1, 2)."""
    defaults = dict(anchors=SWIN_TSB, names=('Ti', 'S', 'B'), rule='stage', stages=(0, 1, 2))
    return create_from_anchors('snnet_swin_tsb', pretrained, defaults, kwargs)


@register_model
def snnet_resnet(pretrained: bool = False, **kwargs: Any) -> SNNet:
    """SN-Net over ResNets, smallest first (default ResNet-18/50: 10 configs, stitches in stages 1 and 2)."""
    defaults = dict(anchors=RESNET_18_50, rule='stage', stages=(1, 2))
    return create_from_anchors('snnet_resnet', pretrained, defaults, kwargs)


@register_model
def snnet_resnet18_swin_ti(pretrained: bool = False, **kwargs: Any) -> SNNet:
    """SN-Net from ResNet-18 to Swin-Ti (8 configs: ResNet stages 1, 2 onto the Swin stages at the same resolution)."""
    defaults = dict(anchors=RESNET18_SWIN_TI, names=('R18', 'Ti'), rule='stage', stages=(1, 2))
    return create_from_anchors('snnet_resnet18_swin_ti', pretrained, defaults, kwargs)


# --- any timm family: the generic entry point --------------------------------------------------------------------
_ANCHOR_LISTS = ('anchor_kwargs', 'names', 'anchor_checkpoints')  # per-anchor kwargs, reordered with the anchors


def _as_list(value: Any, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def plan_anchors(anchors: Sequence[str], anchor_kwargs: Any = None) -> tuple[list[int], list[int], list[list]]:
    """(order by FLOPs, multiply-adds, (stage, reduction) of each unit) of timm anchors, each built on the meta
    device."""
    flops, units = [], []
    for name, kw in zip(anchors, _as_list(anchor_kwargs or {}, len(anchors))):
        with torch.device('meta'):
            model = timm.create_model(name, **kw).eval()
        flops.append(meta_flops(model))
        units.append([(u.stage, u.reduction) for u in family_for(model).units(model)])
    return sorted(range(len(anchors)), key=lambda i: flops[i]), flops, units


@register_model
def snnet(pretrained: bool = False, **kwargs: Any) -> SNNet:
    """SN-Net over any timm anchors: `timm.create_model('snnet', anchors=('convnext_atto', 'convnext_femto'))`.

    The anchors (timm names, tags allowed) are ordered by FLOPs (`sort_anchors=False` keeps the given order), with
    their `anchor_kwargs`, `names` and `anchor_checkpoints`. Anchors with the same stages at the same reductions meet
    stage to stage (the paper); other families meet where their resolutions do (`join='reduction'`, see `SNNet`).
    The rule is `'window'` when every anchor is one stage of blocks (ViT-like) and `'stage'` otherwise, stitching
    every stage (every shared reduction) but the last; pass `rule=` / `stages=` to choose.
    Weights: `pretrained_anchors=True` (the anchors' own timm weights), `anchor_checkpoints`, or a trained SN-Net
    from `hf-hub:ORG/REPO` / `local-dir:DIR`, whose config.json records the anchors. Without `anchors`, the anchors
    are `SNNET_DEFAULT_ANCHORS` (ConvNeXt-Atto and -Femto).
    """
    anchors = kwargs.pop('anchors', None)
    if anchors is None:
        anchors = SNNET_DEFAULT_ANCHORS
    if not anchors or isinstance(anchors, str) or len(anchors) < 2:
        raise TypeError(f"snnet needs anchors=(name, name, ...): two or more timm model names, e.g. "
                        f"timm.create_model('snnet', anchors=('convnext_atto', 'convnext_femto')); got {anchors!r}")
    anchors = list(anchors)
    if pretrained and not kwargs.get('pretrained_cfg') and not any(
            (kwargs.get('pretrained_cfg_overlay') or {}).get(k) for k in ('file', 'url', 'hf_hub_id', 'state_dict')):
        raise ValueError("the generic snnet has no published weights: pass pretrained_anchors=True for the anchors' "
                         "own timm weights, or load a trained SN-Net with 'hf-hub:ORG/REPO' or 'local-dir:DIR'")
    order, _, units = plan_anchors(anchors, kwargs.get('anchor_kwargs'))
    if kwargs.pop('sort_anchors', True) and order != sorted(order):
        anchors, units = [anchors[i] for i in order], [units[i] for i in order]
        for key in _ANCHOR_LISTS:
            if isinstance(kwargs.get(key), (list, tuple)):
                kwargs[key] = [kwargs[key][i] for i in order]
    if kwargs.setdefault('join', choose_join(units)) == 'reduction':  # families that meet where resolutions do
        kwargs.setdefault('rule', 'stage')
        if 'stages' not in kwargs:
            kwargs['stages'] = junction_stages(junction_depths([[r for _, r in u] for u in units])[1])
    stages = [len({s for s, _ in u}) for u in units]
    rule = kwargs.setdefault('rule', 'window' if max(stages) == 1 else 'stage')
    if rule == 'stage' and 'stages' not in kwargs:
        kwargs['stages'] = tuple(range(max(min(stages) - 1, 1)))
    if not kwargs.get('pretrained_cfg'):  # a cfg for these anchors (not when a saved config.json supplies one)
        kwargs['pretrained_cfg_overlay'] = {**snnet_cfg(tuple(anchors)), **(kwargs.get('pretrained_cfg_overlay') or {})}
    return create_from_anchors('snnet', pretrained, dict(anchors=tuple(anchors)), kwargs)


# --- named families: the anchors a user would pick first -------------------------------------------------------------


@register_model
def snnet_convnext_tsb(pretrained: bool = False, **kwargs: Any) -> SNNet:
    """SN-Net over ConvNeXt-T/S/B, stitched inside stages 0, 1 and 2 (`pretrained_anchors=True`: timm's weights)."""
    defaults = dict(anchors=CONVNEXT_TSB, names=('T', 'S', 'B'), rule='stage', stages=(0, 1, 2))
    return create_from_anchors('snnet_convnext_tsb', pretrained, defaults, kwargs)


@register_model
def snnet_efficientnet_b0_b2(pretrained: bool = False, **kwargs: Any) -> SNNet:
    """SN-Net over EfficientNet-B0/B1/B2, stitched inside stages 1-5 (`pretrained_anchors=True`: timm's weights)."""
    defaults = dict(anchors=EFFICIENTNET_B0_B2, names=('B0', 'B1', 'B2'), rule='stage', stages=(1, 2, 3, 4, 5))
    return create_from_anchors('snnet_efficientnet_b0_b2', pretrained, defaults, kwargs)


# --- LeViT: the paper's LeViT-192/256 SN-Net (ziplab/SN-Net `stitching_levit/`) -----------------------------------


@register_model
def snnet_levit_192_256(pretrained: bool = False, **kwargs: Any) -> SNNet:
    """SN-Net over LeViT-192/256 (8 configs: 2 anchors + 3 stitches in each of stages 0 and 1)."""
    defaults = dict(anchors=LEVIT_192_256, names=('192', '256'), rule='stage', stages=(0, 1))
    return create_from_anchors('snnet_levit_192_256', pretrained, defaults, kwargs)


# --- SN-Netv2: two-way stitching of DeiT-III anchors, low-rank stitching layers, resource-constrained sampling --------
def _create_snnetv2(pair: str, pretrained: bool, kwargs: dict[str, Any]) -> SNNet:
    defaults = dict(anchors=tuple(DEIT3[s] for s in SNNETV2_PAIRS[pair]), names=tuple(pair.upper().split('_')),
                    rule='two_way', stitch_rank=64, sampling='ros', flops_gap=1.0)
    return create_from_anchors(f'snnetv2_deit3_{pair}', pretrained, defaults, kwargs)


@register_model
def snnetv2_deit3_s_b(pretrained: bool = False, **kwargs: Any) -> SNNet:
    """SN-Netv2 over DeiT-III S/B (135 configs, 134 trained: anchors, SL, LS, LSL, SLS; 23 stitching layers)."""
    return _create_snnetv2('s_b', pretrained, kwargs)


@register_model
def snnetv2_deit3_s_l(pretrained: bool = False, **kwargs: Any) -> SNNet:
    """SN-Netv2 over DeiT-III S/L (135 configs, 134 trained: anchors, SL, LS, LSL, SLS; 23 stitching layers)."""
    return _create_snnetv2('s_l', pretrained, kwargs)


@register_model
def snnetv2_deit3_b_l(pretrained: bool = False, **kwargs: Any) -> SNNet:
    """SN-Netv2 over DeiT-III B/L (135 configs, 134 trained: anchors, SL, LS, LSL, SLS; 23 stitching layers)."""
    return _create_snnetv2('b_l', pretrained, kwargs)


# --- one stitch as a plain timm model (SNNet.export_stitch) ---------------------------------------------------
def _layer_names(anchors: Sequence[str], segments: Sequence[Sequence[int]]) -> dict[str, Any]:
    """first_conv (the first segment's stem) and classifier (the last segment's head), by the anchors' timm cfgs."""
    out = {}
    for key, a in (('first_conv', segments[0][0]), ('classifier', segments[-1][0])):
        cfg = get_pretrained_cfg(anchors[a])
        name = getattr(cfg, key, None) if cfg is not None else None
        out[key] = f'anchors.{a}.{name}' if isinstance(name, str) else None
    return out


@register_model
def exported_stitch(pretrained: bool = False, **kwargs: Any) -> ExportedStitch:
    """One SN-Net config as a standalone model (`SNNet.export_stitch(k)`; rebuilt from its config.json)."""
    _weights().check_saved(EXPORT_NAME, kwargs, pretrained)
    if kwargs.get('features_only'):
        raise RuntimeError(f'features_only is not supported for {EXPORT_NAME}')
    if 'anchors' not in kwargs or 'segments' not in kwargs:
        raise TypeError(f'{EXPORT_NAME} needs its route (anchors=, anchor_kwargs=, segments=, stitch_layers=): get one '
                        f'from SNNet.export_stitch(k), or load a folder it wrote with "local-dir:DIR"')
    overlay = {**_layer_names(kwargs['anchors'], kwargs['segments']), **(kwargs.pop('pretrained_cfg_overlay') or {})}
    device = kwargs.pop('device', None)
    if pretrained:  # anchors on meta, pruned, then the checkpoint's tensors become the parameters
        model = build_model_with_cfg(ExportedStitch, EXPORT_NAME, True, pretrained_cfg_overlay=overlay,
                                     device='meta', **kwargs)
        return model.to(device) if device is not None else model
    return build_model_with_cfg(ExportedStitch, EXPORT_NAME, False, pretrained_cfg_overlay=overlay, device=device,
                                **kwargs)
