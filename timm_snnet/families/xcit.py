"""XCiT adapter over timm's Xcit: tokens (B, N, C), one stage of equal cross-covariance attention blocks.

The stem is `patch_embed` (a conv stack), the Fourier positional encoding `pos_embed` (parameters: its projection)
and `pos_drop`. Each XCA block takes the patch grid (Hp, Wp) for its local patch interaction, given here by
`run_module` from the anchor's fixed image size (timm's pretrained XCiTs are fixed-size; other inputs are refused);
an exported stitch's back anchor has no `patch_embed`, and reads a square grid from the token count.
After the last unit, `finish` is timm's `forward_cls` (class token + class-attention blocks) and `norm`: head-side,
as in timm's forward_intermediates, whose block features have no class token.
"""
import math
from typing import Sequence

import torch
from timm.models.xcit import Xcit

from ._base import Family, Unit, register_family


@register_family
class XcitFamily(Family):
    model_cls = Xcit
    layout = 'tokens'
    stem_names = ('patch_embed', 'pos_embed', 'pos_drop')
    taps = 'block'
    norm_names = ('norm',)
    intermediate_fmts = ('NCHW', 'NLC')

    def units(self, model: Xcit) -> list[Unit]:
        return [Unit(0, i, (f'blocks.{i}',), info['num_chs'], info['reduction'])
                for i, info in enumerate(model.feature_info)]

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

    def check_input(self, model: Xcit, x: torch.Tensor) -> None:
        size, img_size = tuple(x.shape[-2:]), tuple(model.patch_embed.img_size)
        if size != img_size:
            raise ValueError(f'input size {size} does not match the XCiT anchors\' fixed image size {img_size} (their '
                             f'blocks are given its patch grid); build the model with img_size={img_size[0]} or resize')

    def intermediate(self, model: Xcit, x: torch.Tensor, output_fmt: str, img_size: Sequence[int],
                     reduction: int) -> torch.Tensor:
        """Patch tokens as NLC, or reshaped to NCHW on the patch grid, as timm's Xcit gives them."""
        if output_fmt == 'NLC':
            return x
        h, w = self._grid(model, x.shape[1])
        return x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
