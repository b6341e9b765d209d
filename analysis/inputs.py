"""Turning command-line inputs (files, folders, glob patterns, videos) into a stream of work items."""
import glob
import hashlib
import os
from dataclasses import dataclass

import cv2

from agegender.errors import ImageError, ImageTooLargeError
from agegender.files import quiet_native_stderr
from agegender.image import IMAGE_EXTENSIONS, MAX_PIXELS

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


@dataclass
class InputItem:
    """One input file: ``path`` as found, ``root`` the folder it was found under (for output names)."""
    path: str
    root: str = ""
    error: str = ""

    @property
    def is_video(self):
        return self.path.lower().endswith(VIDEO_EXTENSIONS)


def _is_media(path):
    return path.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)


def expand_inputs(specs):
    """Expand paths, folders (recursively, by extension) and glob patterns into InputItems.

    A spec that matches nothing, and a sub-folder that cannot be read, become items with ``error`` set, so
    batch jobs can report them and go on.
    """
    items = []
    for spec in specs:
        if os.path.isdir(spec):
            unreadable = []
            found = sorted(os.path.join(dirpath, name)
                           for dirpath, _, names in os.walk(spec, onerror=unreadable.append) for name in names
                           if _is_media(name))
            items.extend(InputItem(exc.filename or spec, error=f"{exc.filename or spec}: folder cannot be read "
                                                               f"({exc.strerror or exc}); its files are skipped")
                         for exc in unreadable)
            if not found and not unreadable:
                items.append(InputItem(spec, error=f"{spec}: folder holds no images or videos"))
            items.extend(InputItem(path, root=spec) for path in found)
        elif os.path.exists(spec):
            items.append(InputItem(spec))
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                items.append(InputItem(spec, error=f"{spec}: pattern matches no file"))
            items.extend(InputItem(path) for path in found)
        else:
            items.append(InputItem(spec, error=f"{spec}: file not found"))
    return items


def shard_key(item):
    """What decides an item's shard: its path below the folder it was found in, else the path as given,
    with ``/`` separators, so the same files given the same way land in the same shard on any machine."""
    rel = os.path.relpath(item.path, item.root) if item.root else os.path.normpath(item.path)
    return rel.replace(os.sep, "/")


def in_shard(item, index, count):
    """Whether ``item`` belongs to shard ``index`` of ``count`` (0 <= index < count) by a stable hash."""
    digest = hashlib.blake2b(shard_key(item).encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count == index


def video_fps(path, default=25.0):
    """Frames per second the video file announces (``default`` where it announces none)."""
    capture = cv2.VideoCapture(path)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    finally:
        capture.release()
    return fps if fps and fps > 0 and fps < 1000 else default


MAX_BAD_READS = 8       # consecutive failed frame reads after which a video is taken to have ended


def iter_video_frames(path, every=1, max_pixels=MAX_PIXELS):
    """Yield ``(frame_index, bgr_image)`` for every ``every``-th frame, decoding one frame at a time.

    Videos whose frames exceed ``max_pixels`` are refused before any frame is decoded (ImageTooLargeError).
    Frames that cannot be decoded are skipped; once the good frames have been yielded, ImageError says
    the video is corrupt or truncated if any were skipped or it holds fewer frames than its header says.
    """
    with quiet_native_stderr():         # FFmpeg's own messages; the errors below say what went wrong
        capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ImageError(f"{path}: cannot open as a video")
    try:
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        announced = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        if width * height > max_pixels:
            raise ImageTooLargeError(f"{path}: video of {width}x{height} frames refused, more than {max_pixels} "
                                     f"pixels per frame")
        index = failures = broken_stretches = 0
        first_broken = None
        while failures <= MAX_BAD_READS:
            with quiet_native_stderr():
                if index % every == 0:
                    ok, frame = capture.read()
                else:
                    ok, frame = capture.grab(), None
            if not ok:
                failures += 1
                continue
            if failures:                # failed reads followed by good frames: data missing in the middle
                broken_stretches += 1
                first_broken = index if first_broken is None else first_broken
                failures = 0
            if frame is not None:
                if frame.shape[0] * frame.shape[1] > max_pixels:
                    raise ImageTooLargeError(f"{path}: frame {index} of {frame.shape[1]}x{frame.shape[0]} pixels "
                                             f"refused, more than {max_pixels} pixels")
                yield index, frame
            index += 1
        if index == 0:
            raise ImageError(f"{path}: video holds no readable frame")
        truncated = announced and index < announced - max(1, announced // 100)
        if broken_stretches or truncated:
            where = f"undecodable data before frame {first_broken}" if broken_stretches else "it ends early"
            raise ImageError(f"{path}: video is corrupt or truncated ({where}; {index} of "
                             f"{announced or 'an unknown number of'} frames decoded, those were processed)")
    finally:
        capture.release()


def output_name(item, frame=None, suffix=".jpg"):
    """A relative output file name for an item that can never leave the output folder."""
    rel = os.path.relpath(item.path, item.root) if item.root else os.path.basename(item.path)
    parts = [p for p in os.path.normpath(rel).split(os.sep) if p not in ("", ".", "..")]
    stem = os.path.splitext(os.path.join(*parts) if parts else "image")[0]
    if frame is not None:
        stem += f"_f{frame:06d}"
    return stem + suffix
