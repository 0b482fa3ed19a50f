"""EfficientViT (MIT) adapters over timm's EfficientVit (B) and EfficientVitLarge (L): NCHW maps, `stages.i` is a
Sequential `blocks` whose block 0 strides (an MBConv / fused-MBConv). forward_features ends at the last stage; the
1x1 conv, pooling and classifier are timm's forward_head (`head`), which pools ahead of its own layers (`EarlyPool`)."""
from timm.models.efficientvit_mit import EfficientVit, EfficientVitLarge

from ._base import CNNFamily, EarlyPool, Unit, children_names, register_family, stage_units


@register_family
class EfficientVitFamily(EarlyPool, CNNFamily):
    model_cls = EfficientVit

    def units(self, model: EfficientVit) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks')


@register_family
class EfficientVitLargeFamily(EfficientVitFamily):
    model_cls = EfficientVitLarge
