"""GhostNet (v1-v3) and RepGhostNet adapters over timm's GhostNet and RepGhostNet: NCHW maps, `blocks` a Sequential
of stages, each a Sequential of ghost bottlenecks (block 0 strides and changes width), the last stage one 1x1
ConvBnAct. timm lists in feature_info only the stages whose block 0 strides, so each stage's reduction is the stem's
stride times its blocks' 0 strides so far, and its channels its last block's (a bottleneck's `ghost2.out_chs`, the
ConvBnAct's conv). Pooling, `conv_head` and the classifier are timm's forward_head."""
from timm.models.ghostnet import GhostNet
from timm.models.repghost import RepGhostNet
from torch import nn

from ._base import CNNFamily, Unit, children_names, last_conv_channels, register_family, stage_units


def _block_channels(block: nn.Module) -> int:
    return block.ghost2.out_chs if hasattr(block, 'ghost2') else last_conv_channels(block)


def _stage_specs(model: GhostNet, stages: list[str]) -> list[tuple[int, int]]:
    """(channels, reduction) of each stage: the ConvBnAct stage keeps the reduction (it has no `stride`)."""
    reduction, out = model.conv_stem.stride[0], []
    for name in stages:
        stage = model.get_submodule(name)
        reduction *= getattr(stage[0], 'stride', 1)
        out.append((_block_channels(stage[-1]), reduction))
    return out


@register_family
class GhostNetFamily(CNNFamily):
    model_cls = GhostNet
    stem_names = ('conv_stem', 'bn1', 'act1')

    def units(self, model: GhostNet) -> list[Unit]:
        stages = children_names(model, 'blocks')
        return stage_units(model, stages, specs=_stage_specs(model, stages),
                           block_channels=lambda s, b: _block_channels(model.blocks[s][b]))


@register_family
class RepGhostNetFamily(GhostNetFamily):
    model_cls = RepGhostNet
