"""Small helpers shared by the command-line modules."""
import hashlib
import os
from typing import Union


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()
