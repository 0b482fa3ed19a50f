"""SwiftFormer adapter over timm's SwiftFormer: NCHW maps, `stages.i` = downsample (identity in stage 0) +
Sequential `blocks` (conv encoders, then one efficient additive attention block per stage); `norm` last. The head
(`head` and `head_dist`, averaged as in timm) is timm's forward_head."""
import torch
from timm.models.swiftformer import SwiftFormer

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class SwiftFormerFamily(CNNFamily):
    model_cls = SwiftFormer
    norm_names = ('norm',)

    def units(self, model: SwiftFormer) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')

    def finish(self, model: SwiftFormer, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)
