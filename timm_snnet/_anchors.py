"""Anchors from the user's own checkpoints: `anchor_checkpoints=[...]`, one entry per anchor, smallest first.

An entry is None (the anchor stays as built: random, or timm's pretrained weights with `pretrained_anchors=True`) or:
- a train.py checkpoint (`.pth.tar`, `.pth`, ...): its `state_dict` (or `model`); prefix the path with `ema:` for
  its `state_dict_ema` (or `model_ema`). Read with `_pickle.read_pickle`: `weights_only=True`, the converter's
  allowlist (train.py's pickled `args` Namespace is allowed, nothing else is built or run);
- a `.safetensors` state dict;
- `hf-hub:ORG/NAME[@revision]` or `local-dir:DIR`: a timm model saved with `save_for_hf` / `push_to_hf_hub`, read
  with timm's own loaders; its config.json must name the anchor's architecture.

Loading is strict and all or nothing: every file is read and checked against its anchor (architecture, classifier
class count, missing / unexpected keys, shapes) before any anchor is changed, and the first problem raises
`AnchorCheckpointError` naming the file, the key and what to pass. DDP `module.` prefixes are stripped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import timm
import torch
from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import (
    clean_state_dict,
    get_pretrained_cfg,
    parse_model_name,
    resolve_pretrained_cfg,
    split_model_name_tag,
)
from timm.models._builder import _resolve_pretrained_source
from timm.models._hub import (
    download_cached_file,
    hf_split,
    load_model_config_from_hf,
    load_model_config_from_path,
    load_state_dict_from_hf,
    load_state_dict_from_path,
)
from torch import nn
from tqdm.auto import tqdm

from ._errors import AnchorCheckpointError, SNNetLoadError, UnsafeCheckpointError
from ._pickle import read_pickle
from ._utils import file_sha256
from .families import family_for, pools_first

__all__ = ['EMA_PREFIX', 'AnchorCheckpointError', 'AnchorSource', 'parse_anchor_checkpoints',
           'read_anchor_state', 'check_anchor_state', 'load_anchor_checkpoints', 'anchor_checkpoint_records']

EMA_PREFIX = 'ema:'
_STATE_KEYS = {False: ('state_dict', 'model'), True: ('state_dict_ema', 'model_ema')}  # train.py / timm order
_HUB_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')  # what save_for_hf writes (safetensors first)


@dataclass(frozen=True)
class AnchorSource:
    """One `anchor_checkpoints` entry: `kind` is 'file', 'hf-hub' or 'local-dir'; `ema` picks the EMA weights."""
    spec: str
    kind: str
    location: str
    ema: bool = False

    @classmethod
    def parse(cls, spec: Union[str, os.PathLike]) -> AnchorSource:
        text = os.fspath(spec)
        ema = text.startswith(EMA_PREFIX)
        rest = text[len(EMA_PREFIX):] if ema else text
        kind, location = parse_model_name(rest) if rest.startswith(('hf-hub:', 'local-dir:')) else ('file', rest)
        src = cls(text, kind, location, ema)
        if ema and (kind != 'file' or rest.endswith('.safetensors')):
            raise AnchorCheckpointError(
                f'{text!r}: the {EMA_PREFIX!r} prefix picks the state_dict_ema of a train.py checkpoint; a '
                f'{"timm model" if kind != "file" else ".safetensors file"} holds one state dict: drop the prefix')
        if kind == 'file' and Path(location).is_dir():
            raise AnchorCheckpointError(f'anchor checkpoint {location!r} is a folder: pass local-dir:{location} for a '
                                        f'timm model saved with save_for_hf, or the checkpoint file in it')
        if kind == 'file' and not Path(location).is_file():
            raise AnchorCheckpointError(f'anchor checkpoint {location!r}: no such file (pass a train.py checkpoint, '
                                        f'a .safetensors file, hf-hub:ORG/NAME or local-dir:DIR)')
        if kind == 'local-dir' and not Path(location).is_dir():
            raise AnchorCheckpointError(f'anchor checkpoint {text!r}: no such folder')
        return src

    def __str__(self) -> str:
        return f'anchor checkpoint {self.spec!r}'


def parse_anchor_checkpoints(specs: Optional[Sequence[Any]], num_anchors: int) -> list[Optional[AnchorSource]]:
    """One source (or None) per anchor; raises AnchorCheckpointError for a wrong count, type or missing file."""
    if specs is None:
        return [None] * num_anchors
    if isinstance(specs, (str, os.PathLike)) or not isinstance(specs, Sequence):
        raise AnchorCheckpointError(f'anchor_checkpoints takes a list with one entry per anchor ({num_anchors}: a '
                                    f'path, hf-hub:/local-dir: name or None each), got {specs!r}')
    if len(specs) != num_anchors:
        raise AnchorCheckpointError(f'anchor_checkpoints has {len(specs)} entries for {num_anchors} anchors: pass '
                                    f'one per anchor, smallest first (None leaves an anchor as built)')
    bad = [s for s in specs if s is not None and not isinstance(s, (str, os.PathLike))]
    if bad:
        raise AnchorCheckpointError(f'anchor_checkpoints entries are paths, hf-hub:/local-dir: names or None, '
                                    f'got {bad[0]!r}')
    return [None if s is None else AnchorSource.parse(s) for s in specs]


# --- reading ---------------------------------------------------------------------------------------------------------
def _train_state(ckpt: Any, src: AnchorSource) -> dict[str, Any]:
    """The state dict inside a train.py checkpoint (or a bare state dict)."""
    if not isinstance(ckpt, dict):
        raise AnchorCheckpointError(f'{src} holds a {type(ckpt).__name__}, not a checkpoint dict')
    for key in _STATE_KEYS[src.ema]:
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    if src.ema:
        raise AnchorCheckpointError(f'{src} has no EMA weights (no state_dict_ema; it holds {sorted(ckpt)[:8]}): '
                                    f'train with --model-ema, or drop the {EMA_PREFIX!r} prefix')
    if any(isinstance(ckpt.get(k), dict) for k in _STATE_KEYS[True]):
        raise AnchorCheckpointError(f'{src} holds only EMA weights: prefix it with {EMA_PREFIX!r}')
    return ckpt


def _arch_of(ckpt: Any) -> Optional[str]:
    """The model name train.py records (`args.model`; `arch` is the same or a class name), where present."""
    if not isinstance(ckpt, dict):
        return None
    for name in (getattr(ckpt.get('args'), 'model', None), ckpt.get('arch')):
        if isinstance(name, str) and name:
            return name
    return None


def _read_hub(src: AnchorSource) -> tuple[dict[str, Any], str]:
    """State dict and architecture of a timm model folder or Hub repo, by timm's own loaders."""
    try:
        if src.kind == 'hf-hub':
            _, arch, _ = load_model_config_from_hf(src.location)
            return load_state_dict_from_hf(src.location, weights_only=True), arch
        _, arch, _ = load_model_config_from_path(src.location)
        return load_state_dict_from_path(src.location, weights_only=True), arch
    except Exception as e:  # offline cache miss, missing repo / file, damaged file
        raise AnchorCheckpointError(f'{src}: cannot read it with timm ({type(e).__name__}: {e})') from e


