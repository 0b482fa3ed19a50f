"""BEiT / BEiT v2 adapter over timm's Beit: tokens (B, N, C) with a class token, one stage of equal blocks.

forward_features is `patch_embed` -> class token -> `pos_embed` (absent with relative position biases) -> `pos_drop`
-> `blocks` -> `norm` (identity when `fc_norm` pools in the head); the head is timm's `forward_head`. Each block owns
its relative position bias (sized for the patch grid: the anchors take their fixed image size only). A bias shared by
all blocks (`use_shared_rel_pos_bias=True`, a learnable table every block reads) is refused.
"""
import torch
from timm.models.beit import Beit

from ._base import Unit, block_units, register_family
from .vit import ViTFamily


@register_family
class BeitFamily(ViTFamily):
    model_cls = Beit
    stem_names = ('patch_embed', 'cls_token', 'pos_embed', 'pos_drop')

    def units(self, model: Beit) -> list[Unit]:
        if model.rel_pos_bias is not None:
            raise ValueError('Beit anchors with a shared relative position bias (use_shared_rel_pos_bias=True) are not '
                             'supported: its learnable table feeds every block, so no block could be cut from it')
        return block_units(model)

    def stem(self, model: Beit, x: torch.Tensor) -> torch.Tensor:
        x = model.patch_embed(x)
        x = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if model.pos_embed is not None:
            x = x + model.pos_embed
        return model.pos_drop(x)
