"""Loading SN-Net weights: timm's own path for `pretrained=True`, `hf-hub:` and `local-dir:`, and checkpoints.

`timm.create_model(name, pretrained=True)`, `'hf-hub:ORG/REPO'` and `'local-dir:DIR'` all load `model.safetensors`
with timm's `load_pretrained`; `checkpoint_filter_fn` (timm glue) checks every tensor against the model first. A
registry name reads the repo's `config.json` too, so its `model_args` (compatibility settings, active stitch, stitch
table) apply as they do for `hf-hub:` names. Loading failures raise `SNNetLoadError` naming the repo or folder, the
file and what to do, before any model is returned; `load_snnet` also covers the `config.json` step of `hf-hub:` /
`local-dir:` names, which timm runs before any SN-Net code. `write_snnet` writes the folder all these read.
"""
from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import timm
import torch
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from timm.models import (
    load_checkpoint,
    parse_model_name,
    resolve_pretrained_cfg,
    save_for_hf,
)
from timm.models._builder import _resolve_pretrained_source
from timm.models._hub import hf_split

from ._anchors import AnchorCheckpointError
from ._errors import Mismatch, SNNetLoadError
from ._models import HF_HUB_ORG, export_model_args
from ._snnet import SNNet
from ._trust import check_saved_config, check_weights_header, is_snnet
from ._utils import as_tuple

__all__ = ['WEIGHTS_NAME', 'CONFIG_NAME', 'Source', 'SNNetLoadError', 'load_snnet', 'load_errors', 'hub_kwargs',
           'check_saved', 'pretrained_errors', 'pretrained_cfg_for', 'weights_source', 'write_snnet', 'check_snnet',
           'architecture', 'model_from_checkpoint', 'checkpoint_file', 'load_model', 'create_snnet',
           'saved_model_args', 'check_weights']

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = 'model.safetensors'
PICKLED_WEIGHTS_NAME = 'pytorch_model.bin'  # timm's save_for_hf without safe_serialization
CONFIG_NAME = 'config.json'
PathLike = Union[str, Path]


@dataclass(frozen=True)
class Source:
    """Where a file comes from: a Hub repo (`ORG/NAME[@revision]`), a local folder, or a file."""
    kind: str
    location: str
    filename: str

    def __str__(self) -> str:
        where = {'hf-hub': 'Hub repo', 'local-dir': 'folder'}.get(self.kind, 'file')
        return f"{where} '{self.location}', file '{self.filename}'"

    @property
    def model_name(self) -> str:
        return f'{self.kind}:{self.location}' if self.kind in ('hf-hub', 'local-dir') else self.location


# --- pulling -----------------------------------------------------------------------------------------------------
def weights_source(cfg: dict[str, Any]) -> Source:
    """The weights timm's `load_pretrained` will read for this pretrained cfg."""
    kind, loc = _resolve_pretrained_source(cfg)
    if isinstance(loc, (tuple, list)):
        return Source(kind, loc[0], loc[1])
    if kind in ('hf-hub', 'local-dir'):
        return Source(kind, str(loc), WEIGHTS_NAME)
    if kind in ('file', 'url'):
        return Source(kind, str(loc), Path(str(loc)).name)
    return Source(kind or 'none', cfg.get('architecture') or '', '')


