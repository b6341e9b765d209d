"""MTCNN detector: golden references of the original code, robustness, checkpoint errors."""
import os
import shutil

import cv2
import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from agegender.align import align_face
from agegender.errors import CheckpointError, ImageError
from agegender.model import AgeGenderModel
from mtcnn import MtcnnDetector
from mtcnn.detector import nms, normalise
from mtcnn.symbols import HEADS
from tests.golden import assert_estimates_match, load_reference

SMALL_IMAGES = ["test1.jpg", "test2.jpg", "test.jpg", "Tom_Hanks_54745.png"]
LARGE_IMAGES = ["oscar1.jpg", "t2.jpg"]


@pytest.fixture(scope="module")
def original_detector(original_mtcnn_dir):
    return MtcnnDetector(model_dir=original_mtcnn_dir, ctx=mx.cpu(), min_face=20, thresholds=(0.6, 0.7, 0.8),
                         factor=0.709, accurate_landmark=True)


@pytest.fixture(scope="module")
def age_gender_model(original_model):
    return AgeGenderModel(original_model)


def _check_against_reference(detector, model, sample_images_dir, reference_dir, image_name):
    image = cv2.imread(os.path.join(sample_images_dir, image_name))
    boxes, landmarks = detector.detect(image)
    faces, ref_boxes, ref_landmarks = load_reference(reference_dir, image_name)
    assert boxes.shape == (len(faces), 5) and landmarks.shape == (len(faces), 5, 2)
    assert boxes.dtype == np.float64 and landmarks.dtype == np.float64
    np.testing.assert_allclose(boxes[:, :4], ref_boxes, atol=1.0)
    np.testing.assert_allclose(landmarks, ref_landmarks, atol=1.0)
    predictions, _ = model.predict([align_face(image, points) for points in landmarks])
    assert_estimates_match(reference_dir, image_name, [p["age"] for p in predictions],
                           [p["gender"] for p in predictions])


@pytest.mark.parametrize("image_name", SMALL_IMAGES)
def test_original_weights_reproduce_golden_faces(original_detector, age_gender_model, sample_images_dir,
                                                  reference_dir, image_name):
    _check_against_reference(original_detector, age_gender_model, sample_images_dir, reference_dir, image_name)


@pytest.mark.slow
@pytest.mark.parametrize("image_name", LARGE_IMAGES)
def test_original_weights_reproduce_golden_crowds(original_detector, age_gender_model, sample_images_dir,
                                                   reference_dir, image_name):
    _check_against_reference(original_detector, age_gender_model, sample_images_dir, reference_dir, image_name)


def _greedy_nms(boxes, threshold, mode):
    """Textbook greedy NMS: keep the best remaining box, drop those overlapping it more than threshold."""
    order = list(np.argsort(boxes[:, 4]))
    keep = []
    while order:
        best = order.pop()
        keep.append(best)
        survivors = []
        for other in order:
            w = max(0.0, min(boxes[best, 2], boxes[other, 2]) - max(boxes[best, 0], boxes[other, 0]) + 1)
            h = max(0.0, min(boxes[best, 3], boxes[other, 3]) - max(boxes[best, 1], boxes[other, 1]) + 1)
            area = [(boxes[k, 2] - boxes[k, 0] + 1) * (boxes[k, 3] - boxes[k, 1] + 1) for k in (best, other)]
            overlap = w * h / (min(area) if mode == "min" else sum(area) - w * h)
            if overlap <= threshold:
                survivors.append(other)
        order = survivors
    return keep


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(1, 400), st.integers(1, 400),
                          st.sampled_from([0.3, 0.6, 0.9, 1.0]), st.floats(0, 0.99)), min_size=0, max_size=60),
       st.sampled_from([(0.5, "union"), (0.7, "union"), (0.7, "min")]))
def test_nms_equals_textbook_greedy_nms(rows, setting):
    threshold, mode = setting
    boxes = np.array([[x, y, x + w + frac, y + h, score] for x, y, w, h, score, frac in rows]).reshape(-1, 5)
    assert list(nms(boxes, threshold, mode)) == _greedy_nms(boxes, threshold, mode)


