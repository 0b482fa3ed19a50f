"""MLP-Mixer adapter (MLP-Mixer, ResMLP, gMLP: one timm class, MlpMixer) over timm's MlpMixer: tokens (B, N, C), one
stage of equal blocks, no prefix tokens.

forward_features is `stem` (PatchEmbed) -> `blocks` -> `norm`; the head (token mean, `head`) is timm's
`forward_head`. Token-mixing MLPs are sized for the patch grid, so the anchors take their fixed image size only.
"""
import torch
from timm.models.mlp_mixer import MlpMixer

from ._base import Family, Unit, block_units, register_family


@register_family
class MlpMixerFamily(Family):
    model_cls = MlpMixer
    layout = 'tokens'
    stem_names = ('stem',)
    taps = 'block'  # timm's feature_info: every block
    norm_names = ('norm',)
    intermediate_fmts = ('NCHW', 'NLC')
    label, fixed_size_reason = 'MLP-Mixer', 'their token-mixing layers are sized for its patch grid'

    def units(self, model: MlpMixer) -> list[Unit]:
        return block_units(model)

    def stem(self, model: MlpMixer, x: torch.Tensor) -> torch.Tensor:
        return model.stem(x)

    def finish(self, model: MlpMixer, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)