def pretrained_cfg_for(variant: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The pretrained cfg timm resolves for `variant` and these kwargs (as a dict)."""
    return resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay')).to_dict()


def _snnet_names() -> str:
    return ', '.join(n for n in timm.list_models('snnet*') if is_snnet(n))  # snnet, snnet_*, snnetv2_*


def _check_architecture(arch: str, src: Source, expected: Optional[str] = None) -> None:
    if not is_snnet(arch):
        raise SNNetLoadError(
            f"Cannot load {src.model_name!r} as an SN-Net: {src} is for architecture {arch!r}, which is not an "
            f"SN-Net (registered SN-Nets: {_snnet_names()}). Load it with timm.create_model({src.model_name!r}) "
            f"instead, or pick an SN-Net repo (its config.json names one of the models above).",
            src.location, src.filename)
    if expected is not None and arch != expected:
        raise SNNetLoadError(
            f"Cannot load pretrained {expected}: {src} is for architecture {arch!r}, not {expected!r}. "
            f"Create it with timm.create_model({src.model_name!r}, pretrained=True), or point "
            f"pretrained_cfg_overlay=dict(hf_hub_id=...) at a {expected} repo.", src.location, src.filename)


def hub_kwargs(variant: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Kwargs that build `variant` for its SN-Net weights: no anchor downloads, and for a registry name whose
    weights are on the Hub, the model_args saved in the repo's config.json as defaults (as timm does for `hf-hub:`).
    A saved config.json and the weights' header are checked (`_trust`) before anything is built.
    """
    kwargs = dict(kwargs)
    if kwargs.pop('pretrained_anchors', False):
        _logger.info('pretrained=True: the SN-Net weights hold the anchors, ignoring pretrained_anchors=True')
    if kwargs.pop('anchor_checkpoints', None) is not None:
        _logger.info('pretrained=True: the SN-Net weights hold the anchors, ignoring anchor_checkpoints')
    cfg = pretrained_cfg_for(variant, kwargs)
    if cfg.get('source') in ('hf-hub', 'local-dir'):
        return kwargs  # timm built these kwargs from that config.json already (checked by `check_saved`)
    weights = weights_source(cfg)
    if weights.kind != 'hf-hub':
        return kwargs  # a file, url or state dict: nothing saved beside it
    saved = saved_model_args(Source('hf-hub', weights.location, CONFIG_NAME), variant, kwargs.get('cache_dir'))
    saved = {k: v for k, v in saved.items() if k not in ('pretrained_anchors', 'anchor_checkpoints')}
    kwargs = {**saved, **kwargs}
    check_weights(variant, kwargs, weights)
    return kwargs


def check_saved(variant: str, kwargs: dict[str, Any], pretrained: bool) -> None:
    """When timm read `kwargs` from a folder's or Hub repo's config.json (`local-dir:` / `hf-hub:` names): its
    arguments against the allowlist, and with `pretrained`, its weights' header against the model built on meta."""
    cfg = kwargs.get('pretrained_cfg')
    if not isinstance(cfg, dict) or cfg.get('source') not in ('hf-hub', 'local-dir'):
        return
    where = cfg.get('hf_hub_id') if cfg['source'] == 'hf-hub' else cfg.get('file')
    saved_model_args(Source(cfg['source'], str(where), CONFIG_NAME), variant, kwargs.get('cache_dir'))
    if pretrained:
        check_weights(variant, kwargs, Source(cfg['source'], str(where), WEIGHTS_NAME))


def _read_config(src: Source, cache_dir: Optional[str] = None) -> dict[str, Any]:
    """The raw config.json of a folder or Hub repo (no field added, nothing built)."""
    with load_errors(src):
        if src.kind == 'hf-hub':
            repo, revision = hf_split(src.location)
            path = Path(hf_hub_download(repo, src.filename, revision=revision, cache_dir=cache_dir))
        else:
            path = Path(src.location) / src.filename
            if not path.is_file():
                raise FileNotFoundError(f'{path} not found')
        config = json.loads(path.read_text())
    if not isinstance(config, dict):
        raise _fail(src, 'it is not a JSON object', 'Write it again with timm_snnet.save_snnet(model, DIR).')
    return config


def saved_model_args(src: Source, expected: Optional[str] = None, cache_dir: Optional[str] = None) -> dict[str, Any]:
    """The model_args of a saved SN-Net's config.json, once its architecture and every argument are allowed."""
    config = _read_config(src, cache_dir)
    arch = config.get('architecture')
    if not isinstance(arch, str):
        raise _fail(src, 'it names no architecture', 'Write it again with timm_snnet.save_snnet(model, DIR).')
    _check_architecture(arch, src, expected)
    return check_saved_config(arch, config, src.model_name)


def check_weights(variant: str, kwargs: dict[str, Any], weights: Source) -> None:
    """The weights file's safetensors header against `variant` built from `kwargs` on the meta device."""
    if weights.kind == 'hf-hub':
        repo, revision = hf_split(weights.location)
        with load_errors(weights, variant):
            path = hf_hub_download(repo, weights.filename, revision=revision, cache_dir=kwargs.get('cache_dir'))
    else:
        path = Path(weights.location) / weights.filename if weights.kind == 'local-dir' else Path(weights.location)
        if not path.is_file() and weights.kind == 'local-dir':  # timm's save_for_hf default: read weights-only
            path = path.with_name(PICKLED_WEIGHTS_NAME) if path.with_name(PICKLED_WEIGHTS_NAME).is_file() else path
        with load_errors(weights, variant):
            if not path.is_file():
                raise FileNotFoundError(f'{path} not found')
    skip = ('pretrained', 'device', 'features_only', 'feature_cfg', 'out_indices')
    meta = {k: v for k, v in kwargs.items() if k not in skip}
    with load_errors(weights, variant):
        check_weights_header(lambda: timm.create_model(variant, device='meta', **meta), path, weights.model_name,
                             kwargs)


def pretrained_errors(variant: str, kwargs: dict[str, Any]):
    """`load_errors` for the weights `build_model_with_cfg` will load."""
    return load_errors(weights_source(pretrained_cfg_for(variant, kwargs)), variant)


def _cache_dir() -> str:
    return str(constants.HF_HUB_CACHE)


def _cached_path(src: Source) -> Optional[str]:
    repo, revision = hf_split(src.location)
    path = try_to_load_from_cache(repo, src.filename, revision=revision)
    return path if isinstance(path, str) else None


def _fail(src: Source, problem: str, todo: str) -> SNNetLoadError:
    return SNNetLoadError(f'Cannot load the SN-Net from {src}: {problem}. {todo}', src.location, src.filename)


@contextmanager
def load_errors(src: Source, variant: str = 'MODEL') -> Iterator[None]:
    """Re-raise Hub, file-format and mismatch errors as `SNNetLoadError` naming `src` and what to do."""
    hub = src.kind == 'hf-hub'
    repo = hf_split(src.location)[0] if hub else src.location
    push = f'`timm-snnet push --model {variant} --checkpoint CKPT --repo-id {repo}`'
    write = ('write it with `timm-snnet convert ... --output DIR` or `timm_snnet.save_snnet(model, DIR)` '
             '(config.json + model.safetensors)')
    try:
        yield
    except SNNetLoadError:
        raise
    except Mismatch as e:
        todo = (f"The weights were saved for other anchors or settings (anchors, anchor_kwargs, img_size, window, "
                f"layer_assignment). Build the model from its own config.json with "
                f"timm.create_model({src.model_name!r}, pretrained=True) and no kwargs that change the architecture"
                if src.kind in ('hf-hub', 'local-dir') else
                'Create the model with the kwargs the checkpoint was saved with')
        raise _fail(src, f'its tensors do not fit the model built here: {e}', todo + '.') from e
    except LocalEntryNotFoundError as e:  # (an EntryNotFoundError too) offline, or the Hub unreachable
        if constants.HF_HUB_OFFLINE:
            problem = (f'the file is not in the local cache ({_cache_dir()}) and HF_HUB_OFFLINE=1 forbids '
                       f'downloading it')
            todo = ('Load it once with network access (unset HF_HUB_OFFLINE) to fill the cache, point HF_HUB_CACHE '
                    'at a cache that holds the repo, or load a local copy with "local-dir:DIR".')
        else:
            problem = f'the Hub ({constants.ENDPOINT}) could not be reached and the local cache ({_cache_dir()}) ' \
                      f'has no copy of the file'
            todo = 'Check your connection, proxy and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 with a filled cache.'
        raise _fail(src, problem, todo) from e
    except RepositoryNotFoundError as e:
        raise _fail(src, 'the repo does not exist, or it is private and you are not logged in',
                    f"Check the repo id (published SN-Nets live under '{HF_HUB_ORG}/', e.g. "
                    f"'hf-hub:{HF_HUB_ORG}/snnet_deit_tsb.in1k'); for a private repo log in (`hf auth login` or "
                    f"HF_TOKEN); to publish it run {push}.") from e
    except RevisionNotFoundError as e:
        raise _fail(src, f'revision {hf_split(src.location)[1]!r} does not exist',
                    "Use an existing branch, tag or commit (the default is 'main').") from e
    except EntryNotFoundError as e:
        what = ('config.json holds the model_args that build the SN-Net' if src.filename == CONFIG_NAME else
                'SN-Net weights are published as model.safetensors (nothing pickled is read from the Hub)')
        raise _fail(src, 'the repo has no such file', f'{what}; publish the repo with {push}.') from e
    except SafetensorError as e:
        if hub:
            cached = _cached_path(src)
            todo = (f'Delete the cached copy ({cached or _cache_dir()}) so that it is downloaded again; if it fails '
                    f'again, the file on the Hub is damaged: publish it again with {push}.')
        else:
            todo = f'Write it again: {write}.'
        raise _fail(src, f'it is not a valid safetensors file ({e})', todo) from e
    except json.JSONDecodeError as e:
        raise _fail(src, f'it is not valid JSON ({e})', f'Publish it again with {push}.' if hub else
                    f'Write it again: {write}.') from e
    except (FileNotFoundError, RuntimeError) as e:  # timm's local-dir errors
        text = str(e)
        if src.kind == 'local-dir' and ('not found' in text or 'No suitable checkpoints' in text
                                        or 'not a directory' in text):
            problem = 'the folder does not hold it' if Path(src.location).is_dir() else 'there is no such folder'
            raise _fail(src, problem, f'Point local-dir: at a folder holding config.json and model.safetensors; '
                                      f'{write}.') from e
        raise


def load_snnet(model_name: str, pretrained: bool = True, **kwargs: Any) -> SNNet:
    """`timm.create_model` for SN-Nets (a registry name, `hf-hub:ORG/REPO[@rev]` or `local-dir:DIR`).

    Every loading failure raises `SNNetLoadError` naming the repo or folder, the file and what to do, before any
    model is returned; plain `timm.create_model` raises it too, except for the `config.json` step of `hf-hub:` and
    `local-dir:` names (timm runs that before any SN-Net code) and for non-SN-Net architectures.
    """
    source, model_id = parse_model_name(model_name)
    if source in ('hf-hub', 'local-dir'):
        saved_model_args(Source(source, model_id, CONFIG_NAME), cache_dir=kwargs.get('cache_dir'))
    elif not is_snnet(model_id.split('.')[0]):
        raise ValueError(f'{model_name!r} is not an SN-Net; registered SN-Nets: {_snnet_names()}')
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)


