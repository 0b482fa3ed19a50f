"""What a saved SN-Net folder or Hub repo may make the package do: build an architecture, nothing else.

A `config.json` is untrusted input. Before anything is built or downloaded beyond the folder's own two files:
- its `model_args` hold only the constructor arguments of the entry it names (`SNNet`'s or `ExportedStitch`'s,
  minus those that load weights); anchors are plain timm registry names (no `hf-hub:` / `local-dir:` source, no
  SN-Net entry); each anchor's kwargs are its own model class's named constructor arguments, with plain JSON values
  that name no URL or path;
- its `pretrained_cfg` names no weight source (timm adds the folder or repo itself);
- the weights file's safetensors header (keys, shapes, dtypes) fits the model built on the meta device, a build that
  stops as soon as it registers more tensors than the file holds. So a 1 KB config cannot make the package
  allocate what the file does not hold.
Anything else raises `SNNetLoadError` naming the key and the place.
"""
from __future__ import annotations

import inspect
import zipfile
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import timm
import torch
from safetensors import safe_open
from timm.models import is_model, model_entrypoint, parse_model_name, split_model_name_tag
from torch.nn.modules import module as nn_module

from ._errors import SNNetError, SNNetLoadError
from ._exported import EXPORT_NAME, ExportedStitch
from ._models import check_fit
from ._snnet import SNNet

__all__ = ['check_saved_config', 'check_weights_header', 'is_snnet', 'WEIGHT_SOURCE_KEYS']

# create_model / build_model_with_cfg / pretrained_cfg keys that load weights or run a loader: never from a file
WEIGHT_SOURCE_KEYS = frozenset((
    'pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay', 'pretrained_strict', 'pretrained_filter_fn',
    'checkpoint_path', 'cache_dir', 'feature_cfg', 'features_only', 'kwargs_filter', 'url', 'file', 'hf_hub_id',
    'hf_hub_filename', 'state_dict', 'custom_load', 'source', 'device', 'dtype', 'scriptable', 'exportable', 'no_jit',
))
# constructor arguments that load weights, allowed in a saved config only with the value that loads nothing
_INERT = {'pretrained_anchors': (False, None), 'anchor_checkpoints': (None,)}
_DATA_ARGS = ('stitch_table', 'names')  # free text (measured rows, display names), never read as a source
_ENTRY_CLASSES = {EXPORT_NAME: ExportedStitch}
_SAFETENSORS_NAME = 'model.safetensors'
_SIZE_ARGS = ('anchor_kwargs', 'img_size', 'num_classes', 'in_chans')
_SIZE_FLOOR = 4096  # any size up to this is plausible whatever the file holds
_TENSOR_SLACK = 256  # registrations a build may make beyond the file's tensors (heads reset, temporary modules)


def _refuse(where: str, what: str) -> SNNetLoadError:
    return SNNetLoadError(f'Refusing to load {where}: {what}. A saved SN-Net may only hold architecture arguments; '
                          f'write it again with timm_snnet.save_snnet(model, DIR).', where, 'config.json')


def is_snnet(name: str) -> bool:
    """`name` is a registered SN-Net entry point (of this package)."""
    return is_model(name) and model_entrypoint(name).__module__ == 'timm_snnet._models'


def _allowed_args(arch: str) -> set[str]:
    params = inspect.signature(_ENTRY_CLASSES.get(arch, SNNet)).parameters
    return {k for k, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD and k != 'self'} - {'device', 'dtype'}


def _check_plain(value: Any, key: str, where: str, data: bool = False) -> None:
    """JSON scalars, lists and str-keyed dicts; unless `data` (free text), no string that could name a URL, a path
    or a registry source."""
    if isinstance(value, str):
        if not data and any(c in value for c in ':/\\'):
            raise _refuse(where, f'{key} holds {value[:80]!r}, which looks like a URL, a path or a weight source')
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, key, where, data)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or (not data and k in WEIGHT_SOURCE_KEYS):
                raise _refuse(where, f'{key} holds the key {k!r}, which names a weight source')
            _check_plain(v, f'{key}.{k}', where, data)
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise _refuse(where, f'{key} holds a {type(value).__name__}, not a JSON value')


