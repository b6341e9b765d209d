"""rcnn/: the Cython ops against their NumPy versions, NMS properties, anchors against the original's values, decoding."""
import importlib
import os

import numpy as np
import pytest

from rcnn.processing.bbox_transform import (bbox_overlaps, bbox_pred, clip_boxes, clip_points, landmark_pred,
                                            nonlinear_transform)
from rcnn.processing.generate_anchor import (anchors_plane, anchors_plane_numpy, generate_anchors,
                                             generate_anchors_fpn)
from rcnn.processing.nms import cpu_nms_wrapper, gpu_nms_wrapper, py_nms, py_nms_wrapper


def _compiled(name):
    """Import rcnn.cython.<name>; skip (fail under CI=true, where `make` has built it) if it is not built."""
    try:
        return importlib.import_module(f"rcnn.cython.{name}")
    except ImportError as error:
        reason = f"rcnn.cython.{name} is not built ({error}); run `make`"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " — required under CI=true")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def cpu_nms():
    return _compiled("cpu_nms").cpu_nms


@pytest.fixture(scope="module")
def bbox_overlaps_cython():
    return _compiled("bbox").bbox_overlaps_cython


@pytest.fixture(scope="module")
def anchors_cython():
    return _compiled("anchors").anchors_cython


def random_dets(rng, n, columns=5, tie_levels=None):
    """(n, columns) float32 rows [x1, y1, x2, y2, score, extra...] of clustered boxes, some degenerate
    (zero or negative size); scores drawn from ``tie_levels`` values when given, to force ties."""
    centres = rng.uniform(0, 200, size=(n, 2))
    sizes = rng.uniform(-4, 60, size=(n, 2))  # +1 convention: size 0 means x2 = x1 - 1 (empty)
    sizes[rng.random(n) < 0.1] = 0.0
    dets = np.empty((n, columns), dtype=np.float32)
    dets[:, 0:2] = centres - sizes / 2
    dets[:, 2:4] = centres + sizes / 2 - 1
    dets[:, 4] = rng.integers(0, tie_levels, n) / tie_levels if tie_levels else rng.random(n)
    dets[:, 5:] = rng.uniform(-1e6, 1e6, size=(n, columns - 5))  # must never be read
    return dets


def iou_matrix(dets):
    return bbox_overlaps(dets[:, :4], dets[:, :4])


def assert_valid_nms(dets, keep, thresh):
    """Greedy NMS contract: kept boxes pairwise below thresh; each dropped box is covered by a kept box that
    ranks before it (higher score, or equal score and lower index)."""
    iou = iou_matrix(dets)
    kept = np.asarray(keep, dtype=np.intp)
    assert len(set(keep)) == len(keep)
    rank = np.empty(len(dets), dtype=np.intp)
    rank[np.argsort(-dets[:, 4].astype(np.float64), kind="stable")] = np.arange(len(dets))
    assert np.all(np.diff(rank[kept]) > 0), "kept indices must be in score order"
    pair_iou = iou[np.ix_(kept, kept)]
    np.fill_diagonal(pair_iou, -1)
    assert np.all(pair_iou < thresh)
    for dropped in np.setdiff1d(np.arange(len(dets)), kept):
        covering = kept[rank[kept] < rank[dropped]]
        assert np.any(iou[dropped, covering] >= thresh), f"box {dropped} dropped without a cover"


@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("tie_levels", [None, 4, 1])  # distinct scores, few levels, all the same score
def test_cpu_nms_equals_py_nms(cpu_nms, thresh, tie_levels):
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 17, 300):
        dets = random_dets(rng, n, tie_levels=tie_levels)
        keep = cpu_nms(dets, thresh)
        assert keep == py_nms(dets, thresh)
        assert all(type(i) is int for i in keep)
        assert_valid_nms(dets, keep, thresh)


def test_nms_threshold_extremes(cpu_nms):
    rng = np.random.default_rng(3)
    dets = random_dets(rng, 50)
    best = int(np.argmax(dets[:, 4]))
    # IoU >= 0 holds for every pair, so only the best box survives
    assert cpu_nms(dets, 0.0) == py_nms(dets, 0.0) == [best]
    # IoU >= 1 only for identical non-empty boxes: duplicate every box with a lower score, those copies go
    copies = dets.copy()
    copies[:, 4] -= 2.0
    both = np.vstack([dets, copies])
    keep = cpu_nms(both, 1.0)
    assert keep == py_nms(both, 1.0)
    empty = (dets[:, 2] - dets[:, 0] + 1 <= 0) | (dets[:, 3] - dets[:, 1] + 1 <= 0)
    assert empty.any()
    assert sorted(keep) == list(range(50)) + [50 + i for i in np.flatnonzero(empty)]


def test_nms_identical_boxes_and_ties(cpu_nms):
    box = [10, 10, 29, 29]
    same = np.array([box + [0.5]] * 6, dtype=np.float32)
    assert cpu_nms(same, 0.3) == py_nms(same, 0.3) == [0]  # equal scores: the lowest index wins
    same[3, 4] = 0.9
    assert cpu_nms(same, 0.3) == py_nms(same, 0.3) == [3]


