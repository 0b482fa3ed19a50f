"""ResNetV2 adapter over timm's ResNetV2: NCHW maps, `stages.i.blocks` (block 0 downsamples), final `norm`."""
import torch
from timm.models.resnetv2 import ResNetV2

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class ResNetV2Family(CNNFamily):
    model_cls = ResNetV2
    norm_names = ('norm',)  # pre-activation models' final norm-act; identity otherwise

    def units(self, model: ResNetV2) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks')

    def finish(self, model: ResNetV2, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)
