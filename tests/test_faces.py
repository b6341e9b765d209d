"""analysis.faces.FaceFinder: the policies of test.py (every face) and of data.prepare (the centre face)."""
import os

import cv2
import numpy as np
import pytest

from agegender import config
from agegender.align import align_face
from analysis.detectors import create_detector
from analysis.faces import PACK_POLICY, FaceFinder
from data.prepare import prepare
from data.records import PackReader


@pytest.fixture(scope="module")
def two_small_faces(sample_images_dir):
    """A 480x640 grey picture with one 56 px face at its centre and one in the top-left corner."""
    face = cv2.resize(cv2.imread(os.path.join(sample_images_dir, "Tom_Hanks_54745.png")), (56, 56))
    canvas = np.full((480, 640, 3), 127, np.uint8)
    canvas[212:268, 292:348] = face
    canvas[0:56, 0:56] = face
    return canvas


def test_every_face_policy_is_the_detector_and_the_aligner(original_mtcnn_dir, sample_images_dir):
    image = cv2.imread(os.path.join(sample_images_dir, "test1.jpg"))
    boxes, landmarks = create_detector(0, original_mtcnn_dir).detect(image)
    found = FaceFinder(det=0, det_model=original_mtcnn_dir).find(image)
    np.testing.assert_array_equal(found.boxes, boxes)
    np.testing.assert_array_equal(found.landmarks, landmarks)
    assert len(found.crops) == len(boxes) > 1
    for crop, points in zip(found.crops, landmarks):
        np.testing.assert_array_equal(crop, align_face(image, points))


def test_pack_policy_retries_smaller_faces_and_keeps_the_centre_one(original_mtcnn_dir, two_small_faces):
    finder = FaceFinder(det_model=original_mtcnn_dir, **PACK_POLICY)
    found = finder.find(two_small_faces)
    assert found.boxes.shape == (1, 5) and found.landmarks.shape == (1, 5, 2)
    centre = (found.boxes[0, 0:2] + found.boxes[0, 2:4]) / 2
    assert np.all(np.abs(centre - [320, 240]) < 15)      # in the picture's coordinates, not the padded one's
    assert found.crops[0].shape == config.IMAGE_SIZE + (3,)
    # auto min face (a quarter of 480 px) alone misses both 56 px faces
    without_retry = FaceFinder(det_model=original_mtcnn_dir, **dict(PACK_POLICY, retry_min_face=None))
    missed = without_retry.find(two_small_faces)
    assert missed.boxes.shape == (0, 5) and missed.landmarks.shape == (0, 5, 2) and missed.crops == []


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="keep"):
        FaceFinder(keep="largest")
    with pytest.raises(ValueError, match="min_face"):
        FaceFinder(min_face="small")


def test_prepare_runs_with_essh_on_onnxruntime(shared, tmp_path):
    if not os.path.isfile(config.ONNX_ESSH_DEFAULT_MODEL):
        reason = f"{config.ONNX_ESSH_DEFAULT_MODEL} not exported (run `make models`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    folder = os.path.join(shared, "data", "utkface", "images")
    names = sorted(os.listdir(folder))[:40:10]
    source = tmp_path / "labels.csv"
    source.write_text("path,age,gender,split\n" + "".join(f"{os.path.join(folder, n)},30,1,train\n" for n in names))
    summary = prepare(str(source), str(tmp_path / "out"), workers=1, det=1, backend="onnx", progress=False)
    assert summary["records"] == {"train": len(names)}
    with PackReader(str(tmp_path / "out" / "train.rec")) as reader:
        assert all(reader.read_image(key)[1].shape == config.IMAGE_SIZE + (3,) for key in reader.keys)
