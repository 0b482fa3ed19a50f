"""ConvNeXt adapter over timm's ConvNeXt: NCHW maps, `stages.i` = downsample + Sequential `blocks`, `norm_pre` last."""
import torch
from timm.models.convnext import ConvNeXt

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class ConvNeXtFamily(CNNFamily):
    model_cls = ConvNeXt
    norm_names = ('norm_pre',)  # identity unless head_norm_first; the usual final norm sits in `head`

    def units(self, model: ConvNeXt) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')

    def finish(self, model: ConvNeXt, x: torch.Tensor) -> torch.Tensor:
        return model.norm_pre(x)
