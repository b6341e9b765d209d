"""Fuzzing the two readers of untrusted bytes: RecordIO packs (data.records) and image files (agegender.image).

Every input must give either a valid result or the module's one-line error (DataError / ImageError):
never another exception type, a crash or a hang. Bounded by max_examples so the file stays well under a
minute; under CI=true the examples are derandomized so a failure reproduces.
"""
import os
import struct
import tempfile
import zlib

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agegender.errors import DataError, ImageError
from agegender.image import read_image
from data.records import RECORD_MAGIC, PackReader, PackWriter, encode_face

FUZZ = settings(max_examples=100, deadline=None, database=None, derandomize=os.environ.get("CI") == "true",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def tiny_jpeg(seed=0):
    rng = np.random.RandomState(seed)
    return encode_face(rng.randint(0, 256, (8, 8, 3)).astype(np.uint8))


def valid_pack_bytes():
    """``(rec, idx)`` bytes of a 3-record pack written by PackWriter."""
    with tempfile.TemporaryDirectory() as folder:
        with PackWriter(os.path.join(folder, "p")) as writer:
            for i, (gender, age) in enumerate([(0, 5), (1, 40), (9999, 99)]):
                writer.write(tiny_jpeg(i), gender, age)
        with open(os.path.join(folder, "p.rec"), "rb") as f, open(os.path.join(folder, "p.idx"), "rb") as g:
            return f.read(), g.read()


VALID_REC, VALID_IDX = valid_pack_bytes()


def open_and_read_all(rec, idx, check_labels):
    """Open a pack from bytes and decode every record; returns the number read or raises DataError."""
    with tempfile.TemporaryDirectory() as folder:
        prefix = os.path.join(folder, "p")
        with open(prefix + ".rec", "wb") as f:
            f.write(rec)
        with open(prefix + ".idx", "wb") as f:
            f.write(idx)
        with PackReader(prefix, check_labels=check_labels) as reader:
            assert reader.labels.shape == (len(reader), 2) and len(reader.ids) == len(reader)
            for key in reader.keys:
                label, image = reader.read_image(key)
                assert label.shape == (2,) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            return len(reader)


def mutate(data, edits, cut):
    """Overwrite bytes at (position, value) edits, then keep only the first ``cut`` fraction."""
    data = bytearray(data)
    for position, value in edits:
        if data:
            data[position % len(data)] = value
    return bytes(data[: int(round(len(data) * cut))])


edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)
cuts = st.sampled_from([1.0, 1.0, 1.0, 0.9, 0.5, 0.1, 0.0])


@FUZZ
@given(rec_edits=edits, rec_cut=cuts, idx_edits=edits, idx_cut=cuts, check_labels=st.booleans())
def test_pack_reader_on_mutated_packs(rec_edits, rec_cut, idx_edits, idx_cut, check_labels):
    rec, idx = mutate(VALID_REC, rec_edits, rec_cut), mutate(VALID_IDX, idx_edits, idx_cut)
    try:
        count = open_and_read_all(rec, idx, check_labels)
    except DataError as exc:
        assert "p.rec" in str(exc) or "p.idx" in str(exc)
        assert "\n" not in str(exc)
    else:
        assert count >= 1


@st.composite
def crafted_record(draw):
    """One record, well formed except for at most one drawn fault, aligned to 4 bytes as dmlc writes it."""
    fault = draw(st.sampled_from(["none"] * 4 + ["magic", "cflag", "flag", "labels", "length", "cut"]))
    magic = draw(st.sampled_from([0, 0xFFFFFFFF, RECORD_MAGIC + 1])) if fault == "magic" else RECORD_MAGIC
    cflag = draw(st.integers(1, 7)) if fault == "cflag" else 0
    flag = draw(st.sampled_from([0, 1, 3, 0xFFFFFFFF])) if fault == "flag" else 2
    if fault == "labels":
        labels = draw(st.tuples(*[st.floats(width=32, allow_nan=True, allow_infinity=True)] * 2))
    else:
        labels = draw(st.sampled_from([(0.0, 5.0), (1.0, 120.0), (9999.0, 0.0)]))
    record_id = draw(st.integers(0, 2 ** 64 - 1))
    image = draw(st.one_of(st.just(tiny_jpeg()), st.binary(max_size=64), st.just(b"")))
    payload = struct.pack("<IfQQ", flag, 0.0, record_id, 0) + struct.pack("<2f", *labels) + image
    if fault == "cut":
        payload = payload[: draw(st.integers(0, len(payload)))]
    declared = len(payload) + (draw(st.sampled_from([-1, 1, 1000, 2 ** 28])) if fault == "length" else 0)
    body = struct.pack("<II", magic, (cflag << 29) | (max(declared, 0) & ((1 << 29) - 1))) + payload
    return body + b"\0" * (-len(body) % 4)