@pytest.fixture(scope="module")
def portrait(sample_images_dir):
    return cv2.imread(os.path.join(sample_images_dir, "Tom_Hanks_54745.png"))


def test_no_face_gives_empty_arrays(original_detector):
    boxes, landmarks = original_detector.detect(np.full((200, 300, 3), 127, np.uint8))
    assert boxes.shape == (0, 5) and landmarks.shape == (0, 5, 2)


@pytest.mark.parametrize("shape", [(11, 11, 3), (5, 400, 3), (1, 1, 3), (0, 0, 3), (11, 11)])
def test_tiny_images_give_empty_arrays(original_detector, shape):
    boxes, landmarks = original_detector.detect(np.zeros(shape, np.uint8))
    assert boxes.shape == (0, 5) and landmarks.shape == (0, 5, 2)


def test_grey_rgba_and_16_bit_inputs_are_converted(original_detector, portrait):
    grey = cv2.cvtColor(portrait, cv2.COLOR_BGR2GRAY)
    expected = original_detector.detect(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    assert len(expected[0]) == 1
    for variant in (grey, grey[:, :, np.newaxis]):
        np.testing.assert_array_equal(original_detector.detect(variant)[0], expected[0])
    bgra = cv2.cvtColor(portrait, cv2.COLOR_BGR2BGRA)
    np.testing.assert_array_equal(original_detector.detect(bgra)[0], original_detector.detect(portrait)[0])
    wide = portrait.astype(np.uint16) * 257
    np.testing.assert_array_equal(original_detector.detect(wide)[0], original_detector.detect(portrait)[0])


@pytest.mark.parametrize("image", [np.zeros((50, 50, 3), np.float32), np.zeros((50, 50, 2), np.uint8),
                                   np.zeros((2, 50, 50, 3), np.uint8)])
def test_unsupported_inputs_raise_image_error(original_detector, image):
    with pytest.raises(ImageError, match="a detector needs"):
        original_detector.detect(image)


def test_missing_lnet_turns_accurate_landmarks_off(original_mtcnn_dir, tmp_path, portrait):
    for name in ("det1", "det2", "det3"):
        for suffix in ("-symbol.json", "-0001.params"):
            os.symlink(os.path.join(original_mtcnn_dir, name + suffix), tmp_path / (name + suffix))
    detector = MtcnnDetector(model_dir=str(tmp_path))
    assert not detector.accurate_landmark
    boxes, landmarks = detector.detect(portrait)
    assert boxes.shape == (1, 5) and landmarks.shape == (1, 5, 2)


@pytest.mark.parametrize("damage", ["missing_params", "missing_symbol", "wrong_params", "truncated_params"])
def test_bad_checkpoint_files_raise_checkpoint_error(original_mtcnn_dir, tmp_path, damage):
    for name in os.listdir(original_mtcnn_dir):
        shutil.copy(os.path.join(original_mtcnn_dir, name), tmp_path / name)
    target = tmp_path / "det2-0001.params"
    if damage == "missing_params":
        target.unlink()
    elif damage == "missing_symbol":
        (tmp_path / "det2-symbol.json").unlink()
        target = tmp_path / "det2-symbol.json"
    elif damage == "wrong_params":
        shutil.copy(tmp_path / "det3-0001.params", target)
    else:
        target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as error:
        MtcnnDetector(model_dir=str(tmp_path))
    message = str(error.value)
    assert str(target) in message and "\n" not in message


def test_missing_model_dir_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="make models"):
        MtcnnDetector(model_dir=str(tmp_path / "nowhere"))


# Default weights converted from the mtcnn==1.0.0 wheel (`make models`).

@pytest.fixture(scope="module")
def converted_dir():
    from agegender.config import MTCNN_MODEL_DIR
    from mtcnn.convert import is_converted
    if not is_converted(MTCNN_MODEL_DIR):
        reason = f"{MTCNN_MODEL_DIR}: default MTCNN weights not converted (run `make models`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return MTCNN_MODEL_DIR


