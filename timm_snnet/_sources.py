"""Where `pretrained=True` finds SN-Net weights: our Hub repo, else the authors' release, converted once.

For the default tag of the four registered SN-Nets (`snnet_deit_tsb.in1k`, ...) the sources are, in order:
1. a conversion of the authors' release already in the cache (`{cache}/timm-snnet/official/<file stem>/`, written
   by step 3 of an earlier load): read with no network and no pickle;
2. the Hub repo of the tag (`model.safetensors` + `config.json`), exactly as for any registry name;
3. the authors' release file (`{TIMM_SNNET_RELEASE_URL}/v1.0/snnet_deit.pth`, ...), downloaded once, read with
   `weights_only=True` by `timm_snnet._convert` (same allowlist and compatibility settings as `timm-snnet convert`),
   given the authors' published per-config accuracy as its stitch table, and written to the cache atomically.
The SN-Netv2 models (`snnetv2_deit3_{s_b,s_l,b_l}.in22k_ft_in1k`) follow the same chain, with the authors' Hub repo
(`ziplab/snnetv2_deit3_s_l_imagenet_1k`, file `snnetv2_deit3_s_l.pth`, ...) as step 3: fetched with `hf_hub_download`
(so HF_HUB_OFFLINE and HF_ENDPOINT apply), converted by `convert_official_v2`, and dropped from the Hub cache once
converted (unless it was there before). S -> L gets the authors' per-config top-1 / top-5 as its stitch table.
The `official_*` tags (`snnet_deit_tsb.official_in1k`, ...) use only 1 and 3; `hf-hub:ORG/REPO` names only the Hub.
Concurrent first loads (DDP ranks on one node) convert once: the conversion runs under a file lock.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
import zipfile
from functools import cache
from pathlib import Path
from typing import Any, Optional

import timm
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import WeakFileLock
from timm.models import get_pretrained_cfg
from timm.models._hub import hf_split

from ._convert import CONVERTERS, official_rows
from ._errors import SNNetLoadError
from ._load import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Source,
    check_saved,
    hub_kwargs,
    load_errors,
    pretrained_cfg_for,
    pretrained_errors,
    saved_model_args,
    weights_source,
    write_snnet,
)
from ._models import SHAPE_ARGS, PretrainedSource, set_pretrained_source
from ._releases import OFFICIAL, OFFICIAL_TAG, RELEASE_URL_ENV, Release, release_url
from ._utils import atomic_folder, file_sha256

__all__ = ['official_dir', 'fetch_official', 'pretrained_kwargs']

_logger = logging.getLogger(__name__)

# model_args a converter reads from the authors' file: the conversion's values win over kwargs (entry defaults included)
_CONVERTER_ARGS = ('layer_assignment', 'stitched_final_norm', 'stitch_rank')


def _cache_root(cache_dir: Optional[str] = None) -> Path:
    return Path(cache_dir or constants.HF_HUB_CACHE) / 'timm-snnet' / 'official'


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@cache
def _defaults(model: str) -> dict[str, str]:
    """The entry point's own shape kwargs (as JSON), from a model built on the meta device."""
    args = timm.create_model(model, device='meta')._model_args
    return {k: _json(args[k]) for k in SHAPE_ARGS if k in args}


