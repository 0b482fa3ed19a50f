"""InceptionNeXt adapter over timm's MetaNeXt: NCHW maps, `stages.i` = downsample (identity in stage 0) + Sequential
`blocks`. forward_features ends at the last stage; the MLP head is timm's forward_head, which pools first
(`EarlyPool`)."""
from timm.models.inception_next import MetaNeXt

from ._base import CNNFamily, EarlyPool, Unit, children_names, register_family, stage_units


@register_family
class MetaNeXtFamily(EarlyPool, CNNFamily):
    model_cls = MetaNeXt

    def units(self, model: MetaNeXt) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')
