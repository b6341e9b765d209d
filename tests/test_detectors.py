"""Every registered detector keeps the one interface of analysis.detectors, with its default weights."""
import os

import cv2
import numpy as np
import pytest

from agegender.errors import AgeGenderError, CheckpointError, ImageError
from analysis.detectors import DETECTORS, create_detector, describe_detectors


@pytest.fixture(scope="module", params=sorted(DETECTORS), ids=[e.package for _, e in sorted(DETECTORS.items())])
def detector(request):
    try:
        return create_detector(request.param)
    except CheckpointError as exc:
        reason = f"default weights of --det {request.param} not converted (run `make models`): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def portrait(sample_images_dir):
    return cv2.imread(os.path.join(sample_images_dir, "Tom_Hanks_54745.png"))


def test_detect_returns_float64_boxes_and_landmarks_by_descending_score(detector, portrait):
    boxes, landmarks = detector.detect(portrait)
    assert len(boxes) >= 1 and boxes.shape == (len(boxes), 5) and landmarks.shape == (len(boxes), 5, 2)
    assert boxes.dtype == np.float64 and landmarks.dtype == np.float64
    assert np.all(np.diff(boxes[:, 4]) <= 0)
    x1, y1, x2, y2 = boxes[0, :4]
    assert np.all((landmarks[0, :, 0] >= x1) & (landmarks[0, :, 0] <= x2))
    assert np.all((landmarks[0, :, 1] >= y1) & (landmarks[0, :, 1] <= y2))


@pytest.mark.parametrize("shape", [(200, 300, 3), (0, 0, 3), (5, 400, 3)])
def test_no_face_gives_empty_arrays(detector, shape):
    boxes, landmarks = detector.detect(np.full(shape, 127, np.uint8))
    assert boxes.shape == (0, 5) and landmarks.shape == (0, 5, 2)


def test_grey_bgra_and_16_bit_images_are_converted(detector, portrait):
    grey = cv2.cvtColor(portrait, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(detector.detect(grey)[0], detector.detect(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))[0])
    expected = detector.detect(portrait)[0]
    np.testing.assert_array_equal(detector.detect(cv2.cvtColor(portrait, cv2.COLOR_BGR2BGRA))[0], expected)
    np.testing.assert_array_equal(detector.detect(portrait.astype(np.uint16) * 257)[0], expected)


@pytest.mark.parametrize("image", [np.zeros((50, 50, 3), np.float32), np.zeros((50, 50, 2), np.uint8),
                                   np.zeros((2, 50, 50, 3), np.uint8)])
def test_unsupported_arrays_raise_image_error(detector, image):
    with pytest.raises(ImageError, match="a detector needs"):
        detector.detect(image)


def test_min_face_can_change_between_calls(detector, portrait):
    found = len(detector.detect(portrait)[0])
    saved = detector.min_face
    try:
        detector.min_face = max(portrait.shape[:2]) + 1
        assert len(detector.detect(portrait)[0]) == 0
    finally:
        detector.min_face = saved
    assert len(detector.detect(portrait)[0]) == found


def test_unknown_detector_number_is_a_one_line_error():
    with pytest.raises(AgeGenderError, match="--det 7: unknown detector") as error:
        create_detector(7)
    assert describe_detectors() in str(error.value) and "\n" not in str(error.value)
