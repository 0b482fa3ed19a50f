"""DaViT adapter over timm's DaVit: NCHW maps, `stages.i` = downsample (identity in stage 0) + Sequential `blocks`
(each a spatial-window and a channel attention block, taking and giving NCHW maps); `norm_pre` last."""
import torch
from timm.models.davit import DaVit

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class DaVitFamily(CNNFamily):
    model_cls = DaVit
    norm_names = ('norm_pre',)  # identity unless head_norm_first; the usual final norm sits in `head`

    def units(self, model: DaVit) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')

    def finish(self, model: DaVit, x: torch.Tensor) -> torch.Tensor:
        return model.norm_pre(x)
