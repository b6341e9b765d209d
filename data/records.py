"""RecordIO packs of aligned faces: writing, and reading with validation.

A pack is ``NAME.rec`` + ``NAME.idx``. Each record is MXNet's ``IRHeader(flag=2, label=[gender, age],
id, id2=0)`` followed by JPEG bytes; gender 0 = female, 1 = male, 9999 = unknown. Packs are written with
``mx.recordio.MXIndexedRecordIO`` (so MXNet reads them) and read here in pure Python, which lets every
record be checked once when the pack is opened and gives one-line ``DataError`` messages.

A pack may have a sidecar ``NAME.meta.csv`` (``key,source,race``: the image each record was made from and
its race code, empty when unknown), written by ``data.prepare``; the fairness report of ``eval.py`` groups
by its race. Packs without one work everywhere, only without race groups.
"""
import csv
import os
import struct

import cv2
import numpy as np

from agegender.config import UNKNOWN_GENDER
from agegender.errors import DataError, ImageError
from agegender.files import atomic_write, remove_stale_temporaries, temporary_path
from agegender.image import MAX_PIXELS, decode_image

JPEG_QUALITY = 95
MAX_LABEL_AGE = 120          # labels above MAX_AGE are allowed in packs; the iterator caps them at 100
RECORD_MAGIC = 0xCED7230A
_RECORD_HEAD = struct.Struct("<II")       # magic, lrec (29-bit length + 3-bit continuation flag)
_IR_HEADER = struct.Struct("<IfQQ")       # flag, label (unused when flag > 0), id, id2
_LABELS = struct.Struct("<2f")
_PROBE_SIZE = _RECORD_HEAD.size + _IR_HEADER.size + _LABELS.size
META_SUFFIX = ".meta.csv"
META_COLUMNS = ("key", "source", "race")


def pack_paths(path):
    """Return ``(rec_path, idx_path)`` for ``NAME``, ``NAME.rec`` or ``NAME.idx``."""
    stem = path[:-4] if path.endswith((".rec", ".idx")) else path
    return stem + ".rec", stem + ".idx"


def meta_path(path):
    """Path of the sidecar ``NAME.meta.csv`` of pack ``NAME`` (``NAME.rec``, ``NAME.idx``)."""
    return pack_paths(path)[0][:-4] + META_SUFFIX


def write_pack_meta(path, rows):
    """Write the sidecar of pack ``path`` atomically from ``(key, source, race or None)`` rows."""
    def write(tmp):
        # source names that are not UTF-8 (surrogate escapes) are written as their original bytes
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.writer(f)
            writer.writerow(META_COLUMNS)
            writer.writerows((key, source, "" if race is None else int(race)) for key, source, race in rows)
    atomic_write(meta_path(path), write, error_class=DataError)