def _check_anchor_name(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise _refuse(where, f'anchor {name!r} is not a timm model name')
    source, model = parse_model_name(name)
    arch = split_model_name_tag(model)[0]
    if source or not is_model(arch) or is_snnet(arch):
        what = (f'a {source}: source' if source else 'an SN-Net entry' if is_model(arch) else 'not a timm model')
        raise _refuse(where, f'anchor {name!r} is {what}; anchors must be timm registry names such as '
                             f"'deit_small_patch16_224'")
    return name


@cache
def _anchor_args(name: str) -> frozenset[str]:
    """Named constructor arguments of the anchor's timm class (found by building it on the meta device), with its
    bases' while an `__init__` passes `**kwargs` on (timm's LevitDistilled takes `*args, **kwargs` only)."""
    with torch.device('meta'):
        cls = type(timm.create_model(name))
    names = set()
    for base in cls.__mro__:
        if base is torch.nn.Module or '__init__' not in vars(base):
            continue
        params = inspect.signature(base.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {'self'}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return frozenset(names)


def _check_anchor_kwargs(anchors: list[str], value: Any, where: str) -> None:
    per_anchor = value if isinstance(value, (list, tuple)) else [value] * len(anchors)
    for name, kw in zip(anchors, per_anchor):
        if kw is None:
            continue
        if not isinstance(kw, dict):
            raise _refuse(where, f'anchor_kwargs for {name} is a {type(kw).__name__}, not a dict')
        _check_plain(kw, 'anchor_kwargs', where)
        unknown = sorted(set(kw) - _anchor_args(name))
        if unknown:
            raise _refuse(where, f'anchor_kwargs for {name} hold {unknown}, which are not arguments of its timm '
                                 f'class {sorted(_anchor_args(name))}')


def check_saved_config(arch: str, config: dict[str, Any], where: str) -> dict[str, Any]:
    """The `model_args` of a saved config.json for `arch`, checked against the allowlist (raises `SNNetLoadError`)."""
    args = config.get('model_args') or {}
    cfg = config.get('pretrained_cfg') or {}
    if not isinstance(args, dict) or not isinstance(cfg, dict):
        raise _refuse(where, 'model_args and pretrained_cfg must be JSON objects')
    for key, value in cfg.items():
        if key in WEIGHT_SOURCE_KEYS and value not in (None, False, '') and (key, value) != (
                'hf_hub_filename', _SAFETENSORS_NAME):
            raise _refuse(where, f'pretrained_cfg.{key} = {str(value)[:80]!r} names a weight source')
    allowed = _allowed_args(arch)
    for key, value in args.items():
        if key in _INERT and value in _INERT[key]:
            continue
        if key not in allowed or key in WEIGHT_SOURCE_KEYS or key in _INERT:
            names = 'names a weight source' if key in WEIGHT_SOURCE_KEYS or key in _INERT else 'is not an argument'
            raise _refuse(where, f'model_args.{key} {names} of {arch} (allowed: {", ".join(sorted(allowed))})')
        if key != 'anchor_kwargs':
            _check_plain(value, f'model_args.{key}', where, data=key in _DATA_ARGS)
    anchors = args.get('anchors') or []
    if not isinstance(anchors, (list, tuple)):
        raise _refuse(where, 'model_args.anchors must be a list of timm model names')
    anchors = [_check_anchor_name(a, where) for a in anchors]
    if 'anchor_kwargs' in args:
        _check_anchor_kwargs(anchors, args['anchor_kwargs'], where)
    return args


@contextmanager
def _tensor_budget(limit: int, where: str) -> Iterator[None]:
    """Stop a build once it registers more than `limit` parameters and buffers."""
    count = [0]

    def hook(*_: Any) -> None:
        count[0] += 1
        if count[0] > limit:
            raise _refuse(where, f'config.json describes a model with more than {limit} tensors; the weights file '
                                 f'holds far fewer')

    handles = [nn_module.register_module_parameter_registration_hook(hook),
               nn_module.register_module_buffer_registration_hook(hook)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


_DTYPES = {torch.float64: 'F64', torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16'}


def _header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """(shape, dtype) per tensor without reading the data: a safetensors header, or a timm `pytorch_model.bin`
    mapped (`weights_only=True`, `mmap=True`); a damaged file raises its format's own error."""
    if path.suffix != '.safetensors':
        if not zipfile.is_zipfile(path):
            raise SNNetLoadError(f'{path.name} is not a torch.save checkpoint (zip format); save the model with '
                                 f'timm_snnet.save_snnet(model, DIR) (model.safetensors)', str(path.parent), path.name)
        state = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise SNNetLoadError(f'{path.name} is not a state dict of tensors', str(path.parent), path.name)
        return {k: (tuple(v.shape), _DTYPES.get(v.dtype, str(v.dtype))) for k, v in state.items()}
    with safe_open(str(path), 'pt') as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def _ints(value: Any, key: str) -> Iterator[tuple[str, int]]:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield key, value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _ints(v, key)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _ints(v, f'{key}.{k}')


def _check_sizes(kwargs: dict[str, Any], header: dict[str, tuple[tuple[int, ...], str]], where: str) -> None:
    """Sizes (depths, widths, image sizes) no larger than anything the file holds: some constructors allocate per
    unit of depth before registering a single parameter (timm's drop-path schedule)."""
    bound = max(_SIZE_FLOOR, len(header), *(d for shape, _ in header.values() for d in shape))
    for key in _SIZE_ARGS:
        for name, value in _ints(kwargs.get(key), key):
            if value > bound:
                raise _refuse(where, f'{name} = {value} is larger than anything the weights file holds ({len(header)} '
                                     f'tensors, largest dimension {bound})')


def check_weights_header(build: Callable[[], torch.nn.Module], weights: Union[str, Path], where: str,
                         kwargs: dict[str, Any]) -> None:
    """Compare the safetensors header of `weights` with `build()` (a meta-device model built from `kwargs`), before
    any real build."""
    path = Path(weights)
    header = _header(path)
    _check_sizes(kwargs, header, where)
    with _tensor_budget(2 * len(header) + _TENSOR_SLACK, where):
        try:
            model = build()
        except SNNetError:
            raise
        except (AssertionError, TypeError, ValueError, KeyError, RuntimeError) as e:  # timm's refusals of bad args
            raise _refuse(where, f'its model_args (with any create_model arguments) do not build a model: '
                                 f'{type(e).__name__}: {e}') from e
    own = model.state_dict()
    check_fit({k: shape for k, (shape, _) in header.items()}, model)
    floats = {'F64', 'F32', 'F16', 'BF16'}
    wrong = [k for k, (_, dtype) in header.items() if k in own and own[k].is_floating_point() != (dtype in floats)]
    if wrong:
        raise _refuse(where, f'{len(wrong)} tensors have the wrong kind of dtype (e.g. {wrong[0]}: '
                             f'{header[wrong[0]][1]})')
