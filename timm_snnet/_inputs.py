"""What a user passes on a command line, checked before any work: `KEY=VALUE` model kwargs, and the files and folders
commands read. Each check raises a one-line ValueError / FileNotFoundError saying what it got and what it expected."""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any, Union

__all__ = ['parse_kwarg', 'describe_path', 'check_checkpoint', 'check_image_folder', 'check_file']

PathLike = Union[str, os.PathLike]

KWARGS_EXAMPLE = "e.g. img_size=224 stitch_id=3 anchors=\"('deit_tiny_patch16_224','deit_small_patch16_224')\""
CHECKPOINT_EXPECTED = ('a train.py checkpoint (.pth.tar / .pth), a .safetensors file, or an SN-Net folder '
                       '(config.json + model.safetensors, from `timm-snnet convert` or save_snnet)')
_LITERAL_CHARS = set('()[]{}\'"')
_MAGIC = (
    (b'\x89PNG', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'), (b'GIF8', 'a GIF image'),
    (b'BM', 'a BMP image'), (b'RIFF', 'a RIFF file (WebP image?)'), (b'PK\x03\x04', 'a zip archive'),
    (b'\x80', 'a pickle'), (b'\x1f\x8b', 'gzip data'), (b'%PDF', 'a PDF'), (b'\x7fELF', 'an executable'),
)


def parse_kwarg(token: str) -> tuple[str, Any]:
    """`KEY=VALUE` as train.py's `--model-kwargs` reads it: a Python literal (`ast.literal_eval`), else the bare text
    (`global_pool=avg`). A malformed token (no `=`, no name, no value, unbalanced brackets or quotes) is refused."""
    key, sep, text = token.partition('=')
    key = key.strip()
    if not sep:
        raise ValueError(f'expected KEY=VALUE, got {token!r} ({KWARGS_EXAMPLE})')
    if not key.isidentifier():
        raise ValueError(f'{key!r} in {token!r} is not a keyword name ({KWARGS_EXAMPLE})')
    if not text.strip():
        raise ValueError(f'{key}= has no value ({KWARGS_EXAMPLE}; {key}="" for an empty string)')
    try:
        return key, ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        if _LITERAL_CHARS & set(text):  # meant as a literal: brackets or quotes that do not parse
            reason = e.msg if isinstance(e, SyntaxError) and e.msg else type(e).__name__
            raise ValueError(f'{key}={text} is not a Python literal ({reason}): check brackets, quotes and commas '
                             f'({KWARGS_EXAMPLE}; quote the token for the shell)') from None
        return key, text  # a bare word, as train.py reads it


def _is_safetensors(head: bytes, size: int) -> bool:
    return len(head) >= 9 and 0 < int.from_bytes(head[:8], 'little') <= size - 8 and head[8:9] == b'{'


def describe_path(path: PathLike) -> str:
    """What is at `path`, in words, for messages: 'a folder', 'an empty file', 'a PNG image', 'JSON text', ..."""
    path = Path(path)
    if not path.exists():
        return 'nothing (no such file or folder)'
    if path.is_dir():
        return 'a folder'
    if not path.is_file():
        return 'not a regular file'
    size = path.stat().st_size
    if size == 0:
        return 'an empty file'
    try:
        with open(path, 'rb') as f:
            head = f.read(64)
    except OSError as e:
        return f'an unreadable file ({e.strerror})'
    if _is_safetensors(head, size):
        return 'a safetensors file'
    what = next((w for magic, w in _MAGIC if head.startswith(magic)), None)
    if what:
        return what
    try:
        text = head.decode('utf-8').lstrip()
    except UnicodeDecodeError:
        return 'binary data'
    return 'JSON text' if text[:1] in ('{', '[') else 'a text file'


def check_file(path: PathLike, what: str) -> Path:
    """`path` as a Path if it is a readable file; else FileNotFoundError / ValueError naming `what` it should be."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'{what} not found: {path}')
    if not path.is_file():
        raise ValueError(f'not {what}: {path} is {describe_path(path)}')
    if not os.access(path, os.R_OK):
        raise ValueError(f'{what} {path} is not readable (permissions)')
    return path


def check_checkpoint(path: PathLike, folder: bool = True) -> Path:
    """A checkpoint file whose bytes fit its extension (timm picks the loader by extension), or (`folder`) an SN-Net
    folder holding config.json and model.safetensors."""
    path = Path(path)
    expected = CHECKPOINT_EXPECTED if folder else 'a .pth / .pth.tar checkpoint or a .safetensors file'
    if not path.exists():
        raise FileNotFoundError(f'checkpoint not found: {path} (expected {expected})')
    if path.is_dir():
        config = path / 'config.json'
        if not folder:
            raise ValueError(f'not a checkpoint: {path} is a folder (expected {expected})')
        if not config.is_file():
            raise ValueError(f'not an SN-Net folder: {path} holds no config.json (expected {expected})')
        try:
            arch = json.loads(config.read_text()).get('architecture')
        except (ValueError, OSError, AttributeError):
            arch = None
        if not isinstance(arch, str):
            raise ValueError(f'not an SN-Net folder: {config} is {describe_path(config)} without an "architecture" '
                             f'(expected {expected})')
        if not (path / 'model.safetensors').is_file():
            raise ValueError(f'not an SN-Net folder: {path} holds no model.safetensors (expected {expected})')
        return path
    got = describe_path(check_file(path, 'a checkpoint'))
    if path.name.endswith('.safetensors'):
        if got != 'a safetensors file':
            raise ValueError(f'not a safetensors file: {path} is {got} (expected {expected})')
    elif got not in ('a zip archive', 'a pickle'):
        hint = '; rename it to .safetensors' if got == 'a safetensors file' else ''
        raise ValueError(f'not a checkpoint: {path} is {got}{hint} (expected {expected})')
    return path


def check_image_folder(path: PathLike) -> Path:
    """An existing folder (the images under it are listed later, by timm's dataset)."""
    path = Path(path)
    expected = 'an ImageFolder: DIR/train/<class>/<image> and DIR/val/<class>/<image>, or DIR/<class>/<image>'
    if not path.exists():
        raise FileNotFoundError(f'data dir not found: {path} (expected {expected})')
    if not path.is_dir():
        raise ValueError(f'not an image folder: {path} is {describe_path(path)} (expected {expected})')
    return path
