"""timm entry points for SN-Nets. Importing this module registers them in timm's model registry."""
from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._input import update_model_args

from .snnet import SNNet

HF_HUB_ORG = 'timm-snnet'  # the one Hugging Face organisation that holds every SN-Net repo

__all__ = ['HF_HUB_ORG', 'SNNet']


def _create_snnet(variant: str, pretrained: bool = False, **kwargs: Any) -> SNNet:
    if kwargs.get('features_only'):
        raise RuntimeError(f'features_only is not supported for {variant}: a stitch changes the feature pyramid')
    model = build_model_with_cfg(SNNet, variant, pretrained, **kwargs)
    if kwargs.get('stitch_id') is not None:
        update_model_args(model, stitch_id=model.stitch_id)
    return model


def _anchor_cfg(model_args: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """first_conv and classifier for every anchor, as tuples."""
    first, head = model_args['first_conv'], model_args['classifier']
    n = len(model_args['anchors'])
    return tuple(f'anchors.{i}.{first}' for i in range(n)), tuple(f'anchors.{i}.{head}' for i in range(n))


def _cfg(anchors: tuple[str, ...], first_conv: str, classifier: str, **kwargs: Any) -> dict[str, Any]:
    first, head = _anchor_cfg(dict(anchors=anchors, first_conv=first_conv, classifier=classifier))
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'crop_pct': 0.875,
        'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': first, 'classifier': head, 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2302.06586', 'paper_name': 'Stitchable Neural Networks',
        **kwargs,
    }


DEIT_TSB = ('deit_tiny_patch16_224', 'deit_small_patch16_224', 'deit_base_patch16_224')

default_cfgs = generate_default_cfgs({
    # DeiT eval transform (resize 256, crop 224), as SN-Net was evaluated
    'snnet_deit_tsb.in1k': _cfg(DEIT_TSB, 'patch_embed.proj', 'head', hf_hub_id=f'{HF_HUB_ORG}/'),
})


def _model_args(defaults: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Entry-point defaults, overridden by user kwargs."""
    return {**defaults, **kwargs}


@register_model
def snnet_deit_tsb(pretrained: bool = False, **kwargs: Any) -> SNNet:
    """SN-Net over DeiT-Ti/S/B (71 configs: 3 anchors + 2 x 34 stitches, window 2 stride 1)."""
    args = _model_args(dict(anchors=DEIT_TSB, names=('Ti', 'S', 'B'), rule='window'), kwargs)
    return _create_snnet('snnet_deit_tsb', pretrained, **args)