@FUZZ
@given(records=st.lists(crafted_record(), min_size=1, max_size=4),
       keys=st.lists(st.integers(-3, 2 ** 70), min_size=1, max_size=4),
       offset_shift=st.sampled_from([0] * 6 + [4, -4, 1, 10 ** 9]), extra_line=st.sampled_from(["", "", "", "x\t1\n", "\n"]),
       check_labels=st.booleans())
def test_pack_reader_on_crafted_headers(records, keys, offset_shift, extra_line, check_labels):
    offsets, position = [], 0
    for record in records:
        offsets.append(position)
        position += len(record)
    lines = "".join(f"{key}\t{offset + (offset_shift if i == 0 else 0)}\n"
                    for i, (key, offset) in enumerate(zip(keys, offsets)))
    try:
        open_and_read_all(b"".join(records), (lines + extra_line).encode(), check_labels)
    except DataError as exc:
        assert "\n" not in str(exc)


def png_bytes(width, height, bit_depth=8, color_type=0, rows=None):
    """A PNG with the given IHDR; ``rows`` (raw filtered scanlines) default to zeros."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if rows is None:
        rows = bytes(min(height, 64) * (1 + width))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def encoded(ext, shape, seed=0):
    image = np.random.RandomState(seed).randint(0, 256, shape).astype(np.uint8)
    return cv2.imencode(ext, image)[1].tobytes()


SEED_FILES = [encoded(".jpg", (9, 7, 3)), encoded(".png", (5, 6, 3)), encoded(".png", (4, 4)),
              encoded(".bmp", (3, 5, 3)), encoded(".webp", (6, 6, 3)), encoded(".tiff", (4, 3, 3)),
              png_bytes(40, 30)]


def check_read(data, max_pixels):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fuzz.jpg")
        with open(path, "wb") as f:
            f.write(data)
        try:
            image, scale = read_image(path, max_pixels=max_pixels)
        except ImageError as exc:
            assert str(exc).startswith(path) and "\n" not in str(exc)
            return
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and scale >= 1.0
        assert image.shape[0] * image.shape[1] <= max_pixels


@FUZZ
@given(seed=st.sampled_from(SEED_FILES), edits=edits, cut=cuts, max_pixels=st.sampled_from([10, 400, 10_000]))
def test_read_image_on_mutated_files(seed, edits, cut, max_pixels):
    check_read(mutate(seed, edits, cut), max_pixels)


@FUZZ
@given(width=st.integers(0, 2 ** 32 - 1), height=st.integers(0, 2 ** 32 - 1),
       bit_depth=st.sampled_from([1, 8, 16, 3]), color_type=st.sampled_from([0, 2, 6, 5]))
def test_read_image_on_png_headers_announcing_any_size(width, height, bit_depth, color_type):
    check_read(png_bytes(width, height, bit_depth, color_type, rows=bytes(256)), 10_000)


@FUZZ
@given(width=st.integers(0, 65535), height=st.integers(0, 65535), sof=st.sampled_from([0xC0, 0xC1, 0xC2, 0xC3, 0xC9]),
       prefix=st.binary(max_size=40))
def test_read_image_on_jpeg_headers_announcing_any_size(width, height, sof, prefix):
    frame = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
    data = b"\xff\xd8" + prefix + b"\xff" + bytes([sof]) + struct.pack(">H", len(frame) + 2) + frame + bytes(64)
    check_read(data, 10_000)


@FUZZ
@given(data=st.binary(max_size=300))
def test_read_image_on_random_bytes(data):
    check_read(data, 10_000)
