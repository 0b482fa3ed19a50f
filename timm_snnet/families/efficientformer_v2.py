"""EfficientFormerV2 adapter over timm's EfficientFormerV2: NCHW maps, `stages.i` = downsample (identity in stage 0)
+ Sequential `blocks` (conv MLP blocks, attention blocks in the last two stages, all NCHW); `norm` last. The head
(`head` and `head_dist`, averaged as in timm) is timm's forward_head."""
import torch
from timm.models.efficientformer_v2 import EfficientFormerV2

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class EfficientFormerV2Family(CNNFamily):
    model_cls = EfficientFormerV2
    norm_names = ('norm',)
    label, fixed_size_reason = 'EfficientFormerV2', 'their attention biases are built for it'

    def units(self, model: EfficientFormerV2) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')

    def finish(self, model: EfficientFormerV2, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)
