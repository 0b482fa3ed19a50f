"""Test-only timm entries `snnetfam_<family>`: one SN-Net per adapter family over real timm anchors, registered
before timm's own test module is read, so that tests/test_timm_generic.py runs timm's `test_models.py` on each
family as timm runs it on the anchors' architectures. Not `snnet_*`: those are the package's own entries."""
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
    # two families joined by reduction: EfficientNet's seven stages onto ConvNeXt's four (junctions 1/2 .. 1/32)
    'cross_efficientnet_convnext': (('efficientnet_b0', 'convnext_atto'), 'stage', (1, 2, 3)),
}
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