# --- pushing -----------------------------------------------------------------------------------------------------
def check_snnet(model: Any) -> SNNet:
    """`model`, once it is an SN-Net built with timm.create_model (it has a pretrained cfg to save)."""
    if not isinstance(model, SNNet) or not getattr(model, 'pretrained_cfg', None):
        raise TypeError(f'expected an SN-Net built with timm.create_model, got {type(model).__name__}')
    return model


def architecture(model: SNNet) -> str:
    """The registered entry point an SN-Net was built with (`snnet_deit_tsb`, ...)."""
    return model.pretrained_cfg['architecture']


def write_snnet(model: SNNet, folder: PathLike, source: Optional[dict] = None) -> Path:
    """model.safetensors and config.json in `folder` (timm's save_for_hf, safetensors only, complete model_args), as
    `local-dir:` and `hf-hub:` read them. `source` records the checkpoint a conversion started from."""
    model = check_snnet(model)
    model_config: dict[str, Any] = {'pretrained_cfg': {'hf_hub_filename': WEIGHTS_NAME}}
    if source:
        model_config['source_checkpoint'] = source
    save_for_hf(model, folder, model_config=model_config, model_args=export_model_args(model),
                safe_serialization=True)
    return Path(folder)


def model_from_checkpoint(
        model_name: str,
        checkpoint: Optional[PathLike] = None,
        model_kwargs: Optional[dict] = None,
        num_classes: Optional[int] = None,
        use_ema: bool = False,
) -> SNNet:
    """The one resolver of `--model` and `--checkpoint`: a folder from `timm-snnet convert` / `save_snnet`
    (local-dir:), else a train.py or .safetensors checkpoint; no checkpoint for a `local-dir:` / `hf-hub:` model,
    which holds its weights."""
    kwargs = {**(model_kwargs or {}), **({'num_classes': num_classes} if num_classes else {})}
    source = parse_model_name(model_name)[0]
    if checkpoint is None:
        if source not in ('hf-hub', 'local-dir'):
            raise ValueError(f'{model_name} needs its weights: pass --checkpoint (a train.py checkpoint, .safetensors '
                             f'or SN-Net folder), or --model local-dir:DIR / hf-hub:ORG/NAME for a saved SN-Net')
        return load_snnet(model_name, **kwargs)
    path = Path(checkpoint)
    if path.is_dir():
        model = load_snnet(f'local-dir:{path}', **kwargs)
        if source is None and architecture(model) != model_name:
            raise ValueError(f'{path} holds a {architecture(model)}, not a {model_name}: pass --model '
                             f'{architecture(model)}')
        return model
    return load_model(model_name, path, model_kwargs, num_classes, use_ema)