def read_anchor_state(src: AnchorSource) -> tuple[dict[str, torch.Tensor], Optional[str]]:
    """(state dict with `module.` stripped, the architecture the source records, if any) of one source."""
    arch = None
    if src.kind != 'file':
        state, arch = _read_hub(src)
    elif src.location.endswith('.safetensors'):
        try:
            state = load_file(src.location)
        except SafetensorError as e:
            raise AnchorCheckpointError(f'{src} is not a valid safetensors file ({e})') from e
    else:
        try:
            ckpt = read_pickle(src.location)
        except UnsafeCheckpointError as e:
            raise AnchorCheckpointError(f'{src}: {e}') from e
        except Exception as e:  # not a torch file, truncated
            raise AnchorCheckpointError(f'{src} is not a readable torch checkpoint ({type(e).__name__}: {e})') from e
        arch = _arch_of(ckpt)
        state = _train_state(ckpt, src)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise AnchorCheckpointError(f'{src} is not a state dict: {bad[0]!r} holds a {type(state[bad[0]]).__name__}')
    return clean_state_dict(state), arch


# --- checking --------------------------------------------------------------------------------------------------------
def _listing(keys: Sequence[str]) -> str:
    return ', '.join(keys[:5]) + (f', ... ({len(keys)} in all)' if len(keys) > 5 else '')


