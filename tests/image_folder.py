"""A tiny generated ImageFolder (DIR/train/<class>/*.png, DIR/val/<class>/*.png) whose classes differ by colour."""
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = ((220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40), (200, 60, 210), (40, 210, 210))


def make_image_folder(root: Path, classes: int = 4, train: int = 8, val: int = 4, size: int = 32,
                      seed: int = 0) -> Path:
    """Write `train` and `val` images per class; each class is a noisy patch of its own colour."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', train), ('val', val)):
        for c in range(classes):
            folder = Path(root) / split / f'class_{c}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.normal(0, 30, (size, size, 3))
                image = np.clip(np.array(COLOURS[c % len(COLOURS)]) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f'{i}.png')
    return Path(root)
