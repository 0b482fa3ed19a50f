"""EfficientNet adapter (EfficientNet, EfficientNetV2, MixNet, MNASNet, ...) over timm's EfficientNet: NCHW maps.

`blocks` is a Sequential of stages, each a Sequential of blocks: every stage is an SN-Net stage (block 0 strides and
changes width), including the stages timm's feature_info leaves out (those with no stride change after them).
`conv_head` + `bn2` end forward_features: they are head-side, after the last unit.
"""
import torch
from timm.models.efficientnet import EfficientNet
from torch import nn

from ._base import CNNFamily, Unit, children_names, last_conv_channels, register_family, stage_specs, stage_units


def block_stage_units(model: nn.Module) -> list[Unit]:
    """Units of `model.blocks` (stages of blocks, timm's EfficientNet builder); a block's channels are its
    'bottleneck' feature (its output), an unlisted stage's those of its last block."""
    stages = children_names(model, 'blocks')

    def channels(s: int, b: int) -> int:
        block = model.blocks[s][b]
        try:
            return block.feature_info('bottleneck')['num_chs']
        except AttributeError:  # timm's MobileAttention.feature_info reads a conv it does not have
            return last_conv_channels(block)

    specs = stage_specs(model, stages, lambda s: channels(s, -1))
    return stage_units(model, stages, specs=specs, block_channels=channels)


@register_family
class EfficientNetFamily(CNNFamily):
    model_cls = EfficientNet
    stem_names = ('conv_stem', 'bn1')

    def units(self, model: EfficientNet) -> list[Unit]:
        return block_stage_units(model)

    def finish(self, model: EfficientNet, x: torch.Tensor) -> torch.Tensor:
        return model.bn2(model.conv_head(x))