def _shape_kwargs(model: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The kwargs that change the tensors of `model` from the entry point's defaults."""
    given = {k: kwargs[k] for k in SHAPE_ARGS if kwargs.get(k) is not None}
    return {k: v for k, v in given.items() if _json(v) != _defaults(model).get(k)} if given else {}


def official_dir(model: str, kwargs: Optional[dict[str, Any]] = None) -> Path:
    """Cache folder of `model`'s converted release: `<stem>`, or `<stem>-<hash>` for kwargs that change the tensors."""
    kwargs = kwargs or {}
    shape = _shape_kwargs(model, kwargs)
    key = hashlib.sha256(_json(shape).encode()).hexdigest()[:12] if shape else ''
    return _cache_root(kwargs.get('cache_dir')) / (OFFICIAL[model].stem + (f'-{key}' if key else ''))


def _complete(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


# --- the authors' release: download, convert, cache ----------------------------------------------------------------
def _what_is_wrong(path: Path) -> str:
    """A guess at why a file did not convert, from its first bytes."""
    if not path.is_file():
        return ''
    with open(path, 'rb') as f:
        head = f.read(256)
    if head.lstrip().lower().startswith((b'<!doctype', b'<html', b'<?xml', b'{')):
        return 'it is a web page or error message, not a checkpoint (a proxy or login page answered the download?)'
    if head.startswith(b'PK') and not zipfile.is_zipfile(path):
        return 'it is truncated (an interrupted download?)'
    return ''


def _convert_into(name: str, checkpoint: Path, folder: Path, url: str, shape: dict[str, Any]) -> dict[str, Any]:
    """Convert `checkpoint`, attach the authors' accuracy, write `folder` all or nothing (a temp folder, renamed)."""
    release = OFFICIAL[name]
    model, report = CONVERTERS[release.format](checkpoint, name, **shape)
    rows = official_rows(model, name)
    if rows is None and release.reference is not None:
        _logger.warning(f'{name}: the configs of this architecture are not the published ones, so the converted '
                        f'model carries no stitch table')
    model.set_stitch_table(rows)
    source = dict(format=release.format, file=release.file, url=url, sha256=file_sha256(checkpoint))
    if release.repo_id:
        source['repo_id'] = release.repo_id
    with atomic_folder(folder, replace=True) as tmp:  # an incomplete folder left by hand; complete ones stay
        write_snnet(model, tmp, source=source)
    return report


def _todo(name: str, url: str, root: Path) -> str:
    release = OFFICIAL[name]
    reach = (f'the Hub ({constants.ENDPOINT}) (unset HF_HUB_OFFLINE); behind a mirror, set HF_ENDPOINT to its base URL '
             f'(it must serve {release.repo_id}/{release.file})' if release.repo_id else
             f'{url} (unset HF_HUB_OFFLINE); behind a mirror, set {RELEASE_URL_ENV} to its base URL (it must serve '
             f'{release.file})')
    return (f"To fix it: load once with network access to the Hub or to {reach}. On an air-gapped machine, download "
            f"{url} elsewhere and place it, unchanged, at {root / release.filename}: the next load converts it (or run "
            f"`timm-snnet convert --from {release.format} --model {name} FILE --output DIR` and load 'local-dir:DIR').")


def _all_failed(name: str, tried: list[str], folder: Path, url: str) -> SNNetLoadError:
    sources = '; '.join(f'({i}) {t}' for i, t in enumerate(tried, 1))
    return SNNetLoadError(f'Cannot load pretrained {name}: every source failed: {sources}. The cache '
                          f'({folder}) holds no conversion. {_todo(name, url, folder.parent)}', url,
                          OFFICIAL[name].filename)


def _download(name: str, folder: Path, url: str, cache_dir: Optional[str], tried: list[str]) -> tuple[Path, bool]:
    """(the authors' file, whether this call downloaded it), or SNNetLoadError naming every source tried. A release
    file goes to a temp file beside the cache folder; a Hub file to the Hub cache, where HF_HUB_OFFLINE may serve it."""
    release = OFFICIAL[name]
    if release.repo_id:
        before = try_to_load_from_cache(release.repo_id, release.file, cache_dir=cache_dir)
        _logger.info(f"{name}: downloading the authors' {release.where}")
        try:
            path = hf_hub_download(release.repo_id, release.file, cache_dir=cache_dir)
            return Path(path), not isinstance(before, str)
        except (EntryNotFoundError, HfHubHTTPError, OSError) as e:
            tried.append(f"the authors' Hub repo '{release.repo_id}', file '{release.file}': "
                         f"{_hub_problem(e, release.file)}")
            raise _all_failed(name, tried, folder, url) from e
    if constants.is_offline_mode():
        tried.append(f"the authors' release {url}: HF_HUB_OFFLINE=1 forbids downloading it")
        raise _all_failed(name, tried, folder, url)
    download = folder.parent / f'.{release.filename}.{uuid.uuid4().hex[:8]}.incomplete'
    _logger.info(f'{name}: downloading the authors\' release {url}')
    try:
        with open(download, 'wb') as f:
            http_get(url, f, displayed_filename=release.filename)
    except (HfHubHTTPError, OSError) as e:
        download.unlink(missing_ok=True)
        tried.append(f"the authors' release {url}: the download failed ({e})")
        raise _all_failed(name, tried, folder, url) from e
    return download, True


def _discard(path: Path) -> None:
    """Delete a downloaded file; in the Hub cache, its blob too (the snapshot entry is a link to it)."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def fetch_official(name: str, kwargs: Optional[dict[str, Any]] = None, tried: Optional[list[str]] = None) -> Path:
    """The cache folder holding `name`'s converted release (config.json + model.safetensors); downloads and converts
    the authors' file first if needed, once across processes. Raises SNNetLoadError naming every source tried."""
    kwargs, tried = kwargs or {}, list(tried or [])
    release = OFFICIAL[name]
    folder, url = official_dir(name, kwargs), release_url(name)
    if _complete(folder):
        return folder
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(root / f'{folder.name}.lock'):
        if _complete(folder):  # converted by another process while this one waited
            return folder
        placed = root / release.filename  # a copy placed by hand (air-gapped machines)
        if placed.is_file():
            checkpoint, downloaded = placed, False
        else:
            checkpoint, downloaded = _download(name, folder, url, kwargs.get('cache_dir'), tried)
        try:
            start = time.perf_counter()
            try:
                report = _convert_into(name, checkpoint, folder, url, _shape_kwargs(name, kwargs))
            except Exception as e:  # unreadable, refused (pickled classes outside the allowlist) or unmapped keys
                hint = _what_is_wrong(checkpoint)
                todo = ('Nothing was kept in the cache; if it fails again, the file at that URL is not the authors\' '
                        'release.' if downloaded else f'Delete or replace {checkpoint}.')
                before = f" (tried first: {'; '.join(tried)})" if tried else ''
                raise SNNetLoadError(
                    f"Cannot load pretrained {name} from the authors' {release.where}{before}: {release.filename} "
                    f"(from {url}) does not convert: {hint + '; ' if hint else ''}{e}. {todo} {_todo(name, url, root)}",
                    url, release.filename) from e
            _logger.info(f'{name}: converted {release.filename} in {time.perf_counter() - start:.1f} s '
                         f'({report["tensors"]} tensors) into {folder}')
        finally:
            if downloaded:  # the pickle is not kept: later loads read the conversion
                _discard(checkpoint)
    return folder


# --- the chain -------------------------------------------------------------------------------------------------------
def _release_for(variant: str, cfg: dict[str, Any]) -> tuple[Optional[Release], bool]:
    """(release, release only) for a pretrained cfg: the default tag falls back on the release, an `official_*`
    tag uses it alone; anything else (another repo, a file, a state dict) is not ours to redirect."""
    release = OFFICIAL.get(variant)
    if release is None:
        return None, False
    if cfg.get('file') or cfg.get('state_dict') or cfg.get('source') in ('hf-hub', 'local-dir'):
        return None, False
    tag = cfg.get('tag') or ''
    if tag == OFFICIAL_TAG + release.tag:
        return release, True
    if tag == release.tag and cfg.get('hf_hub_id') == get_pretrained_cfg(f'{variant}.{tag}').hf_hub_id:
        return release, False
    return None, False


def _unavailable(error: BaseException) -> bool:
    """The Hub repo or file does not exist, or the Hub cannot be reached (a cause of `error` says so)."""
    e: Optional[BaseException] = error
    while e is not None:
        if isinstance(e, (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, ConnectionError, TimeoutError)):
            return True
        e = e.__cause__
    return False


def _hub_problem(error: BaseException, files: str = 'config.json or model.safetensors') -> str:
    """Why the Hub repo gave nothing, in a few words (the full advice is for the Hub alone)."""
    e: Optional[BaseException] = error
    while e is not None:
        if isinstance(e, RepositoryNotFoundError):
            return 'the repo does not exist (not published yet?)'
        if isinstance(e, LocalEntryNotFoundError):
            return ('HF_HUB_OFFLINE=1 and the cache has no copy' if constants.is_offline_mode() else
                    f'the Hub ({constants.ENDPOINT}) could not be reached and the cache has no copy')
        if isinstance(e, EntryNotFoundError):
            return f'the repo lacks {files}'
        e = e.__cause__
    return str(error).splitlines()[0]


def _from_hub(variant: str, kwargs: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Kwargs for the Hub repo (as for any registry name), once its weights file is known to exist."""
    out = hub_kwargs(variant, kwargs)
    weights = weights_source(cfg)
    repo, revision = hf_split(weights.location)
    with load_errors(weights, variant):
        hf_hub_download(repo, weights.filename, revision=revision, cache_dir=kwargs.get('cache_dir'))
    return out


def _from_folder(variant: str, kwargs: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Kwargs that build `variant` from a converted release: its config.json model_args, the weights file."""
    saved = saved_model_args(Source('local-dir', str(folder), CONFIG_NAME), variant, kwargs.get('cache_dir'))
    saved = {k: v for k, v in saved.items() if k != 'pretrained_anchors'}
    overlay = {**(kwargs.get('pretrained_cfg_overlay') or {}), 'file': str(folder / WEIGHTS_NAME)}
    fixed = {k: saved[k] for k in _CONVERTER_ARGS if k in saved}
    return {**saved, **kwargs, **fixed, 'pretrained_cfg_overlay': overlay}


def pretrained_kwargs(variant: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`_load.hub_kwargs`, with the authors' release behind the default tags (see the module docstring)."""
    cfg = pretrained_cfg_for(variant, kwargs)
    release, release_only = _release_for(variant, cfg)
    if release is None:
        return hub_kwargs(variant, kwargs)
    if kwargs.get('pretrained_anchors'):
        _logger.info('pretrained=True: the SN-Net weights hold the anchors, ignoring pretrained_anchors=True')
    kwargs = {k: v for k, v in kwargs.items() if k != 'pretrained_anchors'}
    folder = official_dir(variant, kwargs)
    tried = []
    if not _complete(folder) and not release_only:
        repo = cfg['hf_hub_id']
        try:
            out = _from_hub(variant, kwargs, cfg)
            _logger.info(f"{variant}: pretrained weights from the Hub repo '{repo}'")
            return out
        except Exception as e:
            if not _unavailable(e):
                raise
            file = f", file '{e.filename}'" if getattr(e, 'filename', '') else ''
            tried.append(f"Hub repo '{repo}'{file}: {_hub_problem(e)}")
            _logger.info(f"{variant}: the Hub repo '{repo}' is not available, trying the authors' release")
    folder = fetch_official(variant, kwargs, tried)
    _logger.info(f"{variant}: pretrained weights from the authors' {release.where}, converted in {folder}")
    return _from_folder(variant, kwargs, folder)


set_pretrained_source(PretrainedSource(kwargs=pretrained_kwargs, errors=pretrained_errors, check_saved=check_saved))
