"""Labelled image lists for data.prepare: UTKFace folders, CSV files, IMDB-WIKI .mat files, RecordIO packs.

Every reader returns ``(items, rejected)``: ``items`` is a list of Item in a fixed order, ``rejected`` a
list of ``(path, reason)`` for entries dropped before any image is opened (bad names, .mat cleaning).
Labels follow the project convention: gender 0 = female, 1 = male, 9999 = unknown; age in years.
"""
import csv
import datetime
import os
import re
from typing import NamedTuple, Optional

import numpy as np

from agegender.config import UNKNOWN_GENDER
from agegender.errors import DataError
from agegender.image import IMAGE_EXTENSIONS

from .records import MAX_LABEL_AGE, PackReader, check_label

SPLITS = ("train", "val", "test")
UNASSIGNED = ""
PACK_KEY_SEPARATOR = "#"            # an item read from a pack is named "<pack.rec>#<key>"
UTKFACE_NAME = re.compile(r"^(\d+)_(\d+)_(?:(\d+)_)?")


class Item(NamedTuple):
    """One source image with its label, split ('' until assigned) and race code (None: unknown)."""
    source: str
    gender: int
    age: int
    split: str = UNASSIGNED
    race: Optional[int] = None


def assign_splits(items, val_fraction, test_fraction=0.0, seed=0):
    """Give items without a split a seeded random one: val_fraction to val, test_fraction to test."""
    free = [i for i, item in enumerate(items) if not item.split]
    order = np.random.RandomState(seed).permutation(len(free))
    n_val, n_test = int(round(val_fraction * len(free))), int(round(test_fraction * len(free)))
    splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (len(free) - n_val - n_test)
    items = list(items)
    for rank, pos in enumerate(order):
        items[free[pos]] = items[free[pos]]._replace(split=splits[rank])
    return items


def read_utkface_folder(folder):
    """Images under ``folder`` named ``age_gender_race_date.jpg[.chip.jpg]`` (UTKFace gender 0 = male;
    a few UTKFace names lack the race)."""
    items, rejected = [], []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(root, name)
            match = UTKFACE_NAME.match(name)
            if not match or int(match.group(2)) not in (0, 1) or int(match.group(1)) > MAX_LABEL_AGE:
                rejected.append((path, "file name is not age_gender_... with gender 0/1 and age 0..120"))
                continue
            age, utk_gender = int(match.group(1)), int(match.group(2))
            race = int(match.group(3)) if match.group(3) else None
            items.append(Item(path, 1 - utk_gender, age, race=race))
    if not items and not rejected:
        raise DataError(f"{folder}: no images found")
    return items, rejected


def read_csv(path):
    """A CSV with columns ``path,age,gender[,split][,race]`` (UTF-8, with or without a byte-order mark);
    paths relative to the CSV's folder.

    ``race`` is UTKFace's code (0 White, 1 Black, 2 Asian, 3 Indian, 4 Others); empty or negative: unknown.
    """
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, not a CSV file")
    if not os.path.isfile(path):
        raise DataError(f"{path}: CSV file not found")
    folder = os.path.dirname(os.path.abspath(path))
    items = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:     # -sig: a byte-order mark is skipped
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in ("path", "age", "gender") if c not in columns]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} (needs path,age,gender[,split])")
            has_split, has_race = "split" in columns, "race" in columns
            for row in reader:
                where = f"{path}: line {reader.line_num}"
                items.append(Item(os.path.join(folder, row["path"] or ""), *_parse_label(row, where),
                                  _parse_split(row, where) if has_split else UNASSIGNED,
                                  _parse_race(row, where) if has_race else None))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text CSV") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not items:
        raise DataError(f"{path}: no rows")
    return items, []


def _parse_label(row, where):
    if not row.get("path"):
        raise DataError(f"{where}: empty path")
    try:
        age, gender = float(row["age"]), float(row["gender"])
    except (TypeError, ValueError):
        raise DataError(f"{where}: age {row['age']!r} / gender {row['gender']!r} is not a number") from None
    check_label(gender, age, where)
    return int(gender), int(age)


def _parse_split(row, where):
    split = (row.get("split") or "").strip()
    if split not in SPLITS:
        raise DataError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    return split


def _parse_race(row, where):
    text = (row.get("race") or "").strip()
    try:
        race = int(text) if text else -1
    except ValueError:
        raise DataError(f"{where}: race {text!r} is not a whole number") from None
    return race if race >= 0 else None


