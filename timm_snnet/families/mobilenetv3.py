"""MobileNetV3 adapter (MobileNetV3, MobileNetV4, LCNet, ...) over timm's MobileNetV3: NCHW maps.

Stages as EfficientNet's (`blocks` of Sequential stages); forward_features ends at the last stage: global pool,
`conv_head`, `norm_head`, `act2` and the classifier are all in forward_head. timm taps the stem at `bn1`.
"""
from timm.models.mobilenetv3 import MobileNetV3

from ._base import CNNFamily, Unit, register_family
from .efficientnet import block_stage_units


@register_family
class MobileNetV3Family(CNNFamily):
    model_cls = MobileNetV3
    stem_names = ('conv_stem', 'bn1')

    def units(self, model: MobileNetV3) -> list[Unit]:
        return block_stage_units(model)
