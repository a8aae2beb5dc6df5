"""Source images of variations and upscales: decoded and checked without torch."""

from __future__ import annotations

from PIL import Image

from backend.errors import JobError

# Largest img2img source accepted, in pixels (a 4096 x 4096 image).
MAX_SOURCE_PIXELS = 4096 * 4096


MIN_SOURCE_SIDE = 8


def load_source_image(data: bytes, max_pixels: int = MAX_SOURCE_PIXELS) -> Image.Image:
    """Decode an img2img source; JobError if it is not an image or is too large."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as probe:
            size = probe.size
            if size[0] * size[1] > max_pixels:
                raise JobError(f"source image {size[0]}x{size[1]} exceeds {max_pixels} pixels")
            image = probe.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise JobError(f"source is not a readable image: {exc}") from exc
    check_source_image(image, max_pixels)
    return image


def check_source_image(image: Image.Image, max_pixels: int = MAX_SOURCE_PIXELS) -> None:
    """JobError if a side is under ``MIN_SOURCE_SIDE`` or the image exceeds ``max_pixels``."""
    width, height = image.size
    if min(width, height) < MIN_SOURCE_SIDE:
        raise JobError(f"source image {width}x{height} is smaller than {MIN_SOURCE_SIDE} px")
    if width * height > max_pixels:
        raise JobError(f"source image {width}x{height} exceeds {max_pixels} pixels")
