"""EfficientViT (MSRA) adapter over timm's EfficientVitMsra: NCHW maps, `stages.i` = downsample (identity in stage 0)
+ Sequential `blocks` (cascaded group attention blocks, NCHW). The stem is `patch_embed` (a conv stack, reduction
16); forward_features ends at the last stage, pooling and the normed classifier are timm's forward_head."""
from timm.models.efficientvit_msra import EfficientVitMsra

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class EfficientVitMsraFamily(CNNFamily):
    model_cls = EfficientVitMsra
    stem_names = ('patch_embed',)
    label, fixed_size_reason = 'EfficientViT (MSRA)', 'their attention biases are built for it'

    def units(self, model: EfficientVitMsra) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')
