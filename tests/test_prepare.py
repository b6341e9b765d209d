"""data.prepare on real UTKFace images with the original MTCNN weights: sources, alignment, resume, errors."""
import csv
import datetime
import os
import shutil
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

from agegender.align import face_template
from agegender.config import PROJECT_ROOT, UNKNOWN_GENDER
from agegender.errors import DataError
from data.prepare import WORK_DIR, Journal, prepare
from data.records import PackReader, encode_face
from data.sources import read_csv, read_imdb_wiki_mat

N_IMAGES = 6


@pytest.fixture(scope="module")
def utk_images(shared):
    """A spread of UTKFace chip paths (file names carry age_gender_race_date, UTKFace gender 0 = male)."""
    folder = os.path.join(shared, "data", "utkface", "images")
    names = sorted(os.listdir(folder))
    return [os.path.join(folder, n) for n in names[::len(names) // N_IMAGES][:N_IMAGES]]


@pytest.fixture(scope="module")
def folder_run(utk_images, original_mtcnn_dir, tmp_path_factory):
    """prepare() on a UTKFace-style folder with one corrupt image and one badly named file."""
    source = tmp_path_factory.mktemp("utk")
    for path in utk_images:
        shutil.copy(path, source)
    (source / "33_0_1_20170101.jpg.chip.jpg").write_bytes(b"not a jpeg")
    shutil.copy(utk_images[0], source / "no_label_here.jpg")
    out = tmp_path_factory.mktemp("out")
    summary = prepare(str(source), str(out), val_fraction=0.34, workers=1, det_model=original_mtcnn_dir,
                      keep_work=True, progress=False)
    return source, out, summary


def test_folder_source_gives_aligned_labelled_packs(folder_run, utk_images):
    source, out, summary = folder_run
    assert summary["records"] == {"train": 4, "val": 2}
    assert summary["skipped"] == {"unreadable": 1, "file name is not age_gender_... with gender 0/1 and age 0..120": 1}
    expected = {}
    for path in utk_images:
        age, utk_gender = (int(v) for v in os.path.basename(path).split("_")[:2])
        expected[(1 - utk_gender, age)] = expected.get((1 - utk_gender, age), 0) + 1
    got = {}
    for split in ("train", "val"):
        record = mx.recordio.MXIndexedRecordIO(str(out / f"{split}.idx"), str(out / f"{split}.rec"), "r")
        for running_id, key in enumerate(sorted(record.keys)):
            header, image = mx.recordio.unpack_img(record.read_idx(key))
            assert header.id == running_id and header.id2 == 0 and image.shape == (112, 112, 3)
            label = (int(header.label[0]), int(header.label[1]))
            got[label] = got.get(label, 0) + 1
    assert got == expected
    with open(out / "skipped.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {os.path.basename(r["path"]) for r in rows} == {"33_0_1_20170101.jpg.chip.jpg", "no_label_here.jpg"}


def test_aligned_faces_put_the_eyes_on_the_template(folder_run, original_mtcnn_dir):
    from mtcnn import MtcnnDetector
    _, out, _ = folder_run
    detector = MtcnnDetector(model_dir=original_mtcnn_dir, ctx=mx.cpu(), min_face=20)
    template = face_template()
    border = 28
    errors = []
    for split in ("train", "val"):
        reader = PackReader(str(out / f"{split}.rec"))
        for key in reader.keys:
            face = cv2.copyMakeBorder(reader.read_image(key)[1], *[border] * 4, cv2.BORDER_REPLICATE)
            boxes, landmarks = detector.detect(face)
            assert len(boxes), f"{split} record {key}: no face re-detected in the aligned crop"
            best = np.argmin(np.abs(boxes[:, :4].reshape(-1, 2, 2).mean(axis=1) - (56 + border)).sum(axis=1))
            eyes = landmarks[best, :2] - border
            errors.append(np.linalg.norm(eyes - template[:2], axis=1).max())
    # The 5-point least-squares fit leaves residuals on faces whose nose/mouth sit off the template
    # (a turned head, a wide smile), so single faces may miss by a few pixels; typical faces must not.
    assert np.median(errors) < 3.0 and max(errors) < 6.0, errors


def test_interrupted_run_resumes_without_redoing_or_duplicating(folder_run, original_mtcnn_dir, tmp_path):
    source, out, first = folder_run
    resumed_out = tmp_path / "resumed"
    shutil.copytree(out / WORK_DIR, resumed_out / WORK_DIR)
    journal_path = resumed_out / WORK_DIR / "journal.bin"
    journal = Journal(str(journal_path))
    journal.close()
    kept = 3
    _, offset, length = sorted(journal.entries.values(), key=lambda e: e[1])[kept]
    with open(journal_path, "r+b") as f:          # as if killed while writing the 4th result
        f.truncate(offset + length // 2)
    summary = prepare(str(source), str(resumed_out), val_fraction=0.34, workers=1,
                      det_model=original_mtcnn_dir, progress=False)
    assert summary["resumed_from"] == kept and summary["processed_now"] == first["processed_now"] - kept
    assert summary["records"] == first["records"]
    for name in ("train.rec", "train.idx", "val.rec", "val.idx"):
        assert (resumed_out / name).read_bytes() == (out / name).read_bytes(), name
    assert not (resumed_out / WORK_DIR).exists()


def test_unfinished_run_with_other_settings_is_refused(folder_run, original_mtcnn_dir):
    source, out, _ = folder_run
    with pytest.raises(DataError, match="another source or settings"):
        prepare(str(source), str(out), val_fraction=0.5, workers=1, det_model=original_mtcnn_dir,
                progress=False)


def test_csv_source_with_test_split(utk_images, original_mtcnn_dir, tmp_path):
    os.makedirs(tmp_path / "images")
    rows = [("path", "age", "gender", "race", "split")]
    for i, (path, split) in enumerate(zip(utk_images[:3], ("train", "val", "test"))):
        shutil.copy(path, tmp_path / "images" / f"face{i}.jpg")
        rows.append((f"images/face{i}.jpg", str(20 + i), str(i % 2), "0", split))
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    summary = prepare(str(tmp_path / "labels.csv"), str(tmp_path / "out"), workers=1,
                      det_model=original_mtcnn_dir, progress=False)
    assert summary["records"] == {"train": 1, "val": 1, "test": 1}
    for i, split in enumerate(("train", "val", "test")):
        np.testing.assert_array_equal(PackReader(str(tmp_path / "out" / f"{split}.rec")).labels, [[i % 2, 20 + i]])


@pytest.mark.parametrize("text, message", [
    ("path,age\na.jpg,3\n", r"bad\.csv: missing column\(s\) gender"),
    ("path,age,gender\na.jpg,30,1\nb.jpg,130,0\n", r"bad\.csv: line 3: age 130"),
    ("path,age,gender\na.jpg,-1,1\n", r"bad\.csv: line 2: age -1"),
    ("path,age,gender\na.jpg,30,2\n", r"bad\.csv: line 2: gender 2"),
    ("path,age,gender,split\na.jpg,30,1,dev\n", r"bad\.csv: line 2: split 'dev'"),
])
def test_bad_csv_is_reported(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_csv(str(tmp_path / "bad.csv"))


def _matlab_datenum(year, month, day):
    return datetime.date(year, month, day).toordinal() + 366 + 0.25


def test_imdb_wiki_mat_is_cleaned(utk_images, original_mtcnn_dir, tmp_path):
    import scipy.io
    os.makedirs(tmp_path / "17")
    entries = [  # (age, gender, face_score, second_face_score)
        (25, 1.0, 3.1, np.nan), (61, 0.0, 1.4, np.nan), (34, 1.0, 2.0, np.nan),
        (40, 0.0, 4.0, 1.7), (30, np.nan, 3.0, np.nan), (50, 1.0, 0.4, np.nan), (120, 1.0, 3.0, np.nan)]
    paths = []
    for i in range(len(entries)):
        shutil.copy(utk_images[i % len(utk_images)], tmp_path / "17" / f"person{i}.jpg")
        paths.append(f"17/person{i}.jpg")
    full_path = np.empty((1, len(entries)), dtype=object)
    for i, p in enumerate(paths):
        full_path[0, i] = np.array([p])
    wiki = {"dob": np.array([[_matlab_datenum(1950, 7, 1) for _ in entries]]),
            "photo_taken": np.array([[1950 + e[0] for e in entries]]),
            "full_path": full_path,
            "gender": np.array([[e[1] for e in entries]]),
            "face_score": np.array([[e[2] for e in entries]]),
            "second_face_score": np.array([[e[3] for e in entries]])}
    scipy.io.savemat(str(tmp_path / "wiki.mat"), {"wiki": wiki})
    items, rejected = read_imdb_wiki_mat(str(tmp_path / "wiki.mat"))
    assert [(i.gender, i.age) for i in items] == [(1, 25), (0, 61), (1, 34)]
    assert [r[1] for r in rejected] == ["second face in the picture", "unknown gender", "face_score below 1.0",
                                        "age outside 0..100 or bad dob"]
    summary = prepare(str(tmp_path / "wiki.mat"), str(tmp_path / "out"), val_fraction=0.0, workers=1,
                      det_model=original_mtcnn_dir, progress=False)
    assert summary["records"] == {"train": 3}
    np.testing.assert_array_equal(PackReader(str(tmp_path / "out" / "train.rec")).labels,
                                  [[1, 25], [0, 61], [1, 34]])
    (tmp_path / "nothing.mat").write_bytes(b"\0" * 300)
    with pytest.raises(DataError, match=r"nothing\.mat: cannot be read"):
        read_imdb_wiki_mat(str(tmp_path / "nothing.mat"))


def _write_age_first_pack(prefix, faces, labels):
    record = mx.recordio.MXIndexedRecordIO(f"{prefix}.idx", f"{prefix}.rec", "w")
    for key, (face, label) in enumerate(zip(faces, labels)):
        record.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, list(label), key, 0), face))
    record.close()


def test_rec_source_swap_labels_and_young_faces_cli(utk_images, tmp_path):
    """SSR-Net-style [age, gender] packs: the original's convert_rec + add_age_rec, in two worker processes."""
    faces = [encode_face(cv2.resize(cv2.imread(p), (112, 112))) for p in utk_images[:4]]
    os.makedirs(tmp_path / "ssr")
    _write_age_first_pack(tmp_path / "ssr" / "train", faces, [(30, 1), (41, 0), (8, 1), (22, 0)])
    _write_age_first_pack(tmp_path / "ssr" / "young", faces, [(5, 0), (19, 1), (20, 1), (64, 0)])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data.prepare", str(tmp_path / "ssr" / "train.rec"), "--out", str(out),
           "--aligned", "--swap-labels", "--add-young", str(tmp_path / "ssr" / "young.rec"), "--workers", "2",
           "--quiet"]
    result = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "wrote train 6 records" in result.stdout and "aligned faces/s" in result.stdout
    reader = PackReader(str(out / "train.rec"))
    np.testing.assert_array_equal(reader.labels, [[1, 30], [0, 41], [1, 8], [0, 22],
                                                  [UNKNOWN_GENDER, 5], [UNKNOWN_GENDER, 19]])
    np.testing.assert_array_equal(reader.ids, range(6))
    assert not (out / "val.rec").exists() and (out / "prepare.log").exists()
    # Without --swap-labels the ages read as genders are refused, naming the record
    result = subprocess.run(cmd[:6] + ["--aligned", "--restart"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1 and "train.rec: record 0" in result.stderr and "--swap-labels" in result.stderr
