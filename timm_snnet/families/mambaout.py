"""MambaOut adapter over timm's MambaOut: NHWC maps between units, `stages.i` = downsample (identity in stage 0) +
Sequential `blocks` (gated CNN blocks). forward_features ends at the last stage: the norm, pooling and MLP head are
all in timm's forward_head."""
from timm.models.mambaout import MambaOut

from ._base import CNNFamily, Layout, Unit, children_names, register_family, stage_units


@register_family
class MambaOutFamily(CNNFamily):
    model_cls = MambaOut
    layout: Layout = 'nhwc'

    def units(self, model: MambaOut) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')
