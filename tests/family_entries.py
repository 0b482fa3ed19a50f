"""Test-only timm entries `snnetfam_<family>`: one SN-Net per adapter family over real timm anchors, registered
before timm's own test module is read, so that tests/test_timm_generic.py runs timm's `test_models.py` on each
family as timm runs it on the anchors' architectures. Not `snnet_*`: those are the package's own entries."""
import os
from typing import Any

from timm.models import generate_default_cfgs, register_model

from timm_snnet._models import create_from_anchors, snnet_cfg

# family -> (anchors, smallest first; rule; stages)
FAMILIES = {
    'deit_distilled': (('deit_tiny_distilled_patch16_224', 'deit_small_distilled_patch16_224'), 'window', (0,)),
    'eva': (('eva02_tiny_patch14_224', 'eva02_small_patch14_224'), 'window', (0,)),
    'regnet': (('regnetx_002', 'regnetx_004'), 'stage', (1, 2)),
    'mobilenetv3': (('mobilenetv3_small_050', 'mobilenetv3_small_100'), 'stage', (1, 4)),
    'byobnet': (('repvgg_a0', 'repvgg_a1'), 'stage', (0, 1)),
    'resnetv2': (('resnetv2_18', 'resnetv2_34'), 'stage', (1, 2)),
    'metaformer': (('poolformer_s12', 'poolformer_s24'), 'stage', (1, 2)),
    'maxxvit': (('maxvit_rmlp_nano_rw_256', 'maxvit_rmlp_pico_rw_256'), 'stage', (1, 2)),
    # the zoo's adapters whose timm tests all pass on full-size anchors in a few seconds (tests/test_families_zoo.py
    # checks them all on tiny anchors)
    'senet': (('legacy_seresnet18', 'legacy_seresnet34'), 'stage', (1, 2)),
    'edgenext': (('edgenext_xx_small', 'edgenext_x_small'), 'stage', (1, 2)),
    'fasternet': (('fasternet_t0', 'fasternet_t1'), 'stage', (1, 2)),
    'efficientvit_msra': (('efficientvit_m0', 'efficientvit_m1'), 'stage', (1, 2)),
    'cpubone': (('cpubone_b0_bfrobust', 'cpubone_b1_bfrobust'), 'stage', (2,)),
    'starnet': (('starnet_s1', 'starnet_s2'), 'stage', (1, 2)),
    'lowformer': (('lowformer_b0', 'lowformer_b1'), 'stage', (2,)),
    'ghostnet': (('ghostnet_050', 'ghostnet_100'), 'stage', (1, 2)),
    'repghostnet': (('repghostnet_050', 'repghostnet_058'), 'stage', (1, 2)),
    'tiny_vit': (('tiny_vit_5m_224', 'tiny_vit_11m_224'), 'stage', (1, 2)),
    'efficientformer_v2': (('efficientformerv2_s0', 'efficientformerv2_s1'), 'stage', (1, 2)),
    'swiftformer': (('swiftformer_xs', 'swiftformer_s'), 'stage', (1, 2)),
    'iformer': (('iformer_t', 'iformer_s'), 'stage', (1, 2)),
    # heads that pool ahead of their own layers (timm's EARLY_POOL_MODELS): timm skips its no-pooling checks for
    # these classes; the SN-Net passes them (families.EarlyPool runs the head per position)
    'efficientvit_mit': (('efficientvit_b0', 'efficientvit_b1'), 'stage', (1, 2)),
    'efficientvit_large': (('efficientvit_l1', 'efficientvit_l2'), 'stage', (1, 2)),
    'metanext': (('inception_next_atto', 'inception_next_tiny'), 'stage', (1, 2)),
    # two families joined by reduction: EfficientNet's seven stages onto ConvNeXt's four (junctions 1/2 .. 1/32)
    'cross_efficientnet_convnext': (('efficientnet_b0', 'convnext_atto'), 'stage', (1, 2, 3)),
}
# 19-80 s each on 2 cores (full-size anchors; up to 36 blocks at 224 in the prune test), over the suite's budget:
# `SNNET_TIMM_TESTS_ALL=1 pytest tests/test_timm_generic.py` adds them (all pass)
HEAVY = {
    'davit': (('davit_tiny', 'davit_small'), 'stage', (1, 2)),
    'tresnet': (('tresnet_m', 'tresnet_l'), 'stage', (1, 2)),
    'vit_relpos': (('vit_relpos_small_patch16_224', 'vit_relpos_medium_patch16_224'), 'window', (0,)),
    'cait': (('cait_xxs24_224', 'cait_xxs36_224'), 'window', (0,)),
    'qwen3_vit': (('qwen3_vit_88m', 'qwen3_vit_306m'), 'window', (0,)),
}
if os.environ.get('SNNET_TIMM_TESTS_ALL') == '1':
    FAMILIES.update(HEAVY)
NAMES = tuple(f'snnetfam_{f}' for f in FAMILIES)
default_cfgs = generate_default_cfgs({f'snnetfam_{f}': snnet_cfg(a) for f, (a, _, _) in FAMILIES.items()})


def _register(family: str) -> None:
    anchors, rule, stages = FAMILIES[family]
    name = f'snnetfam_{family}'
    join = 'reduction' if family.startswith('cross_') else 'stage'

    def entry(pretrained: bool = False, **kwargs: Any):
        return create_from_anchors(name, pretrained, dict(anchors=anchors, rule=rule, stages=stages, join=join),
                                   kwargs)

    entry.__name__ = entry.__qualname__ = name
    register_model(entry)


for _family in FAMILIES:
    _register(_family)
