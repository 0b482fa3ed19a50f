"""CaiT adapter over timm's Cait: tokens (B, N, C), one stage of equal self-attention blocks (LayerScale, talking
heads), patch tokens only.

The stem is `patch_embed`, `pos_embed` and `pos_drop`. After the last unit, `finish` is timm's `forward_cls` (the
class token through the class-attention blocks `blocks_token_only`, prepended) and `norm`: head-side, as in timm's
forward_intermediates, whose block features have no class token.
"""
import torch
from timm.models.cait import Cait

from ._base import Family, Unit, block_units, register_family


@register_family
class CaitFamily(Family):
    model_cls = Cait
    layout = 'tokens'
    stem_names = ('patch_embed', 'pos_embed', 'pos_drop')
    taps = 'block'
    norm_names = ('norm',)
    intermediate_fmts = ('NCHW', 'NLC')
    label, fixed_size_reason = 'CaiT', 'their position embedding is built for it'

    def units(self, model: Cait) -> list[Unit]:
        return block_units(model)

    def stem(self, model: Cait, x: torch.Tensor) -> torch.Tensor:
        return model.pos_drop(model.patch_embed(x) + model.pos_embed)

    def finish(self, model: Cait, x: torch.Tensor) -> torch.Tensor:
        if model.blocks_token_only is not None and model.cls_token is not None:  # not pruned with the head
            x = model.forward_cls(x)
        return model.norm(x)
