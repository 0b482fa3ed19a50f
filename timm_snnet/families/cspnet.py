"""DarkNet adapter over timm's CspNet: NCHW maps, `stem` (a Sequential, tapped by timm's feature_info) then `stages`.

A DarkNet stage (DarkStage: `conv_down` then `blocks`, darknet53 / darknetaa53) is a plain chain: one unit per
block, `conv_down` in block 0. No final norm; the head is timm's.

Cross-stage-partial stages (CrossStage, CrossStage3: CSPResNe(X)t, CSPDarkNet, CS3DarkNet / EdgeNet) are refused: they
split their input in two paths, run the blocks on one and join both in a transition conv, so no block boundary
carries the stage's activation alone; as a single unit per stage they would give no stitch (stitches are made inside
a stage).
"""
from timm.models.cspnet import CspNet, DarkStage

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class CspNetFamily(CNNFamily):
    model_cls = CspNet

    def units(self, model: CspNet) -> list[Unit]:
        cross = [f'stages.{s} ({type(st).__name__})' for s, st in enumerate(model.stages)
                 if not isinstance(st, DarkStage)]
        if cross:
            raise ValueError(f'CspNet anchors with cross-stage-partial stages ({", ".join(cross)}) are not supported: '
                             f'their blocks run on one half of a split the transition conv joins again, so no block '
                             f'boundary carries the stage activation to stitch; DarkNet stages (darknet53) are')
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='conv_down')
