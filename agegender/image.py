"""Reading images from disk as BGR uint8 arrays, with one-line errors for bad files.

Memory is bounded before any pixel is decoded: the header gives the size, images above ``MAX_PIXELS``
are decoded at 1/2, 1/4 or 1/8 size when the format allows it without a full-size buffer (sequential
JPEG) and refused otherwise, and files above ``MAX_FILE_BYTES`` are refused unread.
"""
import io
import os
import struct
from typing import NamedTuple

import cv2
import numpy as np

from .errors import ImageError, ImageTooLargeError
from .files import quiet_native_stderr

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm")
MAX_PIXELS = 60_000_000             # decoded at full size up to this many pixels
MAX_FILE_BYTES = 256 * 1024 * 1024  # larger files are refused without reading them
REDUCTIONS = ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers; libjpeg scales baseline/extended sequential Huffman JPEGs while decoding, but
# progressive, lossless and arithmetic-coded ones keep a full-size coefficient buffer.
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SEQUENTIAL = {0xC0, 0xC1}
_JPEG_STANDALONE = set(range(0xD0, 0xD9)) | {0x01}
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the operation that shows the stored pixels upright
_ORIENT = {
    1: lambda im: im,
    2: lambda im: cv2.flip(im, 1),
    3: lambda im: cv2.rotate(im, cv2.ROTATE_180),
    4: lambda im: cv2.flip(im, 0),
    5: lambda im: cv2.transpose(im),
    6: lambda im: cv2.rotate(im, cv2.ROTATE_90_CLOCKWISE),
    7: lambda im: cv2.rotate(cv2.transpose(im), cv2.ROTATE_180),
    8: lambda im: cv2.rotate(im, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


class ImageHeader(NamedTuple):
    """What the file header says: format name, stored width and height, whether a reduced decode is cheap,
    (JPEG) the byte offset after the frame header, where the end-of-image marker must follow, and (WebP)
    the EXIF orientation."""
    format: str
    width: int
    height: int
    reducible: bool
    frame_end: int = 0
    orientation: int = 1        # EXIF orientation that OpenCV does not apply itself (WebP), 1 = upright


def read_header(f, where):
    """Return the ImageHeader of the binary file object ``f`` (read from its start) without decoding
    pixels, or None if no known header is found.

    JPEG and PNG headers are parsed here (they can announce any size); other formats go through PIL.
    Raises ImageError naming ``where`` if PIL refuses the header as a decompression bomb.
    """
    f.seek(0)
    head = f.read(24)
    if len(head) == 24 and head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return ImageHeader("PNG", width, height, False)
    if head.startswith(b"\xff\xd8"):
        f.seek(2)
        return _jpeg_header(f)
    from PIL import Image
    f.seek(0)
    try:
        with Image.open(f) as im:
            orientation = 1
            if im.format == "WEBP":     # OpenCV honours EXIF orientation in JPEG, PNG and TIFF, not WebP
                try:
                    orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                except Exception:  # noqa: BLE001 - unreadable EXIF: show the pixels as stored
                    orientation = 1
            return ImageHeader(im.format or "?", im.size[0], im.size[1], False,
                               orientation=orientation if orientation in _ORIENT else 1)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{where}: refused, too large to decode ({str(exc).split(',')[0]})") from None
    except Exception:  # noqa: BLE001 - any header PIL cannot parse means "not a known image"
        return None


def _jpeg_header(f, max_segments=4096, max_garbage=65536):
    """Walk the JPEG marker segments up to the start-of-frame; None if the file ends first.

    Real files have a few dozen segments before the frame header; the bounds keep a crafted file
    from making this loop run for long.
    """
    garbage = 0
    for _ in range(max_segments):
        byte = f.read(1)
        while byte and byte != b"\xff" and garbage < max_garbage:
            garbage += 1               # stray bytes between segments, as libjpeg tolerates
            byte = f.read(1)
        if byte != b"\xff":
            return None
        marker = f.read(1)
        while marker == b"\xff" and garbage < max_garbage:
            garbage += 1               # fill bytes
            marker = f.read(1)
        if marker in (b"", b"\xff"):
            return None
        code = marker[0]
        if code in _JPEG_STANDALONE or code == 0x00:
            continue
        if code in (0xD9, 0xDA):       # end of image / start of scan before any frame header
            return None
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack(">H", length_bytes)[0]
        if code in _JPEG_SOF:
            frame = f.read(5)
            if len(frame) < 5:
                return None
            _, height, width = struct.unpack(">BHH", frame)
            return ImageHeader("JPEG", width, height, code in _JPEG_SEQUENTIAL, f.tell())
        if length < 2:
            return None
        f.seek(length - 2, os.SEEK_CUR)
    return None


def _reduction_for(header, max_pixels, path):
    """``(imread flag, factor)`` that keeps the decoded image within ``max_pixels``, or ImageError."""
    pixels = header.width * header.height
    if pixels <= max_pixels:
        return cv2.IMREAD_COLOR, 1
    size = f"{header.width}x{header.height} {header.format}"
    if not header.reducible:
        raise ImageTooLargeError(f"{path}: {size} image refused, more than {max_pixels} pixels "
                         f"(only sequential JPEGs are decoded at reduced size)")
    for factor, flag in REDUCTIONS:
        if pixels / factor ** 2 <= max_pixels:
            return flag, factor
    raise ImageTooLargeError(f"{path}: {size} image refused, more than {max_pixels} pixels even at 1/8 size")


def _decode(data, header, where, max_pixels):
    """Decode the bytes ``data`` whose header was read; returns ``(image, scale)``."""
    if header is None:
        raise ImageError(f"{where}: not a readable image (unknown format, truncated or corrupt)")
    flags, factor = _reduction_for(header, max_pixels, where)
    if header.format == "JPEG" and data.rfind(b"\xff\xd9", header.frame_end) < 0:
        raise ImageError(f"{where}: truncated JPEG (the end-of-image marker is missing)")
    try:
        with quiet_native_stderr():     # libpng/libjpeg warnings; the error below says what went wrong
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        reason = str(exc).strip().splitlines()[-1]
        if "Failed to allocate" in reason or "Insufficient memory" in reason:
            raise ImageError(f"{where}: out of memory decoding its {header.width}x{header.height} pixels") from None
        raise ImageError(f"{where}: not a readable image ({reason})") from None
    except MemoryError:
        raise ImageError(f"{where}: out of memory decoding its {header.width}x{header.height} pixels") from None
    if image is None:
        raise ImageError(f"{where}: not a readable image (unknown format, truncated or corrupt)")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"{where}: unsupported image layout {image.shape} {image.dtype}")
    if header.orientation != 1:
        image = _ORIENT[header.orientation](image)
    scale = 1.0
    if factor != 1:
        # EXIF orientation may have swapped the sides, so compare the longer ones.
        scale = max(header.width, header.height) / max(image.shape[:2])
    return image, scale


def decode_image(data, where, max_pixels=MAX_PIXELS):
    """Decode encoded image bytes like :func:`read_image` does a file; errors name ``where``."""
    if not data:
        raise ImageError(f"{where}: no image bytes")
    return _decode(data, read_header(io.BytesIO(data), where), where, max_pixels)


def read_image(path, max_pixels=MAX_PIXELS, max_bytes=MAX_FILE_BYTES):
    """Read ``path`` as an H x W x 3 uint8 BGR array; returns ``(image, scale)``.

    Grey, RGBA and 16-bit images are converted; EXIF orientation is honoured. Large sequential JPEGs
    are decoded at 1/2, 1/4 or 1/8 size (``scale`` multiplies coordinates in the returned image to get
    coordinates in the file's image, 1.0 otherwise); other images above ``max_pixels`` and files above
    ``max_bytes`` raise ImageError, as does anything that is not a readable image.
    """
    if not os.path.exists(path):
        raise ImageError(f"{path}: file not found")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise ImageError(f"{path}: empty file")
        if size > max_bytes:
            raise ImageTooLargeError(f"{path}: file of {size} bytes refused (limit {max_bytes} bytes)")
        with open(path, "rb") as f:
            header = read_header(f, path)
            if header is not None:
                _reduction_for(header, max_pixels, path)      # refuse before reading the pixels
            f.seek(0)
            data = f.read()
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return _decode(data, header, path, max_pixels)


def as_bgr_uint8(image):
    """Return an in-memory image as H x W x 3 uint8 BGR: grey is replicated, BGRA drops alpha, uint16 is
    scaled to 8 bits. Raises ImageError for other layouts and dtypes (what every detector accepts)."""
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"a detector needs a uint8 (or uint16) image, got dtype {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ImageError(f"a detector needs an H x W, H x W x 3 (BGR) or H x W x 4 (BGRA) image, got shape {image.shape}")
