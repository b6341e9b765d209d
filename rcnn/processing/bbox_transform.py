"""Box geometry in NumPy: IoU, clipping, and the SSH box/landmark encoding relative to anchors.

Boxes are ``[x1, y1, x2, y2]`` with inclusive pixel corners: a box is ``x2 - x1 + 1`` wide and its centre is
``x1 + 0.5 * (w - 1)``. Deltas are not scaled by any variance (SSH / RetinaFace ``bbox_stds`` = 1).
"""
import numpy as np


def _as_boxes(boxes, name, columns=4):
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] < columns:
        raise ValueError(f"{name} must have shape (N, >={columns}), got {boxes.shape}")
    return boxes


def _sizes_and_centres(boxes):
    """Widths, heights, centre x, centre y (float64) of (N, >=4) boxes."""
    boxes = np.asarray(boxes[:, :4], dtype=np.float64)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    return widths, heights, boxes[:, 0] + 0.5 * (widths - 1.0), boxes[:, 1] + 0.5 * (heights - 1.0)


def bbox_overlaps(boxes, query_boxes):
    """IoU of every box (N, >=4) with every query box (K, >=4) -> (N, K) float64; equals the Cython op."""
    boxes = np.asarray(_as_boxes(boxes, "boxes")[:, :4], dtype=np.float64)
    query = np.asarray(_as_boxes(query_boxes, "query_boxes")[:, :4], dtype=np.float64)
    areas = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    query_areas = (query[:, 2] - query[:, 0] + 1.0) * (query[:, 3] - query[:, 1] + 1.0)
    iw = np.minimum(boxes[:, None, 2], query[None, :, 2]) - np.maximum(boxes[:, None, 0], query[None, :, 0]) + 1.0
    ih = np.minimum(boxes[:, None, 3], query[None, :, 3]) - np.maximum(boxes[:, None, 1], query[None, :, 1]) + 1.0
    overlapping = (iw > 0) & (ih > 0)
    inter = iw * ih
    overlaps = np.zeros(inter.shape, dtype=np.float64)
    np.divide(inter, areas[:, None] + query_areas[None, :] - inter, out=overlaps, where=overlapping)
    return overlaps


def clip_points(points, im_shape):
    """Copy of ``points`` whose last axis holds interleaved ``x, y`` (e.g. (N, 10) or (N, 5, 2)), clipped
    to ``[0, w - 1] x [0, h - 1]`` for ``im_shape = (h, w, ...)``."""
    points = np.array(points, dtype=np.result_type(np.asarray(points).dtype, np.float32))
    height, width = im_shape[:2]
    points[..., 0::2] = np.clip(points[..., 0::2], 0, width - 1)
    points[..., 1::2] = np.clip(points[..., 1::2], 0, height - 1)
    return points


def clip_boxes(boxes, im_shape):
    """Copy of (N, 4k) boxes with every corner clipped to the image ``im_shape = (h, w, ...)``."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] % 4:
        raise ValueError(f"boxes must have shape (N, 4k), got {boxes.shape}")
    return clip_points(boxes, im_shape)  # x1, y1, x2, y2 is an interleaved x, y sequence


def nonlinear_transform(anchors, gt_boxes):
    """Encode ``gt_boxes`` (N, >=4) relative to ``anchors`` (N, >=4) -> (N, 4) deltas; inverse of bbox_pred."""
    aw, ah, ax, ay = _sizes_and_centres(_as_boxes(anchors, "anchors"))
    gw, gh, gx, gy = _sizes_and_centres(_as_boxes(gt_boxes, "gt_boxes"))
    return np.stack([(gx - ax) / aw, (gy - ay) / ah, np.log(gw / aw), np.log(gh / ah)], axis=1)


def bbox_pred(anchors, deltas):
    """Decode (N, 4) ``deltas`` against (N, >=4) ``anchors`` -> (N, 4) float64 boxes.

    centre = anchor centre + d * anchor size; size = exp(d) * anchor size; corners = centre -/+ 0.5 (size - 1).
    """
    aw, ah, ax, ay = _sizes_and_centres(_as_boxes(anchors, "anchors"))
    deltas = np.asarray(deltas, dtype=np.float64)
    if deltas.shape != (aw.size, 4):
        raise ValueError(f"deltas must have shape ({aw.size}, 4), got {deltas.shape}")
    centre_x = deltas[:, 0] * aw + ax
    centre_y = deltas[:, 1] * ah + ay
    half_w = 0.5 * (np.exp(deltas[:, 2]) * aw - 1.0)
    half_h = 0.5 * (np.exp(deltas[:, 3]) * ah - 1.0)
    return np.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=1)


def landmark_pred(anchors, deltas):
    """Decode five landmarks per anchor -> (N, 5, 2) float64 ``(x, y)`` points.

    ``deltas`` is (N, 10) interleaved ``x, y`` or (N, 5, 2); point = d * anchor size + anchor centre.
    """
    aw, ah, ax, ay = _sizes_and_centres(_as_boxes(anchors, "anchors"))
    deltas = np.asarray(deltas, dtype=np.float64)
    if deltas.size != aw.size * 10:
        raise ValueError(f"deltas must have shape ({aw.size}, 10) or ({aw.size}, 5, 2), got {deltas.shape}")
    deltas = deltas.reshape(-1, 5, 2)
    return np.stack([deltas[:, :, 0] * aw[:, None] + ax[:, None], deltas[:, :, 1] * ah[:, None] + ay[:, None]],
                    axis=2)
