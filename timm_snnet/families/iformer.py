"""iFormer adapter over timm's IFormer: NCHW maps, `stages.i` = downsample (identity in stage 0) + Sequential
`blocks` (conv blocks, then single-head modulation attention blocks, all NCHW). forward_features ends at the last
stage; pooling and the (distilled) classifier are timm's forward_head."""
from timm.models.iformer import IFormer

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class IFormerFamily(CNNFamily):
    model_cls = IFormer

    def units(self, model: IFormer) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')
