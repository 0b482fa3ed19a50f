"""LeViT adapter over timm's Levit / LevitDistilled (linear mode): tokens (B, N, C), three stages of equal blocks.

A stage's `LevitDownsample` (attention subsample + MLP; identity in stage 0) runs in its block 0, as timm orders
them. Channels and reductions are timm's `feature_info` (16, 32, 64 for the default 's16' stem). LeViT has no final
norm; the head (`forward_head`: token mean, BN + linear, and `head_dist` for LevitDistilled) is timm's own.
"""
import torch
from timm.models.levit import Levit

from ._base import Family, Unit, children_names, register_family, stage_units


@register_family
class LevitFamily(Family):
    model_cls = Levit
    layout = 'tokens'
    stem_names = ('stem',)
    intermediate_fmts = ('NCHW',)  # timm's Levit gives NCHW features only
    label, fixed_size_reason = 'LeViT', 'their attention biases are built for it'

    def units(self, model: Levit) -> list[Unit]:
        if model.use_conv:
            raise ValueError('Levit anchors in conv mode (use_conv=True, the *_conv models) are not supported: build '
                             'the linear-mode model (tokens)')
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')

    def stem(self, model: Levit, x: torch.Tensor) -> torch.Tensor:
        return model.stem(x).flatten(2).transpose(1, 2)