@pytest.fixture(scope="module")
def converted_detector(converted_dir):
    return MtcnnDetector(model_dir=converted_dir)


def test_first_fc_conversion_matches_keras_flattening():
    from mtcnn.convert import to_mxnet_layout
    rng = np.random.default_rng(0)
    features_hwc = rng.standard_normal((3, 4, 5)).astype(np.float32)       # H=3, W=4, C=5
    keras_weight = rng.standard_normal((60, 7)).astype(np.float32)
    # Keras permutes (H, W, C) -> (W, H, C), flattens, then multiplies by the (in, out) kernel.
    keras_out = features_hwc.transpose(1, 0, 2).reshape(-1) @ keras_weight
    mx_weight = to_mxnet_layout(keras_weight, "first_fc", (7, 60), fc_input_shape=(5, 3, 4))
    mx_out = mx_weight @ features_hwc.transpose(2, 0, 1).reshape(-1)
    np.testing.assert_allclose(mx_out, keras_out, rtol=1e-5, atol=1e-5)


def test_conv_conversion_reverses_first_conv_input_channels():
    from mtcnn.convert import to_mxnet_layout
    kernel = np.arange(3 * 3 * 3 * 2, dtype=np.float32).reshape(3, 3, 3, 2)   # (kh, kw, in, out)
    converted = to_mxnet_layout(kernel, "first_conv", (2, 3, 3, 3))
    np.testing.assert_array_equal(converted[1, 0], kernel[:, :, 2, 1])
    np.testing.assert_array_equal(to_mxnet_layout(kernel, "conv", (2, 3, 3, 3))[1, 0], kernel[:, :, 0, 1])


def test_converted_weights_equal_original_exactly(converted_dir, original_mtcnn_dir):
    for network in ("det1", "det2", "det3"):
        converted = mx.nd.load(os.path.join(converted_dir, f"{network}-0001.params"))
        original = mx.nd.load(os.path.join(original_mtcnn_dir, f"{network}-0001.params"))
        assert sorted(converted) == sorted(original)
        for name, array in original.items():
            np.testing.assert_array_equal(converted[name].asnumpy(), array.asnumpy(), err_msg=f"{network} {name}")


def test_convert_default_is_a_no_op_when_converted(converted_dir):
    from mtcnn.convert import convert_default
    stamps = {name: os.stat(os.path.join(converted_dir, name)).st_mtime_ns for name in os.listdir(converted_dir)}
    convert_default(converted_dir)
    assert stamps == {name: os.stat(os.path.join(converted_dir, name)).st_mtime_ns
                      for name in os.listdir(converted_dir)}


