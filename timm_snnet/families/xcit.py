"""XCiT adapter over timm's Xcit: tokens (B, N, C), one stage of equal cross-covariance attention blocks.

The stem is `patch_embed` (a conv stack), the Fourier positional encoding `pos_embed` (parameters: its projection)
and `pos_drop`. Each XCA block takes the patch grid (Hp, Wp) for its local patch interaction, given here by
`run_module` from the anchor's fixed image size (timm's pretrained XCiTs are fixed-size; other inputs are refused);
an exported stitch's back anchor has no `patch_embed`, and reads a square grid from the token count.
After the last unit, `finish` is timm's `forward_cls` (class token + class-attention blocks) and `norm`: head-side,
as in timm's forward_intermediates, whose block features have no class token.
"""
import math

import torch
from timm.models.xcit import Xcit

from ._base import Family, Unit, block_units, register_family


@register_family
class XcitFamily(Family):
    model_cls = Xcit
    layout = 'tokens'
    stem_names = ('patch_embed', 'pos_embed', 'pos_drop')
    taps = 'block'
    norm_names = ('norm',)
    intermediate_fmts = ('NCHW', 'NLC')
    label, fixed_size_reason = 'XCiT', 'their blocks are given its patch grid'

    def units(self, model: Xcit) -> list[Unit]:
        return block_units(model)

    @staticmethod
    def _grid(model: Xcit, tokens: int) -> tuple[int, int]:
        """The patch grid of the anchor's image size; a square grid of `tokens` where the anchor's `patch_embed` is
        pruned (a stitch's back anchor, exported)."""
        pe = model.patch_embed
        if hasattr(pe, 'img_size'):
            return pe.img_size[0] // pe.patch_size, pe.img_size[1] // pe.patch_size
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f'cannot recover the patch grid of {tokens} tokens without the anchor\'s patch_embed')
        return side, side

    def stem(self, model: Xcit, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x, (hp, wp) = model.patch_embed(x)
        if model.pos_embed is not None:
            x = x + model.pos_embed(b, hp, wp).reshape(b, -1, x.shape[1]).permute(0, 2, 1)
        return model.pos_drop(x)

    def run_module(self, model: Xcit, name: str, x: torch.Tensor) -> torch.Tensor:
        return model.get_submodule(name)(x, *self._grid(model, x.shape[1]))

    def finish(self, model: Xcit, x: torch.Tensor) -> torch.Tensor:
        if model.cls_attn_blocks is not None:
            x = model.forward_cls(x)
        return model.norm(x)