def matlab_datenum_year(datenum):
    """Calendar year of a MATLAB serial date number (day 1 = 1 January of year 0)."""
    return (datetime.date.fromordinal(int(datenum) - 366)).year


def read_imdb_wiki_mat(path, min_face_score=1.0):
    """IMDB-WIKI metadata (imdb.mat / wiki.mat), cleaned: one confident face, known gender, age 0..100.

    Image paths (``full_path``) are relative to the .mat's folder; age = photo_taken - year(dob).
    """
    import scipy.io
    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:   # scipy raises several types for non-.mat or truncated files
        raise DataError(f"{path}: cannot be read as a MATLAB .mat file ({exc})") from None
    keys = [k for k in mat if not k.startswith("__")]
    if len(keys) != 1:
        raise DataError(f"{path}: expected one struct (imdb or wiki), found {keys}")
    meta = mat[keys[0]]
    fields = ("dob", "photo_taken", "full_path", "gender", "face_score", "second_face_score")
    try:
        columns = {name: np.ravel(meta[name][0, 0]) for name in fields}
    except (ValueError, IndexError, TypeError):
        missing = [f for f in fields if f not in (meta.dtype.names or ())]
        raise DataError(f"{path}: struct '{keys[0]}' lacks field(s) {', '.join(missing) or fields}") from None
    count = len(columns["full_path"])
    if any(len(v) != count for v in columns.values()):
        raise DataError(f"{path}: fields of '{keys[0]}' have different lengths")
    folder = os.path.dirname(os.path.abspath(path))
    items, rejected = [], []
    for i in range(count):
        image_path = os.path.join(folder, str(np.ravel(columns["full_path"][i])[0]))
        gender, score = float(columns["gender"][i]), float(columns["face_score"][i])
        try:
            age = int(columns["photo_taken"][i]) - matlab_datenum_year(columns["dob"][i])
        except (ValueError, OverflowError):
            age = -1
        if not score >= min_face_score:      # also catches NaN and -inf (no face found)
            reason = f"face_score below {min_face_score}"
        elif not np.isnan(columns["second_face_score"][i]):
            reason = "second face in the picture"
        elif np.isnan(gender):
            reason = "unknown gender"
        elif not 0 <= age <= 100:
            reason = "age outside 0..100 or bad dob"
        else:
            items.append(Item(image_path, int(gender), age))
            continue
        rejected.append((image_path, reason))
    return items, rejected


def read_pack(path, age_first=False):
    """Records of a pack as items named ``<pack.rec>#<key>`` (race from its sidecar, if any); ``age_first``
    for [age, gender] labels."""
    reader = PackReader(path, check_labels=False)
    try:
        meta = reader.read_meta()
        races = meta["race"] if meta else [None] * len(reader.keys)
        items = []
        for key, label, race in zip(reader.keys, reader.labels, races):
            age, gender = (label[0], label[1]) if age_first else (label[1], label[0])
            where = f"{reader.rec_path}: record {key}"
            check_label(float(gender), float(age), where + (" (labels read as [age, gender])" if age_first else
                                                            " (labels read as [gender, age]; see --swap-labels)"))
            items.append(Item(f"{reader.rec_path}{PACK_KEY_SEPARATOR}{key}", int(gender), int(age), race=race))
    finally:
        reader.close()
    stem = os.path.splitext(os.path.basename(reader.rec_path))[0]
    if stem in SPLITS:
        items = [item._replace(split=stem) for item in items]
    return items, []


def young_items(pack_paths, max_age, age_first=False):
    """The under-``max_age`` records of other packs, as training items of unknown gender (the original's add_age_rec)."""
    items = []
    for path in pack_paths:
        for item in read_pack(path, age_first)[0]:
            if item.age < max_age:
                items.append(Item(item.source, UNKNOWN_GENDER, item.age, "train", item.race))
    return items


def read_source(path, min_face_score=1.0, age_first=False):
    """Dispatch on the source kind: folder, .csv, .mat or .rec."""
    if os.path.isdir(path):
        return read_utkface_folder(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: source not found")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        return read_csv(path)
    if ext == ".mat":
        return read_imdb_wiki_mat(path, min_face_score)
    if ext in (".rec", ".idx"):
        return read_pack(path, age_first)
    raise DataError(f"{path}: unknown source kind (expected a folder, .csv, .mat or .rec)")
