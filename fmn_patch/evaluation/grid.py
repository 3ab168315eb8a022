"""Labelled image grids: the quickest way for a person to see what a patch does."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import torch
from PIL import Image, ImageDraw, ImageFont

from ..errors import FmnPatchError
from ..files import atomic_write, check_output

#: Image files a grid can be written to, by suffix.
IMAGE_FORMATS: Final = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
LABEL_CHARS: Final = (
    48  # longer row and column labels are cut: a 10,000-character prompt must not make a 60k px grid
)


def check_image_output(path: str | os.PathLike[str], *, overwrite: bool, what: str = "--grid") -> Path:
    """Refuse, before anything is rendered, an image path that cannot be written (see ``files.check_output``)."""
    return check_output(path, overwrite=overwrite, suffixes=tuple(IMAGE_FORMATS), what=what)


def save_image(image: Image.Image, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write an image atomically in the format its suffix names; an existing file is replaced only if
    ``overwrite`` (and stays intact when the write fails, e.g. on a full disk)."""
    path = check_image_output(path, overwrite=overwrite)
    image_format = IMAGE_FORMATS[path.suffix.lower()]
    return atomic_write(path, lambda tmp: image.save(tmp, format=image_format), overwrite=overwrite)


def _label(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 3] + "..."


def labelled_grid(
    rows: Sequence[Sequence[Image.Image]],
    *,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    scale: int = 1,
    pad: int = 4,
) -> Image.Image:
    """Images in rows x columns on a white canvas, with optional row labels (left) and column labels (top).

    ``scale`` enlarges each cell with nearest-neighbour sampling, so tiny (32 px) images stay legible.
    """
    if not rows or not rows[0]:
        raise FmnPatchError("a grid needs at least one image")
    row_labels, col_labels = [_label(t) for t in row_labels], [_label(t) for t in col_labels]
    w, h = rows[0][0].size
    w, h = w * scale, h * scale
    font = ImageFont.load_default()
    label_w = max((int(font.getlength(s)) for s in row_labels), default=0) + (2 * pad if row_labels else 0)
    label_h = 14 + pad if col_labels else 0
    ncols = max(len(r) for r in rows)
    canvas = Image.new(
        "RGB", (label_w + ncols * (w + pad) + pad, label_h + len(rows) * (h + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(col_labels):
        draw.text((label_w + pad + j * (w + pad), pad // 2), text, fill="black", font=font)
    for i, row in enumerate(rows):
        y = label_h + pad + i * (h + pad)
        if i < len(row_labels):
            draw.text((pad, y + h // 2 - 6), row_labels[i], fill="black", font=font)
        for j, image in enumerate(row):
            cell = image.convert("RGB").resize((w, h), Image.Resampling.NEAREST)
            canvas.paste(cell, (label_w + pad + j * (w + pad), y))
    return canvas


def image_grid(
    columns: dict[str, torch.Tensor], rows: Sequence[str], path: str | Path | None = None, cell: int = 96
) -> Image.Image:
    """A labelled grid: one row per concept, one column per model; ``columns[model]`` is (rows, 3, H, W)."""
    for model, images in columns.items():
        if len(images) != len(rows):
            raise FmnPatchError(
                f"column {model!r} has {len(images)} images for {len(rows)} rows; give one per row"
            )
    tiles = {model: [to_pil(img) for img in images] for model, images in columns.items()}
    scale = max(1, cell // max(1, next(iter(tiles.values()))[0].size[0])) if rows else 1
    grid = labelled_grid(
        [[tiles[m][i] for m in columns] for i in range(len(rows))],
        row_labels=list(rows),
        col_labels=list(columns),
        scale=scale,
    )
    if path is not None:
        save_image(grid, path, overwrite=True)
    return grid


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] as a PIL image."""
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return Image.fromarray(array)
