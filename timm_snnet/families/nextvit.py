"""Next-ViT adapter over timm's NextViT: NCHW maps, `stages.i.blocks` (block 0 strides), final `norm` (BatchNorm
sized for the last stage).

Blocks of a stage widen only at the stage's end or at each transformer block (`stage_out_chs`, e.g. 384 x 4 then
512 in stage 2): a block not yet at its stage's width joins the next one in a unit, so every unit hands on the
stage's channels (stage 2 cuts every 5 blocks; stages 1 and 3 are one unit each).
"""
import torch
from timm.models.nextvit import NextViT

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class NextViTFamily(CNNFamily):
    model_cls = NextViT
    norm_names = ('norm',)

    def units(self, model: NextViT) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks',
                           block_channels=lambda s, b: model.stage_out_chs[s][b])

    def finish(self, model: NextViT, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)