def checkpoint_file(model_name: str, checkpoint: Optional[PathLike] = None) -> Optional[Path]:
    """The file `model_from_checkpoint` reads the weights from (to record its hash); None if not in the cache."""
    if checkpoint is not None:
        path = Path(checkpoint)
        return path / WEIGHTS_NAME if path.is_dir() else path
    source, location = parse_model_name(model_name)
    if source == 'local-dir':
        return Path(location) / WEIGHTS_NAME
    cached = _cached_path(Source('hf-hub', location, WEIGHTS_NAME)) if source == 'hf-hub' else None
    return Path(cached) if cached else None


# --- model and data ------------------------------------------------------------------------------------------------
def create_snnet(model_name: str, model_kwargs: Optional[dict] = None, num_classes: Optional[int] = None,
                 **extra: Any) -> torch.nn.Module:
    """`timm.create_model` for an SN-Net by name, with errors that say what was wrong and what is valid."""
    source, name = parse_model_name(model_name)
    if not source and not timm.is_model(name):
        raise ValueError(f'unknown model {model_name!r}; registered SN-Nets: {_snnet_names()}')
    if not source and not is_snnet(name.split('.')[0]):
        raise ValueError(f'{model_name} is not an SN-Net; registered SN-Nets: {_snnet_names()} (or '
                         f"timm.create_model('snnet', anchors=(...)) for any timm family)")
    kwargs = {**(model_kwargs or {}), **extra}
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    try:
        model = timm.create_model(model_name, **kwargs)
    except (TypeError, AssertionError) as e:  # timm refuses argument values with asserts (global_pool='bogus')
        raise ValueError(f'cannot create {model_name} with kwargs {kwargs}: {e}') from e
    except AnchorCheckpointError as e:
        raise ValueError(f'cannot create {model_name}: {e}') from e
    except RuntimeError as e:  # timm's 'Unknown model (NAME)' for an anchor named in the kwargs
        if not str(e).startswith('Unknown model'):
            raise
        raise ValueError(f'cannot create {model_name} with kwargs {kwargs}: {e}; list names with '
                         f"timm.list_models('PATTERN')") from e
    if not hasattr(model, 'stitch_configs'):
        raise ValueError(f'{model_name} is not an SN-Net; registered SN-Nets: {_snnet_names()}')
    return model


