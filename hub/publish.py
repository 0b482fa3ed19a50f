"""Publish the authors' SN-Net v1 weights on the Hugging Face Hub, one command per model (needs internet and a token
with write access to the `timm_snnet._models.HF_HUB_ORG` organisation):

    python hub/publish.py snnet_deit_tsb             # -> timm-snnet/snnet_deit_tsb.in1k
    python hub/publish.py snnet_swin_tsb             # -> timm-snnet/snnet_swin_tsb.in22k_ft_in1k
    python hub/publish.py snnet_resnet               # -> timm-snnet/snnet_resnet.in1k
    python hub/publish.py snnet_resnet18_swin_ti     # -> timm-snnet/snnet_resnet18_swin_ti.in1k
    python hub/publish.py snnet_deit_tsb --dry-run   # everything but the upload: hub/build/snnet_deit_tsb/repo

For MODEL, in WORKDIR/MODEL (default hub/build/MODEL):
1. download the authors' release (RELEASES) as the official .pth, unless --checkpoint names a local copy;
2. convert it (`timm_snnet._convert`, weights_only=True) into converted/ with the compatibility settings;
3. write sweep.json: every config's path, GFLOPs and params (this package's counts) with the authors' published
   top-1 / top-5 from REFERENCE_DIR (default timm_snnet/reference, shipped in the wheel);
4. push converted/ to the repo of the model's default pretrained tag (its hf_hub_id in default_cfgs), with the
   model card inputs hub/cards/MODEL.md, the per-stitch table and the Pareto plot.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import timm
import torch
from timm.utils import ParseKwargs

from timm_snnet import convert, push_snnet, save_snnet
from timm_snnet._convert import official_rows as published_rows
from timm_snnet._releases import DEFAULT_RELEASE_URL, REFERENCE_DIR, release_url
from timm_snnet._releases import RELEASES as AUTHORS_RELEASES
from timm_snnet._utils import file_sha256

HUB_DIR = Path(__file__).resolve().parent
# model -> (the authors' release, their published per-config results in the reference folder)
RELEASES = {name: (release_url(name, DEFAULT_RELEASE_URL), r.reference) for name, r in AUTHORS_RELEASES.items()}
RESULTS = 'ImageNet-1k val, top-1/top-5 as published by the authors (SN-Net v1, Pan, Cai and Zhuang, CVPR 2023)'


def download(model: str, workdir: Path) -> Path:
    """The authors' release file in `workdir` (downloaded once; torch.hub writes it atomically)."""
    url = RELEASES[model][0]
    path = workdir / url.rsplit('/', 1)[1]
    if not path.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        print(f'downloading {url}')
        torch.hub.download_url_to_file(url, str(path), progress=True)
    return path


def official_rows(model: Any, name: str, reference_dir: Path) -> list[dict[str, Any]]:
    """Every config (path, GFLOPs, params as counted here) with the authors' accuracy and counts, by id."""
    reference = reference_dir / RELEASES[name][1]
    if not reference.is_file():
        raise SystemExit(f'no reference results at {reference}: pass --reference-dir')
    rows = published_rows(model, name, reference_dir)
    if rows is None:
        raise SystemExit(f'{reference} lists other configs than the {model.num_configs} of the model: it is not '
                         f'this model')
    return rows


def publish(
        model_name: str,
        workdir: Path,
        checkpoint: Optional[Path] = None,
        reference_dir: Path = REFERENCE_DIR,
        repo_id: Optional[str] = None,
        private: bool = False,
        dry_run: bool = False,
        model_kwargs: Optional[dict] = None,
) -> Path:
    """Download, convert, attach the official accuracy and push one model; returns the repo folder it pushed."""
    workdir = workdir / model_name
    checkpoint = checkpoint or download(model_name, workdir)
    converted, folder = workdir / 'converted', workdir / 'repo'
    for old in (converted, folder):  # outputs of an earlier run
        shutil.rmtree(old, ignore_errors=True)
    _, report = convert(checkpoint, model_name, converted, **(model_kwargs or {}))
    print(f'converted {checkpoint.name}: {report["tensors"]} tensors, compatibility {report["compat"] or "none"}')
    model = timm.create_model(f'local-dir:{converted}', pretrained=True)
    sweep = dict(model=model_name, model_kwargs=model_kwargs or {},
                 checkpoint=dict(path=checkpoint.name, sha256=file_sha256(checkpoint), url=RELEASES[model_name][0]),
                 data=dict(results=RESULTS, reference=RELEASES[model_name][1]), transforms=None, device=None,
                 batch_size=None, anchors=[c.id for c in model.stitch_configs() if c.is_anchor],
                 rows=official_rows(model, model_name, reference_dir))
    (workdir / 'sweep.json').write_text(json.dumps(sweep, indent=1))
    repo_id = repo_id or timm.models.get_pretrained_cfg(model_name).hf_hub_id
    card = HUB_DIR / 'cards' / f'{model_name}.md'
    if dry_run:
        save_snnet(model, folder, sweep=workdir / 'sweep.json', card=card, repo_id=repo_id)
        print(f'dry run: wrote {folder} for {repo_id}; nothing uploaded')
    else:
        info = push_snnet(model, repo_id, sweep=workdir / 'sweep.json', card=card, private=private, save_dir=folder,
                          commit_message=f'{model_name}: official SN-Net v1 weights, converted to safetensors')
        print(f'pushed {repo_id} ({info.oid[:12]}): timm.create_model({model_name!r}, pretrained=True)')
    return folder


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', metavar='MODEL', help=f'one or more of {", ".join(RELEASES)}')
    parser.add_argument('--all', action='store_true', help='every model')
    parser.add_argument('--workdir', type=Path, default=HUB_DIR / 'build', help='downloads and outputs (hub/build)')
    parser.add_argument('--checkpoint', type=Path, help="a local copy of the authors' file (one model only)")
    parser.add_argument('--reference-dir', type=Path, default=REFERENCE_DIR, help='*.official.jsonl results')
    parser.add_argument('--repo-id', help="default: the model's default tag repo (one model only)")
    parser.add_argument('--private', action='store_true')
    parser.add_argument('--dry-run', action='store_true', help='write WORKDIR/MODEL/repo, upload nothing')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                        help='create_model kwargs (tests use small anchors)')
    args = parser.parse_args(argv)
    models = list(RELEASES) if args.all else args.models
    unknown = [m for m in models if m not in RELEASES]
    if not models or unknown:
        parser.error(f'name one or more of {", ".join(RELEASES)} (got {unknown or "none"}), or pass --all')
    if len(models) > 1 and (args.checkpoint or args.repo_id):
        parser.error('--checkpoint and --repo-id need a single MODEL')
    for name in models:
        publish(name, args.workdir, args.checkpoint, args.reference_dir, args.repo_id, args.private, args.dry_run,
                args.model_kwargs)
    return 0


if __name__ == '__main__':
    sys.exit(main())
