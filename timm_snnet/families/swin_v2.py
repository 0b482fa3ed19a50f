"""Swin V2 adapter over timm's SwinTransformerV2: as Swin (NHWC maps, four stages, patch merging at each stage's
start, identity in stage 0; final `norm` sized for the last stage), with V2's blocks (scaled cosine attention,
log-spaced continuous position bias, residual post-norm)."""
from timm.models.swin_transformer_v2 import SwinTransformerV2

from ._base import register_family
from .swin import SwinFamily


@register_family
class SwinV2Family(SwinFamily):
    model_cls = SwinTransformerV2
