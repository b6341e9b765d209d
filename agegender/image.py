"""Reading images from disk as BGR uint8 arrays, with one-line errors for bad files."""
import os

import cv2
import numpy as np

from .errors import ImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm")
# Images above this many pixels are decoded at a reduced size (JPEG/PNG/WebP) or refused.
MAX_PIXELS = 60_000_000


def image_size(path):
    """Return (width, height) from the file header without decoding the pixels, or None if unknown."""
    try:
        from PIL import Image
        with Image.open(path) as im:
            return im.size
    except Exception:  # any header PIL cannot read; the decoder below gives the real error
        return None


def read_image(path, max_pixels=MAX_PIXELS):
    """Read ``path`` as an H x W x 3 uint8 BGR array.

    Grey, RGBA and 16-bit images are converted; EXIF orientation is honoured. Images larger than
    ``max_pixels`` are decoded at 1/2, 1/4 or 1/8 size; returns ``(image, scale)`` where ``scale``
    multiplies coordinates in the returned image to get coordinates in the file's image.
    """
    if not os.path.exists(path):
        raise ImageError(f"{path}: file not found")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory, not an image")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path}: empty file")
    data = np.fromfile(path, dtype=np.uint8)
    flags, scale = cv2.IMREAD_COLOR, 1
    size = image_size(path)
    if size is not None and size[0] * size[1] > max_pixels:
        for factor, flag in ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
                             (8, cv2.IMREAD_REDUCED_COLOR_8)):
            if size[0] * size[1] / factor ** 2 <= max_pixels:
                flags, scale = flag, factor
                break
        else:
            raise ImageError(f"{path}: {size[0]}x{size[1]} pixels is too large (limit {max_pixels} pixels "
                             f"even at 1/8 size)")
    image = cv2.imdecode(data, flags)
    if image is None:
        raise ImageError(f"{path}: not a readable image (unknown format, truncated or corrupt)")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"{path}: unsupported image layout {image.shape} {image.dtype}")
    if scale != 1:
        scale = size[0] / image.shape[1]
    return image, scale
