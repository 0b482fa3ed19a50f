"""NFNet adapter (NFNet-F, ECA-NFNet, NF-ResNet, NF-RegNet) over timm's NormFreeNet: NCHW maps.

`stem` (a Sequential, tapped by timm's feature_info) then `stages` (a Sequential of stages, each a Sequential of
NormFreeBlocks; block 0 strides and owns its shortcut downsample). `final_conv` (a 1x1 conv or identity) and
`final_act` end forward_features: they are head-side, after the last unit, as EfficientNet's conv_head. timm lists
`final_conv` in place of the last stage where it is a conv; that stage's channels are its last block's `conv3`.
"""
import torch
from timm.models.nfnet import NormFreeNet

from ._base import CNNFamily, Unit, children_names, register_family, stage_specs, stage_units


@register_family
class NormFreeNetFamily(CNNFamily):
    model_cls = NormFreeNet

    def units(self, model: NormFreeNet) -> list[Unit]:
        stages = children_names(model, 'stages')
        specs = stage_specs(model, stages, lambda s: model.stages[s][-1].conv3.out_channels)
        return stage_units(model, stages, specs=specs)

    def finish(self, model: NormFreeNet, x: torch.Tensor) -> torch.Tensor:
        return model.final_act(model.final_conv(x))
