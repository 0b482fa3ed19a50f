"""The authors' published SN-Nets as data: where each file lives, its layout (the converter), their per-config
results, and the pretrained tag whose weights it holds. Loading them is `timm_snnet._sources`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from huggingface_hub import hf_hub_url

HF_HUB_ORG = 'timm-snnet'  # the one Hugging Face organisation that holds every SN-Net repo
DEFAULT_RELEASE_URL = 'https://github.com/ziplab/SN-Net/releases/download'
RELEASE_URL_ENV = 'TIMM_SNNET_RELEASE_URL'  # a mirror with the same relative paths (v1.0/snnet_deit.pth, ...)
REFERENCE_DIR = Path(__file__).resolve().parent / 'reference'  # the authors' published per-config results
RESULTS = 'ziplab/SN-Net v1 published results (ImageNet-1k val)'
RESULTS_V2 = 'ziplab/SN-Netv2 published results (ImageNet-1k val)'
DEFAULT_HUB_URL = 'https://huggingface.co'  # the authors' v2 repos, in the official tags' cfg
OFFICIAL_TAG = 'official_'  # prefix of the tags that load the authors' release only


@dataclass(frozen=True)
class Release:
    """One of the authors' published files: where to download it, its layout (the converter), their results, and
    the pretrained tag whose weights it holds."""
    file: str  # path under the release base URL (v1), or the file in `repo_id` (v2)
    reference: Optional[str]  # their per-config results, in REFERENCE_DIR
    tag: str  # our default pretrained tag for the same weights
    repo_id: Optional[str] = None  # the authors' Hub repo; None: a GitHub release file
    format: str = 'official-v1'  # `timm-snnet convert --from` layout, i.e. the converter
    results: str = RESULTS  # label of `reference` in the stitch table rows

    @property
    def where(self) -> str:
        return f"Hub repo '{self.repo_id}' ({self.file})" if self.repo_id else f'release {self.file}'

    @property
    def filename(self) -> str:
        return self.file.rsplit('/', 1)[-1]

    @property
    def stem(self) -> str:
        return self.filename.removesuffix('.pth')


RELEASES: dict[str, Release] = {
    'snnet_deit_tsb': Release('v1.0/snnet_deit.pth', 'snnet_deit_tsb.official.jsonl', 'in1k'),
    'snnet_swin_tsb': Release('v1.0/snnet_swin.pth', 'snnet_swin_tsb.official.jsonl', 'in22k_ft_in1k'),
    'snnet_resnet': Release('v1.1/resnet_18_50.pth', 'snnet_resnet_18_50.official.jsonl', 'in1k'),
    'snnet_resnet18_swin_ti': Release('v1.1/resnet18_swin_ti.pth', 'snnet_resnet18_swin_ti.official.jsonl', 'in1k'),
    'snnet_levit_192_256': Release('v1.2/levit_192_256_release.pth', 'snnet_levit_192_256.official.jsonl', 'in1k'),
}


# SN-Netv2 on the Hub (arXiv 2307.00154): results published for S -> L only
HUB_RELEASES: dict[str, Release] = {
    f'snnetv2_deit3_{pair}': Release(
        f'snnetv2_deit3_{pair}.pth', 'snnetv2_deit3_s_l.official.jsonl' if pair == 's_l' else None, 'in22k_ft_in1k',
        repo_id=f'ziplab/snnetv2_deit3_{pair}_imagenet_1k', format='official-v2', results=RESULTS_V2)
    for pair in ('s_b', 's_l', 'b_l')}
OFFICIAL: dict[str, Release] = {**RELEASES, **HUB_RELEASES}  # every model with a fallback on the authors' weights


def release_url(model: str, base: Optional[str] = None) -> str:
    """URL of `model`'s release file under `base` (default: $TIMM_SNNET_RELEASE_URL, else the authors' releases; for
    a Hub release, the Hub endpoint: $HF_ENDPOINT, else huggingface.co)."""
    release = OFFICIAL[model]
    if release.repo_id:
        return hf_hub_url(release.repo_id, release.file, endpoint=base)
    base = base or os.environ.get(RELEASE_URL_ENV) or DEFAULT_RELEASE_URL
    return f'{base.rstrip("/")}/{release.file}'
