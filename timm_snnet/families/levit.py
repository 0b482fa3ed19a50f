"""LeViT adapter over timm's Levit / LevitDistilled (linear mode): tokens (B, N, C), three stages of equal blocks.

A stage's `LevitDownsample` (attention subsample + MLP; identity in stage 0) runs in its block 0, as timm orders
them. Channels and reductions are timm's `feature_info` (16, 32, 64 for the default 's16' stem). LeViT has no final
norm; the head (`forward_head`: token mean, BN + linear, and `head_dist` for LevitDistilled) is timm's own.
"""
from typing import Sequence

import torch
from timm.models.levit import Levit

from ._base import Family, Unit, register_family


@register_family
class LevitFamily(Family):
    model_cls = Levit
    layout = 'tokens'
    stem_names = ('stem',)
    intermediate_fmts = ('NCHW',)  # timm's Levit gives NCHW features only

    def units(self, model: Levit) -> list[Unit]:
        if model.use_conv:
            raise ValueError('Levit anchors in conv mode (use_conv=True, the *_conv models) are not supported: build '
                             'the linear-mode model (tokens)')
        out = []
        for s, (stage, info) in enumerate(zip(model.stages, model.feature_info)):
            for b in range(len(stage.blocks)):
                modules = (f'stages.{s}.downsample',) * (b == 0) + (f'stages.{s}.blocks.{b}',)
                out.append(Unit(s, b, modules, info['num_chs'], info['reduction']))
        return out

    def stem(self, model: Levit, x: torch.Tensor) -> torch.Tensor:
        return model.stem(x).flatten(2).transpose(1, 2)

    @staticmethod
    def _grid(model: Levit) -> tuple[int, int]:
        """The token grid stage 0 is built for (its attention biases and subsampling depend on it)."""
        return tuple(model.stages[0].blocks[0].attn.resolution) if len(model.stages[0].blocks) else None

    def check_input(self, model: Levit, x: torch.Tensor) -> None:
        grid, stride = self._grid(model), getattr(model.stem, 'stride', None)
        if grid is None or stride is None:
            return
        size = tuple(x.shape[-2:])
        if tuple(-(-n // stride) for n in size) != grid or any(n % stride for n in size):
            expected = tuple(g * stride for g in grid)
            raise ValueError(f'input size {size} does not match the LeViT anchors\' fixed image size {expected} (their '
                             f'attention biases are built for it); build the model with img_size={expected[0]} or '
                             f'resize')

    def intermediate(self, model: Levit, x: torch.Tensor, output_fmt: str, img_size: Sequence[int],
                     reduction: int) -> torch.Tensor:
        """Tokens reshaped to NCHW, as timm's Levit gives its stage features."""
        h, w = (-(-n // reduction) for n in img_size)
        return x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
