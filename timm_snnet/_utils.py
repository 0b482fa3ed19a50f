"""Small helpers shared across the package: file hashing, eval mode, atomic umask-honouring writes, folder locks."""
import hashlib
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from torch import nn

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (writes stay atomic; nothing is cleaned)
    fcntl = None

PathLike = Union[str, os.PathLike]
LOCK_NAME = '.timm-snnet.lock'  # a folder's lock file (left in place: removing a lock file races)
_ORPHAN = re.compile(r'\..+\.[a-z0-9_]{8}\.incomplete')  # our temp folders: `.NAME.XXXXXXXX.incomplete` (mkdtemp)


def as_tuple(value: Any) -> tuple:
    """A cfg entry that names one thing or several (timm's `first_conv` / `classifier`) as a tuple."""
    return () if value is None else (value,) if isinstance(value, str) else tuple(value)


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside the block, the previous mode after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def check_new_folder(output: PathLike) -> Path:
    """`output` as a Path, if it does not exist or is an empty folder; else FileExistsError."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f'{output} exists and is not empty: pick a new folder')
    return output


def check_new_file(path: PathLike, overwrite: bool = False) -> Path:
    """`path` as a Path, if it does not exist (or `overwrite` and it is a file); else FileExistsError."""
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(f'{path} is a folder: pass a file path')
    if path.exists() and not overwrite:
        raise _exists(path)
    return path


def _exists(path: Path) -> FileExistsError:
    return FileExistsError(f'{path} exists: pass --overwrite (overwrite=True) to replace it, or another path')


def process_umask() -> int:
    """The process umask, read from /proc where it can be (os.umask sets it process-wide for a moment)."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('Umask:'):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _flock(fd: int, blocking: bool = True) -> bool:
    """An exclusive advisory lock on `fd`; False if another process holds it (non-blocking) or there are no locks."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except OSError:  # held elsewhere (non-blocking), or a file system without flock
        return False


@contextmanager
def folder_lock(folder: PathLike) -> Iterator[None]:
    """Hold FOLDER/.timm-snnet.lock exclusively (advisory flock): one read-merge-write of the folder at a time."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _flock(fd)
        yield
    finally:
        os.close(fd)


def clean_orphans(folder: PathLike) -> list[Path]:
    """Remove the temp folders `.NAME.XXXXXXXX.incomplete` that killed writers left in `folder`. Only those names,
    only folders, and only when unlocked: a live writer holds its temp folder's lock until it is done."""
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(folder) if _ORPHAN.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return removed
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0) | getattr(os, 'O_NOFOLLOW', 0))
        except OSError:
            continue
        try:
            if _flock(fd, blocking=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
        finally:
            os.close(fd)
    return removed


@contextmanager
def _temp_folder(parent: Path, name: str) -> Iterator[Path]:
    """A new folder `.NAME.XXXXXXXX.incomplete` in `parent` (after cleaning orphans there), locked while it lives so
    that no other run cleans it; removed after."""
    parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(parent)
    while True:
        tmp = Path(tempfile.mkdtemp(prefix=f'.{name}.', suffix='.incomplete', dir=parent))
        fd = os.open(tmp, os.O_RDONLY) if fcntl is not None else None
        if fd is None or not _flock(fd) or os.fstat(fd).st_nlink:  # locked (or no locks here) and still there
            break
        os.close(fd)  # a cleaner removed it between mkdtemp and the lock: take another
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def _set_modes(root: Path) -> None:
    """Files 0666, folders 0777, less the umask: mkdtemp and some writers (safetensors) create owner-only files."""
    mask = process_umask()
    for path in [root, *root.rglob('*')] if root.is_dir() else [root]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_folder(output: PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a new sibling temp folder to write into; on success it becomes `output` in one rename (umask modes), on
    failure nothing is left. `output` must be new or empty, unless `replace` (an incomplete folder left by hand)."""
    output = Path(output) if replace else check_new_folder(output)
    with _temp_folder(output.parent, output.name) as tmp:
        yield tmp
        _set_modes(tmp)
        shutil.rmtree(output, ignore_errors=True) if replace else output.exists() and output.rmdir()
        os.replace(tmp, output)


@contextmanager
def atomic_file(path: PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp path (same name, in a temp folder beside `path`) to write; on success it becomes `path` in one
    rename, with umask modes. Without `overwrite` an existing `path` is refused, also one that appeared meanwhile."""
    path = check_new_file(path, overwrite)
    with _temp_folder(path.parent, path.name) as tmp:
        yield tmp / path.name
        _set_modes(tmp / path.name)
        if overwrite:
            os.replace(tmp / path.name, path)
            return
        try:
            os.link(tmp / path.name, path)  # fails if `path` exists: no check-then-replace race
        except FileExistsError:
            raise _exists(path) from None
        except OSError:  # no hard links on this file system: check, then rename
            os.replace(tmp / check_new_file(path).name, path)


def write_atomic(path: PathLike, text: str, overwrite: bool = True, newline: Optional[str] = None) -> None:
    """Write a text file through a unique temp file and one rename (umask modes)."""
    with atomic_file(path, overwrite) as tmp, open(tmp, 'w', newline=newline) as f:
        f.write(text)
