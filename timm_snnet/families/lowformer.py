"""LowFormer adapter over timm's LowFormer: NCHW maps, `stages.i` is a Sequential of blocks whose block 0 (a residual
MBConv) strides and sets the width. forward_features ends at the last stage; `in_conv`, pooling and the classifier
are timm's forward_head."""
from timm.models.lowformer import LowFormer

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class LowFormerFamily(CNNFamily):
    model_cls = LowFormer

    def units(self, model: LowFormer) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'))
