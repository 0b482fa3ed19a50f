"""`timm-snnet convert --from official-v1|official-v2`: the authors' released SN-Net checkpoints, our layout.

The official files (snnet_deit.pth, snnet_swin.pth, resnet_18_50.pth, resnet18_swin_ti.pth) are pickled training
checkpoints. They are read with `_pickle.read_pickle` (`torch.load(weights_only=True)`, the allowlist shared with
`anchor_checkpoints`): tensors and plain containers, plus two allowances for the pickled run configuration,
`argparse.Namespace` (DeiT and ResNet `args`) and yacs `CfgNode` (Swin `config`), which is rebuilt as a plain
OrderedDict: its class is never imported or run. Anything else fails, naming the globals.

The mapping (from the authors' code):
- anchors: `anchors.{i}.<key>` are timm keys for DeiT and ResNet (split-BN `.aux_bn.` copies are dropped); the
  authors' Swin is Microsoft's, renamed by timm's own `swin_transformer.checkpoint_filter_fn` (patch merging moves to
  the next stage's start, `head` becomes `head.fc`, non-persistent index / mask buffers are dropped);
- stitching layers: `stitch_layers.{pair}.{l}.transform` (DeiT) or `stitch_layers.{stage}.{pair}.{l}.transform`
  (Swin, ResNet; stage counted among the stitched stages), pair = front anchor, `l` = the authors' layer.

SN-Netv2 (`official-v2`, `snnetv2_deit3_{s_b,s_l,b_l}.pth` on the Hub): `{'model': state_dict}` saved in train mode.
DeiT-III LayerScale `blocks.i.gamma_{1,2}` become timm's `blocks.i.ls{1,2}.gamma`; `stitch_layers.0.{f}.transform`
(small -> large) become our layers f and `stitch_layers.1.{m}.transform` (large -> small) our layers ds + m. The
saved `weight` is the unmerged least-squares weight; `lora_A` / `lora_B` are kept as factors (the rank is read from
them), so the network is `weight + lora_B @ lora_A / r` as the authors trained it.

Two differences are kept as compatibility settings in the converted model's model_args (new models never use them):
v1 DeiT skipped the back anchor's final norm on stitched paths (`stitched_final_norm=False`), and for Swin and ResNet
the authors gave a stitch the layer at its position in the stage's list (`layer_assignment=[...]`).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
from safetensors.torch import load_file
from timm.models.levit import Levit
from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer import checkpoint_filter_fn as swin_filter_fn

from ._errors import ConversionError, UnsafeCheckpointError
from ._load import write_snnet
from ._pickle import read_pickle
from ._releases import HUB_RELEASES, OFFICIAL, REFERENCE_DIR
from ._snnet import SNNet
from ._utils import atomic_folder, check_new_folder, file_sha256
from .families import family_for

__all__ = ['OFFICIAL_V1', 'CONVERTERS', 'ConversionError', 'official_rows', 'load_official', 'official_layers',
           'convert_official_v1', 'convert_official_v2', 'levit_official_to_timm', 'official_stitch_table', 'convert']

PathLike = Union[str, Path]

# compatibility settings of the authors' trained networks, by model (layer_assignment is derived per model)
OFFICIAL_V1: dict[str, dict[str, Any]] = {
    'snnet_deit_tsb': dict(stitched_final_norm=False),  # snnet_deit.pth: v1 DeiT skipped the final norm on stitches
    'snnet_swin_tsb': {},  # snnet_swin.pth
    'snnet_resnet': {},  # resnet_18_50.pth
    'snnet_resnet18_swin_ti': {},  # resnet18_swin_ti.pth
    'snnet_levit_192_256': {},  # levit_192_256_release.pth
}
_OURS_ONLY = ('sample_step', 'stitch_table_json')  # buffers of this package, absent from official files


def load_official(path: PathLike) -> dict[str, torch.Tensor]:
    """The model state dict (`model` or `state_dict` entry, `module.` stripped) of an official checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f'{path}: no such file')
    if path.suffix == '.safetensors':
        return load_file(str(path))
    try:
        ckpt = read_pickle(path)
    except UnsafeCheckpointError as e:
        raise ConversionError(str(e)) from e
    state = ckpt
    for key in ('model', 'state_dict'):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            state = ckpt[key]
            break
    tensors = {k.removeprefix('module.'): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConversionError(f'{path} holds no tensors under "model" or "state_dict"')
    return tensors


def _stage_depths(anchor: torch.nn.Module) -> list[int]:
    counts = Counter(u.stage for u in family_for(anchor).units(anchor))
    return [counts[s] for s in range(max(counts) + 1)]


def official_layers(model: SNNet) -> list[str]:
    """The authors' key prefix of each stitch's layer, in config order (`model` built without layer_assignment).

    Isotropic models (one stage, DeiT): `stitch_layers.{pair}.{window}`. Hierarchical models (Swin, ResNet):
    `stitch_layers.{stage}.{pair}.{n * Lf // Lb}`, where n is the stitch's position in its (stage, pair) list and
    Lf, Lb the stage depths of the front and back anchors: the authors' layer by list position.
    """
    depths = [_stage_depths(a) for a in model.anchors]
    stitches = [c for c in model.configs if not c.is_anchor]
    stages = sorted({c.stage for c in stitches})
    position: Counter = Counter()
    first: dict[int, int] = {}
    out = []
    for c in stitches:
        if len(depths[c.front]) == 1:
            first.setdefault(c.front, c.layer)
            out.append(f'stitch_layers.{c.front}.{c.layer - first[c.front]}')
        else:
            n = position[(c.stage, c.front)]
            position[(c.stage, c.front)] += 1
            lf, lb = depths[c.front][c.stage], depths[c.back][c.stage]
            out.append(f'stitch_layers.{stages.index(c.stage)}.{c.front}.{n * lf // lb}')
    return out


def _listing(title: str, keys: list[str]) -> str:
    return f'{len(keys)} {title} ({", ".join(keys[:8])}{", ..." if len(keys) > 8 else ""})'


def _check_keys(mapped: dict[str, torch.Tensor], own: dict[str, torch.Tensor], unmapped: list[str]) -> None:
    """Raise ConversionError listing unmapped keys, keys of the model the file lacks, and shape mismatches."""
    missing = sorted(k for k in own if k not in mapped and k not in _OURS_ONLY)
    shapes = [f'{k} {tuple(v.shape)} vs {tuple(own[k].shape)}' for k, v in mapped.items()
              if k in own and v.shape != own[k].shape]
    if unmapped or missing or shapes:
        problems = [_listing(t, ks) for t, ks in (('unmapped', unmapped), ('missing', missing),
                                                   ('with other shapes (file vs model)', shapes)) if ks]
        raise ConversionError('; '.join(problems))


def _refuse_fixed(kwargs: dict[str, Any], fixed: set[str]) -> None:
    given = sorted(fixed & set(kwargs))
    if given:
        raise ConversionError(f'{", ".join(given)} are set by the converter, do not pass them')


def _map(official: dict[str, torch.Tensor], model: SNNet, layers: dict[int, str]) -> tuple[dict, dict]:
    """Official tensors under this model's keys, and a report; raises ConversionError unless every key maps."""
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    dropped: Counter = Counter()
    for i, anchor in enumerate(model.anchors):
        prefix = f'anchors.{i}.'
        sub = {k[len(prefix):]: v for k, v in official.items() if k.startswith(prefix)}
        used.update(prefix + k for k in sub)
        dropped['split-BN .aux_bn. copies'] += sum('.aux_bn.' in k for k in sub)
        sub = {k: v for k, v in sub.items() if '.aux_bn.' not in k}
        if isinstance(anchor, SwinTransformer):  # Microsoft Swin keys -> timm
            dropped['Swin index / mask buffers'] += sum('relative_position_index' in k or 'attn_mask' in k for k in sub)
            sub = swin_filter_fn(sub, anchor)
        elif isinstance(anchor, Levit):  # facebookresearch/LeViT keys -> timm
            sub, unmapped, n = levit_anchor_to_timm(sub)
            dropped['LeViT attention_bias_idxs (timm recomputes them)'] += n
            used.difference_update(prefix + k for k in unmapped)
        mapped.update({prefix + k: v for k, v in sub.items()})
    for layer, src in layers.items():
        for param in ('weight', 'bias'):
            key, target = f'{src}.transform.{param}', f'stitch_layers.{layer}.{param}'
            if key in official:
                used.add(key)
                # 1x1 conv (out, in, 1, 1) <-> linear (out, in)
                mapped[target] = official[key].reshape(own[target].shape) \
                    if official[key].numel() == own[target].numel() else official[key]
    _check_keys(mapped, own, sorted(set(official) - used) + sorted(k for k in mapped if k not in own))
    report = dict(tensors=len(mapped), stitching_layers=len(layers), dropped={k: v for k, v in dropped.items() if v})
    return mapped, report


# --- LeViT: the authors wrap facebookresearch/LeViT's original model, whose keys differ from timm's Levit ---------
# original LeViT module names -> timm's, inside one block (`c` is the Linear/Conv of a *_BN, `bn` its BatchNorm)
_ATTN = {'qkv': 'qkv', 'proj.1': 'proj.ln'}  # Residual(Attention): blocks.N.m.<name>
_MLP = {'0': 'ln1', '2': 'ln2'}  # Residual(Sequential(Linear_BN, act, Linear_BN)): blocks.N.m.<name>
_SUBSAMPLE = {'kv': 'kv', 'q.1': 'q.ln', 'proj.1': 'proj.ln'}  # AttentionSubsample: blocks.N.<name>
_NORM = {'c': 'linear', 'bn': 'bn'}
_HEAD = {'bn': 'bn', 'l': 'linear'}  # BN_Linear
_DROPPED = ('attention_bias_idxs',)  # persistent in LeViT, recomputed (non-persistent) in timm: same indices


def _block_kinds(keys: list[str]) -> dict[int, str]:
    """Kind of each flat block of one anchor: 'attn', 'mlp' or 'subsample' (from the names under it)."""
    kinds: dict[int, str] = {}
    for key in keys:
        m = re.match(r'blocks\.(\d+)\.(m\.)?([a-z_]+|\d+)', key)
        if not m:
            continue
        n, residual, name = int(m.group(1)), m.group(2), m.group(3)
        kind = ('mlp' if name.isdigit() else 'attn') if residual else 'subsample'
        if kinds.setdefault(n, kind) != kind:
            raise ValueError(f'blocks.{n} mixes {kinds[n]} and {kind} keys')
    return kinds


def _block_targets(kinds: dict[int, str]) -> dict[int, str]:
    """timm module of each flat block: a stage's attention/MLP pairs are `stages.s.blocks.b.{attn,mlp}`; a subsample
    and the MLP after it are `stages.{s+1}.downsample.{attn_downsample,mlp}`."""
    out, stage, block, prev = {}, 0, -1, None
    for n in sorted(kinds):
        kind = kinds[n]
        if kind == 'attn':
            block += 1
            out[n] = f'stages.{stage}.blocks.{block}.attn'
        elif kind == 'subsample':
            stage, block = stage + 1, -1
            out[n] = f'stages.{stage}.downsample.attn_downsample'
        elif prev == 'attn':
            out[n] = f'stages.{stage}.blocks.{block}.mlp'
        elif prev == 'subsample':
            out[n] = f'stages.{stage}.downsample.mlp'
        else:
            raise ValueError(f'blocks.{n}: an MLP block must follow an attention or subsample block')
        prev = kind
    return out


def _rename(key: str, kinds: dict[int, str], targets: dict[int, str]) -> str | None:
    """timm key of one anchor's original LeViT key; None for a dropped buffer. KeyError when it does not map."""
    m = re.fullmatch(r'patch_embed\.(\d+)\.(c|bn)\.(.+)', key)
    if m and int(m.group(1)) % 2 == 0:
        return f'stem.conv{int(m.group(1)) // 2 + 1}.{_NORM[m.group(2)]}.{m.group(3)}'
    m = re.fullmatch(r'(head|head_dist)\.(bn|l)\.(.+)', key)
    if m:
        return f'{m.group(1)}.{_HEAD[m.group(2)]}.{m.group(3)}'
    m = re.fullmatch(r'blocks\.(\d+)\.(?:m\.)?(.+)', key)
    if m and int(m.group(1)) in targets:
        n, rest = int(m.group(1)), m.group(2)
        if rest in _DROPPED:
            return None
        if rest == 'attention_biases' and kinds[n] in ('attn', 'subsample'):
            return f'{targets[n]}.attention_biases'
        table = {'attn': _ATTN, 'mlp': _MLP, 'subsample': _SUBSAMPLE}[kinds[n]]
        for src, dst in table.items():
            sub = re.fullmatch(re.escape(src) + r'\.(c|bn)\.(.+)', rest)
            if sub:
                return f'{targets[n]}.{dst}.{_NORM[sub.group(1)]}.{sub.group(2)}'
    raise KeyError(key)


def levit_anchor_to_timm(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """One anchor's original LeViT tensors under timm's `Levit` keys: (mapped, unmapped keys, dropped buffers)."""
    kinds = _block_kinds(list(state))
    targets = _block_targets(kinds)
    out, unmapped, dropped = {}, [], 0
    for key, value in state.items():
        try:
            new = _rename(key, kinds, targets)
        except KeyError:
            unmapped.append(key)
            continue
        if new is None:
            dropped += 1
        else:
            out[new] = value
    return out, unmapped, dropped


def levit_official_to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' LeViT SN-Net state dict -> ours (`anchors.{i}.<timm Levit key>`, `stitch_layers.{l}.*`).

    Their keys: `anchors.{i}.<facebookresearch/LeViT key>` (stem `patch_embed.{0,2,4,6}`, one flat `blocks` list of
    attention / MLP residuals and attention subsamples, `head` / `head_dist` BN + linear) and
    `stitch_layers.{stage}.{pair}.{l}.transform.{weight,bias}`. Stitching layers are numbered as our 'stage' rule
    does (stage, then anchor pair, then layer). `attention_bias_idxs` buffers are dropped (timm recomputes the same
    indices). A `{'model': ...}` training checkpoint and a DDP `module.` prefix are accepted. Raises KeyError naming
    every key that does not map. Tensors are passed through unchanged (no copies).
    """
    if 'model' in state_dict and isinstance(state_dict['model'], dict):
        state_dict = state_dict['model']
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []

    per_anchor: dict[int, list[str]] = {}
    stitch: dict[tuple[int, int, int], dict[str, str]] = {}
    for key in state_dict:
        m = re.fullmatch(r'anchors\.(\d+)\.(.+)', key)
        if m:
            per_anchor.setdefault(int(m.group(1)), []).append(m.group(2))
            continue
        m = re.fullmatch(r'stitch_layers\.(\d+)\.(\d+)\.(\d+)\.transform\.(weight|bias)', key)
        if m:
            stitch.setdefault(tuple(int(g) for g in m.groups()[:3]), {})[m.group(4)] = key
            continue
        unmapped.append(key)

    for i, keys in sorted(per_anchor.items()):
        mapped, bad, _ = levit_anchor_to_timm({k: state_dict[f'anchors.{i}.{k}'] for k in keys})
        out.update({f'anchors.{i}.{k}': v for k, v in mapped.items()})
        unmapped += [f'anchors.{i}.{k}' for k in bad]
    for layer, (_, params) in enumerate(sorted(stitch.items())):
        for param, key in params.items():
            out[f'stitch_layers.{layer}.{param}'] = state_dict[key]
    if unmapped:
        raise KeyError(f'{len(unmapped)} keys of the LeViT SN-Net checkpoint do not map to timm: '
                       f'{sorted(unmapped)[:20]}')
    return out


def convert_official_v1(checkpoint: PathLike, model_name: str, **kwargs: Any) -> tuple[SNNet, dict[str, Any]]:
    """Build `model_name` with the authors' compatibility settings and load an official v1 checkpoint into it."""
    if model_name not in OFFICIAL_V1:
        raise ConversionError(f'no official v1 layout for {model_name!r}; known: {", ".join(OFFICIAL_V1)}')
    _refuse_fixed(kwargs, {'layer_assignment', 'stitched_final_norm', 'pretrained', 'pretrained_anchors'})
    official = load_official(checkpoint)
    base = timm.create_model(model_name, device='meta', **kwargs)  # default assignment: structure only
    prefixes = official_layers(base)
    ids = {p: i for i, p in enumerate(dict.fromkeys(prefixes))}
    assignment = [ids[p] for p in prefixes]
    compat = dict(OFFICIAL_V1[model_name])
    if assignment != [c.layer for c in base._configs if not c.is_anchor]:
        compat['layer_assignment'] = assignment
    model = timm.create_model(model_name, **kwargs, **compat)
    try:
        mapped, report = _map(official, model, {i: p for p, i in ids.items()})
    except ConversionError as e:
        raise ConversionError(f'{checkpoint} does not convert exactly to {model_name}: {e}. Check --model (the '
                              f'official file for it) and --model-kwargs') from e
    model.load_state_dict({**model.state_dict(), **mapped}, strict=True)
    report.update(compat=compat)
    return model.eval(), report


# --- SN-Netv2 --------------------------------------------------------------------------------------------------------
def _v2_rename(key: str, ds: int) -> Optional[str]:
    """The authors' v2 key under this package's names, or None when it maps to nothing."""
    if key.startswith('anchors.'):
        return key.replace('.gamma_1', '.ls1.gamma').replace('.gamma_2', '.ls2.gamma')
    parts = key.split('.')  # stitch_layers.{direction}.{i}.transform.{param}
    if len(parts) == 5 and parts[0] == 'stitch_layers' and parts[3] == 'transform' and parts[1] in ('0', '1') \
            and parts[2].isdigit() and int(parts[2]) < ds - int(parts[1]):  # ds small -> large, ds - 1 back
        return f'stitch_layers.{int(parts[2]) + ds * int(parts[1])}.{parts[4]}'
    return None


def convert_official_v2(checkpoint: PathLike, model_name: str, **kwargs: Any) -> tuple[SNNet, dict[str, Any]]:
    """Build `model_name` (an SN-Netv2) at the checkpoint's LoRA rank and load the authors' v2 checkpoint into it.

    LoRA factors stay unmerged; any unmapped, missing or mis-shaped key fails. For S -> L the authors' per-config
    ImageNet results become the stitch table."""
    if model_name not in HUB_RELEASES:
        raise ConversionError(f'no official v2 layout for {model_name!r}; known: {", ".join(HUB_RELEASES)}')
    _refuse_fixed(kwargs, {'stitch_rank', 'rule', 'pretrained', 'pretrained_anchors'})
    official = load_official(checkpoint)
    ranks = {v.shape[0] for k, v in official.items() if k.endswith('.transform.lora_A')}
    if len(ranks) > 1:
        raise ConversionError(f'{checkpoint}: stitching layers of different LoRA ranks {sorted(ranks)}')
    compat = dict(stitch_rank=ranks.pop() if ranks else 0)
    model = timm.create_model(model_name, **kwargs, **compat)
    ds = len(model.units[0])
    own = model.state_dict()
    mapped = {_v2_rename(k, ds): v for k, v in official.items()}
    try:
        _check_keys(mapped, own, sorted(k for k in official if _v2_rename(k, ds) not in own))
    except ConversionError as e:
        raise ConversionError(f'{checkpoint} does not convert exactly to {model_name}: {e}. Check --model (the '
                              f'official file for it) and --model-kwargs') from e
    model.load_state_dict({**own, **{k: v for k, v in mapped.items() if k in own}}, strict=True)
    table = official_stitch_table(model_name, model)
    if table is not None:
        model.set_stitch_table(table)
    report = dict(tensors=len(mapped), stitching_layers=len(model.stitch_layers), dropped={}, compat=compat)
    return model.eval(), report


def official_stitch_table(model_name: str, model: SNNet) -> Optional[list[dict[str, Any]]]:
    """The authors' per-config results shipped with this package as `model`'s stitch table (`sources.official_rows`:
    id, path, our and their GFLOPs, top1, top5); None without published results or for other configs."""
    return official_rows(model, model_name) if model_name in HUB_RELEASES else None


CONVERTERS = {'official-v1': convert_official_v1, 'official-v2': convert_official_v2}


def convert(checkpoint: PathLike, model_name: str, output: PathLike, source_format: str = 'official-v1',
            **kwargs: Any) -> tuple[Path, dict[str, Any]]:
    """Convert and write `output` (config.json + model.safetensors), all or nothing: for `push` and `local-dir:`."""
    if source_format not in CONVERTERS:
        raise ConversionError(f'unknown checkpoint layout {source_format!r}; known: {", ".join(CONVERTERS)}')
    output = check_new_folder(output)
    model, report = CONVERTERS[source_format](checkpoint, model_name, **kwargs)
    source = dict(format=source_format, file=Path(checkpoint).name, sha256=file_sha256(Path(checkpoint)))
    with atomic_folder(output) as tmp:
        write_snnet(model, tmp, source=source)
    return output, report


def official_rows(model: Any, name: str, reference_dir: Path = REFERENCE_DIR) -> Optional[list[dict[str, Any]]]:
    """Every config (id, path, GFLOPs and params as counted here) with the authors' published top-1 / top-5 and their
    own counts (`official_gflops`, `official_params`); None when the authors published no results for `name` or the
    model's configs are not the published ones (v2 S -> L leaves out id 13, which it never evaluated)."""
    release = OFFICIAL[name]
    if release.reference is None:
        return None
    path = Path(reference_dir) / release.reference
    published = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ids = [r['cfg_id'] for r in published]
    if len(model.configs) != ids[-1] + 1 or ids != sorted(set(ids)) or ids[0] < 0:
        return None
    configs = model.stitch_configs()
    rows = []
    for r in published:
        c = configs[r['cfg_id']]
        row = dict(id=c.id, path=model.describe(c), gflops=c.gflops, params=c.params, top1=r['acc1'],
                   source=release.results)
        row.update({k: v for k, v in (('top5', r.get('acc5')), ('official_gflops', r['flops'] / 1e9),
                                      ('official_params', r.get('params'))) if v is not None})
        rows.append(row)
    return rows
