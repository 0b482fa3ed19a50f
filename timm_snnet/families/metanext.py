"""InceptionNeXt adapter over timm's MetaNeXt: NCHW maps, `stages.i` = downsample (identity in stage 0) + Sequential
`blocks`. forward_features ends at the last stage; the norm and MLP head are timm's forward_head."""
from timm.models.inception_next import MetaNeXt

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class MetaNeXtFamily(CNNFamily):
    model_cls = MetaNeXt
    head_keeps_pool = True  # timm's MlpClassifierHead pools first

    def units(self, model: MetaNeXt) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')