def test_nms_degenerate_boxes_never_overlap(cpu_nms):
    # zero-area (x2 = x1 - 1) and inverted boxes have IoU 0 with everything, themselves included
    dets = np.array([[10, 10, 9, 30, 0.9], [10, 10, 9, 30, 0.8], [20, 20, 5, 5, 0.7], [20, 20, 5, 5, 0.6],
                     [0, 0, 0, 0, 0.5], [0, 0, 0, 0, 0.4]], dtype=np.float32)  # last two: 1x1 boxes
    assert cpu_nms(dets, 0.5) == py_nms(dets, 0.5) == [0, 1, 2, 3, 4]
    assert np.all(bbox_overlaps(dets[:4], dets[:4]) == 0)


def test_nms_reads_only_five_columns(cpu_nms):
    rng = np.random.default_rng(11)
    wide = random_dets(rng, 200, columns=15)  # box, score, five landmarks: the ESSH row layout
    expected = py_nms(wide[:, :5], 0.3)
    assert cpu_nms(wide, 0.3) == expected
    assert py_nms(wide, 0.3) == expected
    assert cpu_nms(np.asfortranarray(wide), 0.3) == expected
    assert cpu_nms(wide.astype(np.float64), 0.3) == expected  # float32 values are exact in float64


def test_nms_rejects_bad_shapes(cpu_nms):
    for bad in (np.zeros((3, 4), np.float32), np.zeros(5, np.float32)):
        with pytest.raises(ValueError):
            cpu_nms(bad, 0.3)
        with pytest.raises(ValueError):
            py_nms(bad, 0.3)


def test_nms_wrappers_agree(cpu_nms):
    rng = np.random.default_rng(5)
    dets = random_dets(rng, 120, columns=15, tie_levels=8)
    expected = py_nms(dets, 0.3)
    assert py_nms_wrapper(0.3)(dets) == expected
    assert cpu_nms_wrapper(0.3)(dets) == expected
    # without gpu_nms or without a usable device this is the CPU NMS; with one, the CUDA result must agree
    assert gpu_nms_wrapper(0.3, 0)(dets) == expected


def test_gpu_nms_equals_cpu_nms(cpu_nms):
    gpu = _compiled("gpu_nms")
    if gpu.cuda_device_count() == 0:
        pytest.skip("gpu_nms is built but no CUDA device is usable here")
    rng = np.random.default_rng(13)
    for thresh in (0.0, 0.3, 1.0):
        for n in (0, 1, 63, 64, 65, 700):  # around the 64-box mask blocks
            dets = random_dets(rng, n, columns=15, tie_levels=16)
            assert gpu.gpu_nms(dets, thresh, 0) == cpu_nms(dets, thresh)


def test_bbox_overlaps_cython_equals_numpy(bbox_overlaps_cython):
    rng = np.random.default_rng(17)
    for n, k in ((0, 0), (0, 5), (5, 0), (40, 60)):
        boxes = random_dets(rng, n)[:, :4].astype(np.float64)
        query = random_dets(rng, k)[:, :4].astype(np.float64)
        expected = bbox_overlaps(boxes, query)
        assert expected.shape == (n, k)
        np.testing.assert_array_equal(bbox_overlaps_cython(boxes, query), expected)
    assert np.all((expected >= 0) & (expected <= 1))
    # query boxes with an extra label column (training gt boxes) are read as their first four columns
    labelled = np.hstack([query, np.ones((k, 1))])
    np.testing.assert_array_equal(bbox_overlaps_cython(boxes, labelled), expected)


def test_bbox_overlaps_values(bbox_overlaps_cython):
    boxes = np.array([[0, 0, 9, 9]], dtype=np.float64)  # 10 x 10 pixels
    query = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [10, 0, 19, 9], [9, 9, 9, 9]], dtype=np.float64)
    # identical; half overlap 50 / 150; touching but disjoint; one shared pixel 1 / 100
    expected = [[1.0, 1 / 3, 0.0, 0.01]]
    np.testing.assert_allclose(bbox_overlaps(boxes, query), expected, rtol=1e-12)
    np.testing.assert_allclose(bbox_overlaps_cython(boxes, query), expected, rtol=1e-12)


def test_ssh_base_anchors_match_spec():
    expected = [  # the original's base anchors, strides 32, 16, 8
        [[-248, -248, 263, 263], [-120, -120, 135, 135]],
        [[-56, -56, 71, 71], [-24, -24, 39, 39]],
        [[-8, -8, 23, 23], [0, 0, 15, 15]],
    ]
    anchors = generate_anchors_fpn()
    assert [a.dtype for a in anchors] == [np.float32] * 3
    for got, want in zip(anchors, expected):
        np.testing.assert_array_equal(got, want)
    # string stride keys (the original's config style) give the same anchors
    str_config = {str(s): {"BASE_SIZE": 16, "RATIOS": (1.0,), "SCALES": sc} for s, sc in
                  ((8, (2, 1)), (16, (8, 4)), (32, (32, 16)))}
    for got, want in zip(generate_anchors_fpn(str_config), expected):
        np.testing.assert_array_equal(got, want)


