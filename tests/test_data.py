"""RecordIO packs (data/records.py) and the training iterator (data/iterator.py) on real UTKFace images."""
import csv
import os
import shutil

import cv2
import mxnet as mx
import numpy as np
import pytest

from agegender.errors import DataError
from data.iterator import Augmentation, FaceImageIter, augment, color_jitter, encode_labels
from data.records import PackReader, PackWriter, encode_face

N_FACES = 37     # not a multiple of the batch sizes used below, so the last batch is partial


@pytest.fixture(scope="module")
def utk_rows(shared):
    """(path, gender, age) of a spread of UTKFace images, gender already 0 = female, 1 = male."""
    folder = os.path.join(shared, "data", "utkface")
    with open(os.path.join(folder, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    rows = rows[::len(rows) // N_FACES][:N_FACES]
    return [(os.path.join(folder, r["path"]), int(r["gender"]), int(r["age"])) for r in rows]


@pytest.fixture(scope="module")
def pack(utk_rows, tmp_path_factory):
    """A pack of 112x112 resized UTKFace chips (not aligned: the iterator does not care)."""
    prefix = str(tmp_path_factory.mktemp("pack") / "faces")
    with PackWriter(prefix) as writer:
        for path, gender, age in utk_rows:
            writer.write(encode_face(cv2.resize(cv2.imread(path), (112, 112))), gender, age)
    return prefix + ".rec"


def test_pack_is_readable_by_mxnet_and_by_reader(pack, utk_rows):
    record = mx.recordio.MXIndexedRecordIO(pack[:-4] + ".idx", pack, "r")
    reader = PackReader(pack)
    assert len(reader) == len(utk_rows) == len(record.keys)
    for key, (path, gender, age) in zip(reader.keys, utk_rows):
        header, image = mx.recordio.unpack_img(record.read_idx(key))
        assert header.flag == 2 and header.id == key and header.id2 == 0
        assert list(header.label) == [gender, age]
        label, mine = reader.read_image(key)
        assert list(label) == [gender, age] and mine.shape == (112, 112, 3)
        np.testing.assert_array_equal(mine, image)
    np.testing.assert_array_equal(reader.labels, [[g, a] for _, g, a in utk_rows])
    record.close()
    reader.close()


def test_truncated_rec_is_reported(pack, tmp_path):
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    shutil.copy(pack[:-4] + ".idx", idx)
    data = open(pack, "rb").read()
    rec.write_bytes(data[:len(data) - 500])
    with pytest.raises(DataError, match=r"t\.rec: record 36 .*truncated"):
        PackReader(str(rec))


def test_index_of_another_pack_is_reported(pack, tmp_path):
    other = str(tmp_path / "other")
    with PackWriter(other) as writer:
        for _ in range(3):
            writer.write(encode_face(np.full((112, 112, 3), 90, np.uint8)), 1, 30)
    shutil.copy(other + ".idx", tmp_path / "mixed.idx")
    with open(tmp_path / "mixed.idx", "a") as f:
        f.write("3\t13\n")
    shutil.copy(pack, tmp_path / "mixed.rec")
    with pytest.raises(DataError, match=r"mixed\.(idx|rec).*(does not match|no record starts)"):
        PackReader(str(tmp_path / "mixed.rec"))
    (tmp_path / "bad.idx").write_text("0\t0\nnot a line\n")
    shutil.copy(pack, tmp_path / "bad.rec")
    with pytest.raises(DataError, match=r"bad\.idx: line 2"):
        PackReader(str(tmp_path / "bad.rec"))


@pytest.mark.parametrize("label", [30.0, [1.0, 30.0, 5.0]])
def test_label_that_is_not_two_values_is_reported(tmp_path, label):
    prefix = str(tmp_path / "wrong")
    record = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    jpeg = encode_face(np.zeros((112, 112, 3), np.uint8))
    for key in range(2):
        record.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, label, key, 0), jpeg))
    record.close()
    with pytest.raises(DataError, match=r"wrong\.rec: record 0 .*expected 2"):
        PackReader(prefix + ".rec")


def test_writer_rejects_bad_labels(tmp_path):
    with pytest.raises(DataError, match="gender"):
        with PackWriter(str(tmp_path / "p")) as writer:
            writer.write(b"", 2, 30)
    assert not os.path.exists(tmp_path / "p.rec") and not os.listdir(tmp_path)