def read_pack_meta(path, keys):
    """The sidecar of pack ``path`` as ``{"source": [...], "race": [int or None, ...]}`` in the order of
    ``keys``; None when the pack has none. DataError when it does not describe exactly those records."""
    target = meta_path(path)
    if not os.path.isfile(target):
        return None
    by_key = {}
    try:
        with open(target, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != META_COLUMNS:
                raise DataError(f"{target}: header is not {','.join(META_COLUMNS)}")
            for row in reader:
                try:
                    key = int(row["key"])
                    race = int(row["race"]) if row["race"] else None
                    if race is not None and race < 0:
                        raise ValueError
                except (TypeError, ValueError):
                    raise DataError(f"{target}: line {reader.line_num}: key {row['key']!r} / race {row['race']!r} "
                                    f"is not a whole number >= 0") from None
                if key in by_key:
                    raise DataError(f"{target}: line {reader.line_num} repeats key {key}")
                by_key[key] = (row["source"], race)
    except UnicodeDecodeError:
        raise DataError(f"{target}: not a UTF-8 text CSV") from None
    missing = [key for key in keys if key not in by_key]
    if missing or len(by_key) != len(keys):
        raise DataError(f"{target}: lists {len(by_key)} records, the pack has {len(keys)}"
                        + (f" (key {missing[0]} missing)" if missing else "") + "; sidecar does not match the pack")
    return {"source": [by_key[key][0] for key in keys], "race": [by_key[key][1] for key in keys]}


def encode_face(image_bgr, quality=JPEG_QUALITY):
    """JPEG-encode an H x W x 3 uint8 BGR image (quality 95 by default)."""
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def check_label(gender, age, where):
    """Validate one (gender, age) label; raise DataError naming ``where`` otherwise."""
    if gender not in (0, 1, UNKNOWN_GENDER):
        raise DataError(f"{where}: gender {gender!r} is not 0 (female), 1 (male) or {UNKNOWN_GENDER} (unknown)")
    if not (0 <= age <= MAX_LABEL_AGE) or age != int(age):
        raise DataError(f"{where}: age {age!r} is not a whole number of years in 0..{MAX_LABEL_AGE}")


class PackWriter:
    """Write a pack atomically: records go to temporary files renamed onto ``NAME.rec/.idx`` by close().

    A ``NAME.rec``/``.idx`` that is a folder, FIFO or device is refused (DataError), never replaced.

    ``write(jpeg_bytes, gender, age)`` stores one record with id = running index (0, 1, 2, ...); when
    any record was given a ``source`` or ``race``, close() also writes the sidecar ``NAME.meta.csv`` (and
    otherwise removes a stale one). Used as a context manager; an exception inside the ``with`` block
    removes the temporary files.
    """

    def __init__(self, path):
        import mxnet as mx
        self.rec_path, self.idx_path = pack_paths(path)
        folder = os.path.dirname(os.path.abspath(self.rec_path))
        for target in (self.rec_path, self.idx_path):
            if os.path.lexists(target) and not os.path.isfile(target):
                raise DataError(f"{target}: is not a regular file (a folder, FIFO or device); a pack is never "
                                f"written over it")
        try:
            os.makedirs(folder, exist_ok=True)
            for target in (self.rec_path, self.idx_path):
                remove_stale_temporaries(target)
            self._tmp_rec, self._tmp_idx = temporary_path(self.rec_path), temporary_path(self.idx_path)
        except OSError as exc:
            raise DataError(f"{self.rec_path}: cannot be written ({exc.strerror or exc})") from None
        self._record = mx.recordio.MXIndexedRecordIO(self._tmp_idx, self._tmp_rec, "w")
        self._mx = mx
        self._meta = []
        self.count = 0

    def write(self, jpeg_bytes, gender, age, source="", race=None):
        """Append one face (already JPEG-encoded) with label [gender, age] and, for the sidecar, the
        image it came from and its race code; returns its id."""
        check_label(gender, age, self.rec_path)
        header = self._mx.recordio.IRHeader(0, [float(gender), float(age)], self.count, 0)
        self._record.write_idx(self.count, self._mx.recordio.pack(header, jpeg_bytes))
        self._meta.append((self.count, source, race))
        self.count += 1
        return self.count - 1

    def close(self):
        """Finish the pack and move it to its final name."""
        if self._record is None:
            return
        self._record.close()
        self._record = None
        try:
            for tmp, target in ((self._tmp_rec, self.rec_path), (self._tmp_idx, self.idx_path)):
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
            os.replace(self._tmp_rec, self.rec_path)
            os.replace(self._tmp_idx, self.idx_path)
        except OSError as exc:
            self.abort()
            raise DataError(f"{self.rec_path}: cannot be written ({exc.strerror or exc})") from None
        if any(source or race is not None for _, source, race in self._meta):
            write_pack_meta(self.rec_path, self._meta)
        elif os.path.exists(meta_path(self.rec_path)):
            os.remove(meta_path(self.rec_path))

    def abort(self):
        """Drop the temporary files without touching an existing pack of the same name."""
        if self._record is not None:
            self._record.close()
            self._record = None
        for path in (self._tmp_rec, self._tmp_idx):
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class PackReader:
    """Random access to a pack, validated when opened.

    Opening reads the index and every record's header: a missing or malformed ``.idx``, an offset
    outside ``.rec``, a truncated record or a label that is not two values raises DataError naming
    the file and the record key. ``keys`` (file order) and ``labels`` (N x 2 float32, as stored:
    [gender, age] unless the pack is in another order) are available without decoding any image.
    Not thread-safe: give each thread its own reader (``reopen()``).
    """

    def __init__(self, path, check_labels=True):
        self.rec_path, self.idx_path = pack_paths(path)
        for p in (self.rec_path, self.idx_path):
            if not os.path.isfile(p):
                raise DataError(f"{p}: file not found")
        self.size = os.path.getsize(self.rec_path)
        self._file = open(self.rec_path, "rb")
        self._offsets = self._read_index()
        self.keys = sorted(self._offsets, key=self._offsets.get)
        self.labels = np.zeros((len(self.keys), 2), np.float32)
        self.ids = np.zeros(len(self.keys), np.uint64)    # IRHeader ids are unsigned 64-bit
        for row, key in enumerate(self.keys):
            self.labels[row], self.ids[row] = self._probe(key)
        if check_labels:
            for row, key in enumerate(self.keys):
                gender, age = self.labels[row]
                check_label(float(gender), float(age), f"{self.rec_path}: record {key}")

    def __len__(self):
        return len(self.keys)

    def _read_index(self):
        offsets = {}
        with open(self.idx_path, "r", encoding="ascii", errors="replace") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.split("\t")
                try:
                    key, offset = int(fields[0]), int(fields[1])
                    if len(fields) != 2:
                        raise ValueError
                except (ValueError, IndexError):
                    raise DataError(f"{self.idx_path}: line {line_no} is not '<key>\\t<offset>'") from None
                if key in offsets:
                    raise DataError(f"{self.idx_path}: line {line_no} repeats key {key}")
                if not 0 <= offset <= self.size - _RECORD_HEAD.size or offset % 4:
                    raise DataError(f"{self.idx_path}: line {line_no}: offset {offset} does not point into "
                                    f"{self.rec_path} ({self.size} bytes); index does not match the pack")
                offsets[key] = offset
        if not offsets:
            raise DataError(f"{self.idx_path}: empty index")
        return offsets

    def _probe(self, key):
        offset = self._offsets[key]
        self._file.seek(offset)
        head = self._file.read(_PROBE_SIZE)
        where = f"{self.rec_path}: record {key} at byte {offset}"
        magic, lrec = _RECORD_HEAD.unpack_from(head.ljust(_RECORD_HEAD.size, b"\0"))
        if magic != RECORD_MAGIC:
            raise DataError(f"{where}: no record starts there; index does not match the pack")
        length, cflag = lrec & ((1 << 29) - 1), lrec >> 29
        if cflag not in (0, 1) or offset + _RECORD_HEAD.size + length > self.size:
            raise DataError(f"{where}: truncated record ({length} bytes announced, file ends first)"
                            if cflag in (0, 1) else f"{where}: starts in the middle of a split record")
        if cflag == 1:      # payload split around a copy of the magic number: read it whole
            head = head[:_RECORD_HEAD.size] + self.read_payload(key)
        if len(head) < _PROBE_SIZE or cflag == 0 and length < _IR_HEADER.size + _LABELS.size:
            raise DataError(f"{where}: too short to hold a header and a 2-value label")
        flag, _, record_id, _ = _IR_HEADER.unpack_from(head, _RECORD_HEAD.size)
        if flag != 2:
            raise DataError(f"{where}: label has {max(flag, 1)} value(s), expected 2 ([gender, age])")
        return _LABELS.unpack_from(head, _RECORD_HEAD.size + _IR_HEADER.size), record_id

    def read_payload(self, key):
        """Return the raw payload (IRHeader + labels + JPEG) of record ``key``."""
        offset = self._offsets.get(key)
        if offset is None:
            raise KeyError(key)
        self._file.seek(offset)
        parts = []
        while True:
            head = self._file.read(_RECORD_HEAD.size)
            if len(head) < _RECORD_HEAD.size:
                raise DataError(f"{self.rec_path}: record {key} is truncated")
            magic, lrec = _RECORD_HEAD.unpack(head)
            length, cflag = lrec & ((1 << 29) - 1), lrec >> 29
            if magic != RECORD_MAGIC:
                raise DataError(f"{self.rec_path}: record {key}: bad magic, file is corrupt")
            data = self._file.read(length)
            if len(data) < length:
                raise DataError(f"{self.rec_path}: record {key} is truncated")
            parts.append(data)
            if cflag in (0, 3):
                break
            # dmlc splits a payload at every aligned copy of the magic number and drops that copy.
            self._file.seek((4 - length % 4) % 4, os.SEEK_CUR)
        return struct.pack("<I", RECORD_MAGIC).join(parts)

    def read(self, key):
        """Return ``(label, jpeg_bytes)`` of record ``key``; label is a 2-float array."""
        payload = self.read_payload(key)
        start = _IR_HEADER.size + _LABELS.size
        return np.array(_LABELS.unpack_from(payload, _IR_HEADER.size), np.float32), payload[start:]

    def read_meta(self):
        """The pack's sidecar in ``keys`` order (see ``read_pack_meta``), or None without one."""
        return read_pack_meta(self.rec_path, self.keys)

    def read_image(self, key):
        """Return ``(label, image)`` with the image decoded as H x W x 3 uint8 BGR."""
        label, jpeg = self.read(key)
        try:
            image, scale = decode_image(jpeg, f"{self.rec_path}: record {key}")
        except ImageError as exc:
            raise DataError(str(exc)) from None
        if scale != 1.0:
            raise DataError(f"{self.rec_path}: record {key}: image of more than {MAX_PIXELS} pixels")
        return label, image

    def reopen(self):
        """Another reader of the same pack sharing the validated index (for another thread)."""
        clone = object.__new__(PackReader)
        clone.__dict__.update(self.__dict__)
        clone._file = open(self.rec_path, "rb")
        return clone

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
