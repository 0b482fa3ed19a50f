"""RegNet adapter over timm's RegNet: NCHW maps, stages `s1`..`s4` whose children `b1`.. are the blocks."""
import torch
from timm.models.regnet import RegNet

from ._base import CNNFamily, Unit, register_family, stage_units

_STAGES = ('s1', 's2', 's3', 's4')


@register_family
class RegNetFamily(CNNFamily):
    model_cls = RegNet
    # stem: `stem`; `final_conv` (1x1 conv or activation, in forward_features) is head-side

    def units(self, model: RegNet) -> list[Unit]:
        return stage_units(model, _STAGES)

    def finish(self, model: RegNet, x: torch.Tensor) -> torch.Tensor:
        return model.final_conv(x)
