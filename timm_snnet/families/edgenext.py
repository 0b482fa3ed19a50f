"""EdgeNeXt adapter over timm's EdgeNeXt: NCHW maps, `stages.i` = downsample (identity in stage 0) + Sequential
`blocks` (conv encoders, then split depth-wise transpose attention blocks, all NCHW); `norm_pre` last."""
import torch
from timm.models.edgenext import EdgeNeXt

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class EdgeNeXtFamily(CNNFamily):
    model_cls = EdgeNeXt
    norm_names = ('norm_pre',)  # identity unless head_norm_first; the usual final norm sits in `head`

    def units(self, model: EdgeNeXt) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')

    def finish(self, model: EdgeNeXt, x: torch.Tensor) -> torch.Tensor:
        return model.norm_pre(x)