def _class_mismatch(error: str, model: torch.nn.Module) -> Optional[tuple[str, int, int]]:
    """(classifier key, classes in the file, classes in the model) when a head's size is what does not fit."""
    classifiers = as_tuple((getattr(model, 'pretrained_cfg', None) or {}).get('classifier'))
    pattern = (r'size mismatch for ([\w.]+): copying a param with shape torch.Size\(\[(\d+)[^)]*\) from checkpoint, '
               r'the shape in current model is torch.Size\(\[(\d+)')
    for key, file, own in re.findall(pattern, error):
        if any(key.startswith(c + '.') for c in classifiers):
            return key, int(file), int(own)
    return None


def load_model(
        model_name: str,
        checkpoint: PathLike,
        model_kwargs: Optional[dict] = None,
        num_classes: Optional[int] = None,
        use_ema: bool = False,
) -> torch.nn.Module:
    """Create `model_name` and load `checkpoint` (train.py `.pth.tar`, `.pth` or `.safetensors`) as validate.py does."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {checkpoint} (pass a train.py checkpoint, e.g. '
                         f'output/train/<run>/model_best.pth.tar, or a .safetensors file)')
    model = create_snnet(model_name, model_kwargs, num_classes)
    try:
        load_checkpoint(model, str(path), use_ema=use_ema)
    except RuntimeError as e:
        if 'weights_only' in str(e):  # timm's refusal, which ends by suggesting the full unpickler: never ours
            raise ValueError(f'cannot read checkpoint {checkpoint}: it holds pickled objects that a weights-only load '
                             f'refuses (tensors, plain containers and train.py\'s args are read; nothing in it was '
                             f'built or run). Save its state dict with safetensors and pass the .safetensors '
                             f'file') from e
        if 'loading state_dict' not in str(e):
            raise ValueError(f'cannot read checkpoint {checkpoint}: {e}') from e
        classes = _class_mismatch(str(e), model)
        if classes:
            raise ValueError(f'checkpoint {checkpoint} has {classes[1]} classes ({classes[0]}), {model_name} is built '
                             f'with {classes[2]}: pass --num-classes {classes[1]} (num_classes={classes[1]})') from e
        detail = str(e).strip().splitlines()
        raise ValueError(
            f'checkpoint {checkpoint} does not fit {model_name} with kwargs {model_kwargs or {}}: '
            f'{" ".join(detail[:3])[:600]}\nPass the --model-kwargs (and --num-classes) the checkpoint was '
            f'trained with.') from e
    except Exception as e:  # unreadable file: not a checkpoint, truncated, wrong format for its extension
        raise ValueError(f'cannot read checkpoint {checkpoint}: {type(e).__name__}: {e}') from e
    return model
