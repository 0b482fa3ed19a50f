"""Small helpers shared across the package: file hashing, eval mode, atomic writes."""
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from torch import nn

PathLike = Union[str, os.PathLike]


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


@contextmanager
def atomic_folder(output: PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a new sibling temp folder to write into; on success it becomes `output` in one rename, on failure
    nothing is left. `output` must be new or empty, unless `replace` (an incomplete folder left by hand)."""
    output = Path(output) if replace else check_new_folder(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{output.name}.', suffix='.incomplete', dir=output.parent))
    try:
        yield tmp
        for path in [tmp, *tmp.rglob('*')]:  # mkdtemp (and some writers' temp files) are owner-only: use the umask
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
        shutil.rmtree(output, ignore_errors=True) if replace else output.exists() and output.rmdir()
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: PathLike, text: str) -> None:
    """Write a text file through a temp file and one rename."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)
