"""Base anchors per feature-map stride (SSH/ESSH) and their placement over a feature map."""
import numpy as np

# SSH / ESSH / RetinaFace anchors: stride -> base size, aspect ratios (h / w), scales (anchor side = base * scale)
SSH_ANCHOR_CONFIG = {
    32: {"BASE_SIZE": 16, "RATIOS": (1.0,), "SCALES": (32, 16)},
    16: {"BASE_SIZE": 16, "RATIOS": (1.0,), "SCALES": (8, 4)},
    8: {"BASE_SIZE": 16, "RATIOS": (1.0,), "SCALES": (2, 1)},
}


def _corners(widths, heights, centre_x, centre_y):
    """(x1, y1, x2, y2) rows of boxes with the given sizes around one centre (inclusive pixel corners)."""
    widths, heights = np.asarray(widths, dtype=np.float64), np.asarray(heights, dtype=np.float64)
    return np.stack([centre_x - 0.5 * (widths - 1), centre_y - 0.5 * (heights - 1),
                     centre_x + 0.5 * (widths - 1), centre_y + 0.5 * (heights - 1)], axis=1)


def generate_anchors(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32), stride=16, dense_anchor=False):
    """Base anchors (len(ratios) * len(scales) [* 2], 4) float32 centred on the cell ``[0, 0, base-1, base-1]``.

    Ratio-major, scale-minor order. For each ratio r the cell's area is kept: w = round(sqrt(base^2 / r)),
    h = round(w * r); each is then multiplied by the scale. ``dense_anchor`` appends a copy shifted by
    ``stride / 2`` in x and y.
    """
    centre = 0.5 * (base_size - 1)
    ratios = np.asarray(ratios, dtype=np.float64)
    ratio_widths = np.round(np.sqrt(base_size * base_size / ratios))
    ratio_heights = np.round(ratio_widths * ratios)
    scales = np.asarray(scales, dtype=np.float64)
    widths = (ratio_widths[:, None] * scales[None, :]).ravel()
    heights = (ratio_heights[:, None] * scales[None, :]).ravel()
    anchors = _corners(widths, heights, centre, centre)
    if dense_anchor:
        if stride % 2:
            raise ValueError(f"dense anchors need an even stride, got {stride}")
        anchors = np.vstack([anchors, anchors + stride // 2])
    return anchors.astype(np.float32)


def generate_anchors_fpn(config=None, dense_anchor=False):
    """Base anchors of every stride in ``config`` (default :data:`SSH_ANCHOR_CONFIG`), as a list ordered by
    descending stride (32, 16, 8 — the order of the detector outputs).

    ``config`` maps stride (int or str) to ``{"BASE_SIZE", "RATIOS", "SCALES"}``.
    """
    config = SSH_ANCHOR_CONFIG if config is None else config
    by_stride = {int(stride): settings for stride, settings in config.items()}
    return [generate_anchors(settings["BASE_SIZE"], settings["RATIOS"], settings["SCALES"], stride, dense_anchor)
            for stride, settings in sorted(by_stride.items(), reverse=True)]


def anchors_plane_numpy(height, width, stride, base_anchors):
    """NumPy version of :func:`anchors_plane`."""
    base_anchors = np.asarray(base_anchors, dtype=np.float32)
    if base_anchors.ndim != 2 or base_anchors.shape[1] != 4:
        raise ValueError(f"base_anchors must have shape (A, 4), got {base_anchors.shape}")
    shift_x = (np.arange(width) * stride).astype(np.float32)
    shift_y = (np.arange(height) * stride).astype(np.float32)
    shifts = np.zeros((height, width, 1, 4), dtype=np.float32)
    shifts[..., 0::2] = shift_x[None, :, None, None]
    shifts[..., 1::2] = shift_y[:, None, None, None]
    return base_anchors[None, None, :, :] + shifts


def anchors_plane(height, width, stride, base_anchors):
    """Anchors of every cell of a ``height`` x ``width`` feature map -> (height, width, A, 4) float32.

    Anchor ``[r, c, k]`` is ``base_anchors[k] + (c, r, c, r) * stride``; reshaped to (-1, 4) the order is
    row, column, anchor (anchor fastest), matching the network outputs transposed to (N, H, W, C).
    Uses the compiled ``anchors_cython`` when built, else :func:`anchors_plane_numpy` (same result).
    """
    try:
        from rcnn.cython.anchors import anchors_cython
    except ImportError:
        return anchors_plane_numpy(height, width, stride, base_anchors)
    return anchors_cython(height, width, stride, base_anchors)
