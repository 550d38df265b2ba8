"""Image grids as PNG files, so a person can look at what the policy draws."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def image_grid(images: Tensor, columns: int, *, scale: int = 1, pad: int = 1) -> Tensor:
    """Tile ``images[N, H, W]`` (grey) or ``[N, C, H, W]`` (C = 1 or 3) with values in [−1, 1] into one
    ``[H', W', 3]`` uint8 array, ``columns`` per row, each pixel repeated ``scale`` times, ``pad`` pixels of
    mid-grey between tiles."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    images = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    count, _, height, width = images.shape
    rows = (count + columns - 1) // columns
    grid = torch.full((3, rows * (height + pad) + pad, columns * (width + pad) + pad), 128, dtype=torch.uint8)
    for index in range(count):
        top, left = pad + (index // columns) * (height + pad), pad + (index % columns) * (width + pad)
        grid[:, top : top + height, left : left + width] = images[index]
    return grid.permute(1, 2, 0)


def save_image_grid(images: Tensor, path: str | Path, columns: int, *, scale: int = 8) -> Path:
    """Write :func:`image_grid` to ``path`` (PNG); parent directories are created."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, columns, scale=scale).numpy()).save(path)
    return path
