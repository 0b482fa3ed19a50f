"""FocalNet adapter over timm's FocalNet: NCHW maps, `layers.i` = downsample (identity in stage 0) + `blocks`, final
`norm` (sized for the last stage; identity when the head holds the norm, `head_hidden_size` models)."""
import torch
from timm.models.focalnet import FocalNet

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class FocalNetFamily(CNNFamily):
    model_cls = FocalNet
    norm_names = ('norm',)

    def units(self, model: FocalNet) -> list[Unit]:
        return stage_units(model, children_names(model, 'layers'), blocks='blocks', downsample='downsample')

    def finish(self, model: FocalNet, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)