def _iou(boxes_a, boxes_b):
    """IoU matrix of x1y1x2y2 boxes (continuous coordinates)."""
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = np.minimum(boxes_a[:, None, 2:4], boxes_b[None, :, 2:4])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(boxes_a[:, 2:4] - boxes_a[:, :2], axis=1)
    area_b = np.prod(boxes_b[:, 2:4] - boxes_b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _check_converted_finds_reference_faces(detector, sample_images_dir, reference_dir, image_name):
    assert not detector.accurate_landmark
    boxes, landmarks = detector.detect(cv2.imread(os.path.join(sample_images_dir, image_name)))
    _, ref_boxes, _ = load_reference(reference_dir, image_name)
    iou = _iou(ref_boxes, boxes[:, :4]) if len(boxes) else np.zeros((len(ref_boxes), 0))
    found = (iou >= 0.7).any(axis=1).sum() if iou.size else 0
    extra = len(boxes) - (iou >= 0.7).any(axis=0).sum() if iou.size else len(boxes)
    assert found >= 0.95 * len(ref_boxes)
    assert extra <= 0.05 * len(ref_boxes)
    assert landmarks.shape == (len(boxes), 5, 2)


@pytest.mark.parametrize("image_name", SMALL_IMAGES)
def test_converted_weights_find_reference_faces(converted_detector, sample_images_dir, reference_dir, image_name):
    _check_converted_finds_reference_faces(converted_detector, sample_images_dir, reference_dir, image_name)


@pytest.mark.slow
@pytest.mark.parametrize("image_name", LARGE_IMAGES)
def test_converted_weights_find_reference_faces_in_crowds(converted_detector, sample_images_dir, reference_dir,
                                                          image_name):
    _check_converted_finds_reference_faces(converted_detector, sample_images_dir, reference_dir, image_name)


# The fast forms and PNet strips (issue 14): the same numbers as the original layers.

@pytest.mark.parametrize("network, shape", [("det1", (1, 3, 67, 91)), ("det2", (5, 3, 24, 24)), ("det3", (3, 3, 48, 48))])
def test_fast_form_computes_the_original_network(original_mtcnn_dir, sample_images_dir, network, shape):
    from agegender.backends import MXNetRunner
    from mtcnn.detector import face_probability, load_fast_network, read_network
    image = cv2.imread(os.path.join(sample_images_dir, "test1.jpg"))
    crops = np.stack([cv2.resize(image[i * 90:i * 90 + 300, i * 150:i * 150 + 300], shape[2:][::-1])
                      for i in range(shape[0])])
    batch = normalise(crops)
    original = MXNetRunner(*read_network(original_mtcnn_dir, network)).run(batch)
    symbol, params = load_fast_network(original_mtcnn_dir, network)
    fast, = MXNetRunner(symbol, {k: mx.nd.array(v) for k, v in params.items()}).run(batch)
    prob, regression = original[-1][:, 1], original[-2]
    np.testing.assert_allclose(face_probability(fast[:, 0:2]), prob, atol=1e-6)
    np.testing.assert_allclose(fast[:, 2:6], regression, atol=1e-5)
    if network == "det3":
        np.testing.assert_allclose(fast[:, 6:16], original[0], atol=1e-5)
    assert np.all(fast[:, sum(n for _, n in HEADS[network]):] == 0)


@pytest.mark.parametrize("height, width", [(131, 97), (130, 96), (200, 41)])
def test_pnet_strips_give_the_whole_level_output(original_mtcnn_dir, sample_images_dir, height, width):
    from mtcnn.detector import pnet_output_size, pnet_strips
    detector = MtcnnDetector(model_dir=original_mtcnn_dir)
    image = cv2.resize(cv2.imread(os.path.join(sample_images_dir, "test1.jpg")), (width, height))
    whole, = detector.pnet.run(normalise(image[np.newaxis]))
    assert whole.shape[2:] == (pnet_output_size(height), pnet_output_size(width))
    strips = pnet_strips(height, width, max_pixels=40 * width)
    assert len(strips) > 2 and all(start % 2 == 0 for start, _ in strips)
    parts = []
    for start, stop in strips:
        out, = detector.pnet.run(normalise(image[np.newaxis, start:stop]))
        parts.append(out)
    np.testing.assert_array_equal(np.concatenate(parts, axis=2), whole)


def test_shared_memory_executors_match_fresh_ones(original_mtcnn_dir, sample_images_dir):
    from agegender.backends import MXNetRunner
    from mtcnn.detector import load_fast_network
    symbol, params = load_fast_network(original_mtcnn_dir, "det1")
    params = {k: mx.nd.array(v) for k, v in params.items()}
    shared = MXNetRunner(symbol, params, shared_shape=(1, 3, 120, 120))
    fresh = MXNetRunner(symbol, params)
    image = cv2.imread(os.path.join(sample_images_dir, "test2.jpg"))
    for height, width in ((100, 90), (37, 300), (120, 120), (150, 130)):   # the last binds its own
        batch = normalise(cv2.resize(image, (width, height))[np.newaxis])
        np.testing.assert_array_equal(shared.run(batch)[0], fresh.run(batch)[0])