def _classifiers(model: nn.Module) -> tuple[str, ...]:
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ()
    return (names,) if isinstance(names, str) else tuple(names)


def check_anchor_state(state: dict[str, torch.Tensor], arch: Optional[str], model: nn.Module, src: AnchorSource,
                       anchor: str) -> None:
    """Raise AnchorCheckpointError unless `state` loads strictly into `model`.

    `arch` is the architecture the source records (config.json, train.py's args.model); `anchor` names the anchor.
    A timm model (hf-hub:, local-dir:) must be of the anchor's architecture; a file must share its keys.
    """
    own = model.state_dict()
    built = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or anchor
    what = f'{src} for anchor {anchor}'
    other = f'the anchor is a {built}: pass a checkpoint of a {built}, or build the SN-Net with anchors=[...] naming ' \
            f'the architectures you trained'
    if src.kind != 'file' and arch != built:
        raise AnchorCheckpointError(f'{what}: its config.json names architecture {arch}, {other}')
    shared = [k for k in state if k in own]
    if len(shared) * 2 < len(own):
        raise AnchorCheckpointError(
            f'{what}: the file holds {f"a {arch}" if arch else "another architecture"}, {other}. It shares '
            f'{len(shared)} of {len(own)} keys with the anchor (file keys: {_listing(sorted(state))}; anchor keys: '
            f'{_listing(sorted(own))})')
    for name in _classifiers(model):
        key = f'{name}.weight'
        theirs, ours = state.get(key), own.get(key)
        n_file, n_model = (0 if t is None else t.shape[0] for t in (theirs, ours))
        if n_file != n_model:
            raise AnchorCheckpointError(
                f'{what}: {key} has {n_file} classes in the file, the anchor is built with num_classes={n_model}. '
                f'Pass num_classes={n_file} (`--num-classes {n_file}` for timm-snnet init and train.py)')
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = [f'{len(ks)} {t} keys ({_listing(ks)})' for t, ks in (('missing', missing),
                                                                      ('unexpected', unexpected)) if ks]
        raise AnchorCheckpointError(f'{what}: {"; ".join(parts)}. Loading is strict: pass the checkpoint of this '
                                    f'anchor, built with the same anchor_kwargs')
    shapes = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if shapes:
        k = shapes[0]
        raise AnchorCheckpointError(
            f'{what}: {len(shapes)} tensors differ in shape, e.g. {k}: file {tuple(state[k].shape)}, anchor '
            f'{tuple(own[k].shape)}. Build the anchor with the kwargs it was trained with (anchor_kwargs, img_size)')


def load_anchor_checkpoints(anchors: Sequence[nn.Module], names: Sequence[str],
                            specs: Optional[Sequence[Any]], progress: bool = True) -> None:
    """Read and check every source, then load each into its anchor (strict); raises before changing any anchor."""
    sources = parse_anchor_checkpoints(specs, len(anchors))
    if any(p.is_meta for m, s in zip(anchors, sources) if s is not None for p in m.parameters()):
        raise AnchorCheckpointError("anchor_checkpoints cannot load into anchors built on device='meta'")
    states = {}
    todo = [i for i, s in enumerate(sources) if s is not None]
    for i in tqdm(todo, desc='anchor checkpoints', unit='anchor', disable=not progress or len(todo) < 2):
        state, arch = read_anchor_state(sources[i])
        check_anchor_state(state, arch, anchors[i], sources[i], f'{i} ({names[i]})')
        states[i] = state
    for i, state in states.items():
        anchors[i].load_state_dict(state, strict=True)


def _weights_file(src: AnchorSource) -> Optional[Path]:
    """The local file a source's weights come from (a cached copy for hf-hub:), or None if none is found."""
    if src.kind == 'file':
        return Path(src.location)
    if src.kind == 'local-dir':
        return next((Path(src.location) / n for n in _HUB_WEIGHTS if (Path(src.location) / n).is_file()), None)
    repo, revision = hf_split(src.location)
    found = (try_to_load_from_cache(repo, n, revision=revision) for n in _HUB_WEIGHTS)
    return next((Path(p) for p in found if isinstance(p, str)), None)


