"""RepViT adapter over timm's RepVit: NCHW maps, `stages.i` = downsample (identity in stage 0) + Sequential `blocks`.
forward_features ends at the last stage; pooling and the (distilled) classifier are timm's forward_head."""
from timm.models.repvit import RepVit

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class RepVitFamily(CNNFamily):
    model_cls = RepVit

    def units(self, model: RepVit) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')