def test_generate_anchors_ratios_and_dense():
    anchors = generate_anchors(16, ratios=(0.5, 1, 2), scales=(8,))
    widths = anchors[:, 2] - anchors[:, 0] + 1
    heights = anchors[:, 3] - anchors[:, 1] + 1
    # ratio = h / w with the cell area kept (w = round(sqrt(256 / r)), h = round(w r)), times the scale
    np.testing.assert_array_equal(widths, [23 * 8, 16 * 8, 11 * 8])
    np.testing.assert_array_equal(heights, [12 * 8, 16 * 8, 22 * 8])
    np.testing.assert_allclose((anchors[:, :2] + anchors[:, 2:]) / 2, 7.5)  # all centred on the first cell
    dense = generate_anchors(16, ratios=(1,), scales=(2, 1), stride=8, dense_anchor=True)
    np.testing.assert_array_equal(dense[2:], dense[:2] + 4)


@pytest.mark.parametrize("height, width", [(0, 0), (0, 3), (1, 1), (7, 5), (40, 64)])
def test_anchors_cython_equals_numpy(anchors_cython, height, width):
    for stride, base in zip((32, 16, 8), generate_anchors_fpn()):
        plane = anchors_cython(height, width, stride, base)
        assert plane.shape == (height, width, 2, 4) and plane.dtype == np.float32
        np.testing.assert_array_equal(plane, anchors_plane_numpy(height, width, stride, base))
        np.testing.assert_array_equal(anchors_plane(height, width, stride, base), plane)


def test_anchor_plane_layout():
    base = generate_anchors_fpn()[2]  # stride 8
    flat = anchors_plane_numpy(3, 4, 8, base).reshape(-1, 4)
    # (row, col, anchor) order, anchor fastest: row r, col c, anchor k sits at (r * 4 + c) * 2 + k
    r, c, k = 2, 3, 1
    np.testing.assert_array_equal(flat[(r * 4 + c) * 2 + k], base[k] + [c * 8, r * 8, c * 8, r * 8])


def test_bbox_pred_inverts_nonlinear_transform():
    rng = np.random.default_rng(19)
    anchors = random_dets(rng, 100)[:, :4]
    anchors[:, 2:] = np.maximum(anchors[:, 2:], anchors[:, :2] + 2)  # positive sizes
    gt = random_dets(rng, 100)[:, :4].astype(np.float64)
    gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 2)
    np.testing.assert_allclose(bbox_pred(anchors, nonlinear_transform(anchors, gt)), gt, atol=1e-9)


def test_bbox_pred_and_landmark_pred_decode():
    anchor = np.array([[0, 0, 15, 15]], dtype=np.float32)  # 16 x 16, centre 7.5
    np.testing.assert_array_equal(bbox_pred(anchor, np.zeros((1, 4))), anchor)
    box = bbox_pred(anchor, np.array([[0.5, -0.25, np.log(2), 0.0]]))
    # centre (7.5 + 8, 7.5 - 4), size (32, 16): corners centre -/+ 0.5 * (size - 1)
    np.testing.assert_allclose(box, [[15.5 - 15.5, 3.5 - 7.5, 15.5 + 15.5, 3.5 + 7.5]])
    deltas = np.arange(10, dtype=np.float32).reshape(1, 10) / 10  # x0, y0, x1, y1, ...
    points = landmark_pred(anchor, deltas)
    assert points.shape == (1, 5, 2)
    np.testing.assert_allclose(points[0, :, 0], deltas[0, 0::2] * 16 + 7.5, rtol=1e-6)
    np.testing.assert_allclose(points[0, :, 1], deltas[0, 1::2] * 16 + 7.5, rtol=1e-6)
    np.testing.assert_array_equal(landmark_pred(anchor, deltas.reshape(1, 5, 2)), points)
    assert bbox_pred(np.zeros((0, 4)), np.zeros((0, 4))).shape == (0, 4)
    assert landmark_pred(np.zeros((0, 4)), np.zeros((0, 10))).shape == (0, 5, 2)


def test_clip_boxes_and_points_copy():
    boxes = np.array([[-5, -3, 700, 30], [10, 500, 20, 600]], dtype=np.float32)
    clipped = clip_boxes(boxes, (480, 640, 3))
    np.testing.assert_array_equal(clipped, [[0, 0, 639, 30], [10, 479, 20, 479]])
    assert boxes[0, 0] == -5, "the input must not be modified"
    points = np.array([[[-1, 481], [641, 5]]], dtype=np.float64)  # (N, 5 -> 2, 2) x, y pairs
    np.testing.assert_array_equal(clip_points(points, (480, 640)), [[[0, 479], [639, 5]]])
    np.testing.assert_array_equal(clip_points(points.reshape(1, 4), (480, 640)), [[0, 479, 639, 5]])
    with pytest.raises(ValueError):
        clip_boxes(np.zeros((2, 5)), (10, 10))