def anchor_checkpoint_records(specs: Optional[Sequence[Any]], num_anchors: int) -> list[Optional[dict[str, Any]]]:
    """Per anchor: the source, its weights file, that file's sha256 and whether EMA weights were used (or None)."""
    out: list[Optional[dict[str, Any]]] = []
    for src in parse_anchor_checkpoints(specs, num_anchors):
        if src is None:
            out.append(None)
            continue
        path = _weights_file(src)
        out.append(dict(checkpoint=src.spec, file=str(path.resolve()) if path else None,
                        sha256=file_sha256(path) if path else None, ema=src.ema))
    return out


def shared_kwargs(anchor: str, common: dict[str, Any]) -> dict[str, Any]:
    """Kwargs shared by every anchor; as in timm, only models with a fixed input size take `img_size`."""
    cfg = get_pretrained_cfg(anchor)
    if cfg is not None and not cfg.fixed_input_size:
        return {k: v for k, v in common.items() if k != 'img_size'}
    return common


def _weights_location(name: str) -> str:
    cfg = get_pretrained_cfg(name.split('.')[0] if '.' not in name else name)
    if cfg is None:
        return 'its timm pretrained weights'
    if cfg.hf_hub_id:
        return f"Hub repo '{cfg.hf_hub_id}'"
    return f"'{cfg.url or cfg.file}'" if (cfg.url or cfg.file) else 'its timm pretrained weights'


_DROP_RATES = ('drop_rate', 'drop_path_rate')


def _fetched_url_weights(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """timm's URL loader retries a `weights_only=True` TypeError with torch.hub's full unpickler: download URL weights
    here and hand timm the file, which it reads with `weights_only=True` and no retry."""
    arch, tag = split_model_name_tag(parse_model_name(name)[1])
    cfg = resolve_pretrained_cfg(arch, kwargs.get('pretrained_cfg') or tag or None,
                                 kwargs.get('pretrained_cfg_overlay')).to_dict()
    kind, url = _resolve_pretrained_source(cfg)
    if kind != 'url' or cfg.get('custom_load'):
        return kwargs
    path = download_cached_file(url, check_hash=False, progress=True, cache_dir=kwargs.get('cache_dir'))
    return {**kwargs, 'pretrained_cfg_overlay': {**(kwargs.get('pretrained_cfg_overlay') or {}), 'file': path}}


def create_anchor(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """`timm.create_model` for one anchor; missing pretrained weights raise `SNNetLoadError` naming the anchor, where
    its weights live and what to do, instead of huggingface_hub's traceback. `global_pool=''` on a family whose head
    pools ahead of its own layers (timm asserts) builds it pooled, then drops the pool (`families.EarlyPool`)."""
    if kwargs.get('global_pool') == '' and pools_first(name):
        model = create_anchor(name, pretrained, **{k: v for k, v in kwargs.items() if k != 'global_pool'})
        family_for(model).drop_pool(model)
        model._model_args = {**getattr(model, '_model_args', {}), 'global_pool': ''}  # as timm records it
        return model
    try:
        if pretrained:
            kwargs = _fetched_url_weights(name, kwargs)
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except TypeError as e:  # a model without drop rates (timm's RepVit): zero rates are its own behaviour
            zero = [k for k in _DROP_RATES if k in kwargs and not kwargs[k] and k in str(e)]
            if not zero:
                raise
            return create_anchor(name, pretrained, **{k: v for k, v in kwargs.items() if k not in zero})
    except (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError) as e:
        if not pretrained:
            raise
        where = _weights_location(name)
        if constants.HF_HUB_OFFLINE:
            problem = f'HF_HUB_OFFLINE=1 and the Hugging Face cache ({constants.HF_HUB_CACHE}) has no copy'
            todo = 'load it once with network access, or point HF_HUB_CACHE at a cache that holds it'
        else:
            problem = f'it could not be downloaded ({type(e).__name__})'
            todo = 'check the network / HF_ENDPOINT'
        raise SNNetLoadError(f'cannot load the pretrained weights of anchor {name} from {where}: {problem}; {todo}, '
                             f'or pass pretrained_anchors=False (random anchors) or anchor_checkpoints=[...] '
                             f'(your own files)', where, name) from e
