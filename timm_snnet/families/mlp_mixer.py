"""MLP-Mixer adapter (MLP-Mixer, ResMLP, gMLP: one timm class, MlpMixer) over timm's MlpMixer: tokens (B, N, C), one
stage of equal blocks, no prefix tokens.

forward_features is `stem` (PatchEmbed) -> `blocks` -> `norm`; the head (token mean, `head`) is timm's
`forward_head`. Token-mixing MLPs are sized for the patch grid, so the anchors take their fixed image size only.
"""
from typing import Sequence

import torch
from timm.models.mlp_mixer import MlpMixer

from ._base import Family, Unit, register_family


@register_family
class MlpMixerFamily(Family):
    model_cls = MlpMixer
    layout = 'tokens'
    stem_names = ('stem',)
    taps = 'block'  # timm's feature_info: every block
    norm_names = ('norm',)
    intermediate_fmts = ('NCHW', 'NLC')

    def units(self, model: MlpMixer) -> list[Unit]:
        return [Unit(0, i, (f'blocks.{i}',), info['num_chs'], info['reduction'])
                for i, info in enumerate(model.feature_info)]

    def stem(self, model: MlpMixer, x: torch.Tensor) -> torch.Tensor:
        return model.stem(x)

    def finish(self, model: MlpMixer, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)

    def check_input(self, model: MlpMixer, x: torch.Tensor) -> None:
        size, pe = tuple(x.shape[-2:]), model.stem
        if size != tuple(pe.img_size):
            raise ValueError(f'input size {size} does not match the MLP-Mixer anchors\' fixed image size '
                             f'{tuple(pe.img_size)} (their token-mixing layers are sized for its patch grid); '
                             f'build the model with img_size={pe.img_size[0]} or resize')

    def intermediate(self, model: MlpMixer, x: torch.Tensor, output_fmt: str, img_size: Sequence[int],
                     reduction: int) -> torch.Tensor:
        """NLC tokens, or reshaped to NCHW on the patch grid, as timm's MlpMixer gives them."""
        if output_fmt == 'NLC':
            return x
        h, w = model.stem.dynamic_feat_size(tuple(img_size))
        return x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