def test_label_encoding():
    np.testing.assert_array_equal(encode_labels(1, 0), [1, 1] + [0] * 99)
    np.testing.assert_array_equal(encode_labels(0, 37), [0] + [1] * 37 + [0] * 63)
    np.testing.assert_array_equal(encode_labels(9999, 116), [9999] + [1] * 100)


def test_iterator_batches_cover_every_sample_once(pack, utk_rows):
    it = FaceImageIter(pack, 8)
    assert it.num_samples == len(utk_rows)
    assert it.provide_data[0].shape == (8, 3, 112, 112) and it.provide_label[0].shape == (8, 101)
    reader = PackReader(pack)
    seen = []
    for batch in it:
        data, label = batch.data[0].asnumpy(), batch.label[0].asnumpy()
        assert data.shape == (8, 3, 112, 112) and data.dtype == np.float32 and label.shape == (8, 101)
        for slot, row in enumerate(batch.index[:8 - batch.pad]):
            key = reader.keys[row]
            gender, age = reader.labels[row]
            np.testing.assert_array_equal(label[slot], encode_labels(gender, age))
            rgb = cv2.cvtColor(reader.read_image(key)[1], cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(data[slot], rgb.transpose(2, 0, 1))
        seen += list(batch.index[:8 - batch.pad])
    assert batch.pad == 8 - len(utk_rows) % 8
    assert sorted(seen) == list(range(len(utk_rows)))
    it.close()


def test_shuffle_parts_and_seed(pack, utk_rows):
    def epoch_order(it):
        return [int(i) for b in it for i in b.index[:it.batch_size - b.pad]]

    it = FaceImageIter(pack, 16, shuffle=True, seed=3)
    first = epoch_order(it)
    it.reset()
    second = epoch_order(it)
    assert sorted(first) == sorted(second) == list(range(len(utk_rows))) and first != second
    assert epoch_order(FaceImageIter(pack, 16, shuffle=True, seed=3)) == first
    parts = [epoch_order(FaceImageIter(pack, 5, num_parts=3, part_index=p)) for p in range(3)]
    assert sorted(sum(parts, [])) == list(range(len(utk_rows)))
    assert FaceImageIter(pack, 5, num_parts=3, part_index=1).num_samples == len(parts[1])


def test_augmentations_stay_in_bounds(pack):
    it = FaceImageIter(pack, 16, rand_mirror=True, color_jitter=2, cutoff=24, rand_crop=0.1, seed=0)
    for batch in it:
        data = batch.data[0].asnumpy()
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 255
    it.close()
    image = PackReader(pack).read_image(0)[1]
    plain = augment(image, Augmentation())
    np.testing.assert_array_equal(augment(image, Augmentation(mirror=True)), plain[:, ::-1])
    cut = augment(image, Augmentation(cutout=(0.5, 0.5)), cutoff=20)
    assert (cut[46:66, 46:66] == 128).all() and (cut[:40] == plain[:40]).all()
    corner = augment(image, Augmentation(cutout=(0.0, 0.0)), cutoff=20)
    assert (corner[:10, :10] == 128).all() and (corner[10:] == plain[10:]).all()
    # JPEG re-compression at quality 2..20 keeps the picture (loosely) and the range
    rough = augment(image, Augmentation(jpeg_quality=5))
    assert rough.shape == plain.shape and np.abs(rough - plain).mean() < 20


def test_color_jitter_matches_sequential_definition(pack):
    rgb = cv2.cvtColor(PackReader(pack).read_image(3)[1], cv2.COLOR_BGR2RGB)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    steps = ((1, 1.11), (2, 0.9), (0, 1.07))
    expected = rgb.astype(np.float32)
    for op, alpha in steps:      # mx.image's brightness, contrast and saturation, one after another
        if op == 0:
            expected = expected * alpha
        elif op == 1:
            expected = expected * alpha + (1 - alpha) * (expected @ luma).mean()
        else:
            expected = expected * alpha + (1 - alpha) * (expected @ luma)[..., None]
    got = color_jitter(rgb, steps).astype(np.float32)
    assert np.abs(got - np.clip(expected, 0, 255)).max() <= 1.0
