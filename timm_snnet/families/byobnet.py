"""ByobNet adapter (RepVGG, GERNet, MobileOne, ResNet-Q, ...) over timm's ByobNet: NCHW maps.

`stages` is a Sequential of stages, each a Sequential of blocks (block 0 strides); `final_conv` (in
forward_features) is head-side. timm lists a stage in feature_info only where the stride changes after it; the
others' channels are read from their last conv (as are each block's, to keep a block not yet at its stage's width
with the next one, e.g. MobileOne's stride-2 depthwise blocks).
"""
import torch
from timm.models.byobnet import ByobNet

from ._base import CNNFamily, Unit, children_names, last_conv_channels, register_family, stage_specs, stage_units


@register_family
class ByobNetFamily(CNNFamily):
    model_cls = ByobNet

    def units(self, model: ByobNet) -> list[Unit]:
        stages = children_names(model, 'stages')

        def channels(s: int, b: int) -> int:
            return last_conv_channels(model.stages[s][b])

        specs = stage_specs(model, stages, lambda s: channels(s, -1))
        return stage_units(model, stages, specs=specs, block_channels=channels)

    def finish(self, model: ByobNet, x: torch.Tensor) -> torch.Tensor:
        return model.final_conv(x)
