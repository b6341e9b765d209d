"""Frozen copy of the MTCNN detector as it was before issue 14 (the benchmark's "before" path).

Kept only so that ``bench/`` can measure today's code against the old one in the same run; it is not
used by the project. Same arithmetic as :mod:`mtcnn.detector` (the golden faces), but: PNet one forward
per pyramid level with MXNet's PReLU and softmax, per-box crops, executors cached per shape. Stage
times go to ``timer`` (see :mod:`agegender.profiling`). ``export_onnx`` writes the old ONNX form.
"""
import math
import os

import cv2
import numpy as np

from agegender import config
from agegender.backends import MXNetRunner, OnnxRunner, check_backend
from agegender.checkpoint import checkpoint_paths
from agegender.errors import CheckpointError
from agegender.profiling import NO_TIMER

EPOCH = 1
CELL_SIZE = 12
PNET_STRIDE = 2
LNET_OUTLIER = 0.35
# RNet/ONet/LNet batches are padded up to a power of two (at most MAX_BATCH) so few executors are bound.
MAX_BATCH = 256
# MKL-DNN pools 10- or 28-channel maps several times slower than 16- or 32-channel ones, so the first
# conv of these networks runs with extra all-zero filters (see widen_first_conv).
WIDE_CONV1_FILTERS = {"det1": 16, "det2": 32, "det4": 32}
# PNet executors are cached per pyramid level shape; beyond this many input values (3 per pixel) the
# least recently used go. 36M holds the whole pyramid of a 5334x2767 image (about 1.5 GB).
PNET_CACHE_VALUES = 36_000_000


def read_network(model_dir, name):
    """Load ``<model_dir>/<name>-symbol.json`` + ``-0001.params`` as the symbol of mtcnn/symbols.py.

    The JSON must describe the same parameters as our symbol (checked); the params must match it in
    shape. Raises CheckpointError naming the file otherwise. Returns ``(symbol, arg_params)``.
    """
    from agegender.checkpoint import check_params_match, load_checkpoint

    from mtcnn.symbols import NETWORKS
    build, input_shape = NETWORKS[name]
    prefix = os.path.join(model_dir, name)
    sym_path, params_path = checkpoint_paths(prefix, EPOCH)
    file_sym, arg_params, aux_params = load_checkpoint(prefix, EPOCH)
    symbol = build()
    expected = set(symbol.list_arguments()) - {"data"}
    declared = {n for n in file_sym.list_arguments() if n != "data" and not n.endswith("_label")}
    if declared != expected:
        missing = sorted(expected - declared) or sorted(declared - expected)
        raise CheckpointError(f"{sym_path}: not an MTCNN {name} network (parameters differ: {', '.join(missing[:3])})")
    check_params_match(symbol, arg_params, aux_params, {"data": input_shape}, params_path)
    return symbol, arg_params


def load_network(model_dir, name):
    """:func:`read_network` with conv1 widened for speed (see widen_first_conv); returns ``(symbol, params)``."""
    return widen_first_conv(name, read_network(model_dir, name)[1])


def widen_first_conv(network, arg_params):
    """Return ``(symbol, params)`` with conv1 widened to WIDE_CONV1_FILTERS[network] filters.

    The extra filters have zero weights and bias, so they output 0 (and PReLU/pooling keep 0); conv2
    gets zero weights for them, so the network computes the same function.
    """
    import mxnet as mx

    from mtcnn.symbols import NETWORKS
    build, _ = NETWORKS[network]
    filters = WIDE_CONV1_FILTERS.get(network)
    if filters is None:
        return build(), arg_params
    params = dict(arg_params)
    suffixes = ["_1", "_2", "_3", "_4", "_5"] if network == "det4" else [""]
    for suffix in suffixes:
        for name, axis in ((f"conv1{suffix}_weight", 0), (f"conv1{suffix}_bias", 0),
                           (f"prelu1{suffix}_gamma", 0), (f"conv2{suffix}_weight", 1)):
            params[name] = mx.nd.array(_zero_pad(arg_params[name].asnumpy(), axis, filters))
    return build(conv1_filters=filters), params


def _zero_pad(array, axis, size):
    """Append zeros along ``axis`` up to ``size``."""
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, size - array.shape[axis])
    return np.pad(array, widths)


class CascadeNetwork:
    """One cascade stage's network on a runner of :mod:`agegender.backends`."""

    def __init__(self, runner):
        self.runner = runner

    def run(self, batch):
        """Forward one float32 batch; returns the outputs as NumPy arrays."""
        return self.runner.run(batch)

    def run_batched(self, batch):
        """Forward N samples in chunks of at most MAX_BATCH.

        On a runner that binds per shape (MXNet) each chunk is padded to a power-of-two batch size, so
        few executors are bound.
        """
        results = []
        for start in range(0, batch.shape[0], MAX_BATCH):
            chunk = batch[start:start + MAX_BATCH]
            n = chunk.shape[0]
            size = min(MAX_BATCH, 1 << (n - 1).bit_length()) if self.runner.fixed_shapes else n
            if size != n:
                chunk = np.concatenate([chunk, np.zeros((size - n,) + chunk.shape[1:], np.float32)])
            results.append([out[:n] for out in self.run(chunk)])
        return [np.concatenate(parts) for parts in zip(*results)]


def onnx_path(model_dir, name):
    """Where ``export.py --mtcnn-model`` writes network ``name`` (det1..det4) for ``--out-dir model_dir``."""
    return os.path.join(model_dir, f"{name}.onnx")


def normalise(images_hwc):
    """(..., H, W, 3) pixels -> (..., 3, H, W) float32 ``(x - 127.5) * 0.0078125``, channel order kept."""
    tensor = np.moveaxis(np.asarray(images_hwc, dtype=np.float32), -1, -3)
    return (tensor - 127.5) * 0.0078125


def nms(boxes, threshold, mode="union"):
    """Greedy non-maximum suppression on rows ``[x1, y1, x2, y2, score, ...]`` (inclusive pixel corners).

    Takes the highest score, drops every remaining box whose overlap with it exceeds ``threshold``
    (intersection over union, or over the smaller area with ``mode="min"``), repeats. Returns the kept
    row indices in descending score order; ties resolve as the original (``np.argsort`` of the scores).
    The overlapping pairs are found up front, vectorised, so the greedy pass itself is cheap.
    """
    starts, neighbours = _overlapping_pairs(boxes, threshold, mode)
    alive = np.ones(len(boxes), bool)
    keep = []
    for best in np.argsort(boxes[:, 4])[::-1]:
        if alive[best]:
            keep.append(best)
            alive[neighbours[starts[best]:starts[best + 1]]] = False
    return np.array(keep, dtype=np.int64)


def _overlapping_pairs(boxes, threshold, mode, max_pairs=2_000_000):
    """For each box i, the boxes j whose overlap with it exceeds ``threshold``, as CSR arrays.

    Candidates come from a sweep on x1 within groups of similar width (widths within a factor of two),
    so a few large boxes do not widen the search window of all the small ones.
    """
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    width_group = np.floor(np.log2(np.maximum(x2 - x1 + 1, 1))).astype(np.int64)
    firsts, seconds = [], []
    for group in np.unique(width_group):
        members = np.nonzero(width_group == group)[0]
        members = members[np.argsort(x1[members], kind="stable")]
        member_x1 = x1[members]
        widest = float((x2[members] - x1[members]).max())
        low = np.searchsorted(member_x1, x1 - widest - 1, side="left")
        high = np.searchsorted(member_x1, x2 + 1, side="right")
        counts = high - low
        chunk_starts = np.concatenate([[0], np.nonzero(np.diff(np.cumsum(counts) // max_pairs))[0] + 1])
        for first_box, last_box in zip(chunk_starts, np.append(chunk_starts[1:], len(boxes))):
            chunk_counts = counts[first_box:last_box]
            i = np.repeat(np.arange(first_box, last_box), chunk_counts)
            offsets = np.arange(len(i)) - np.repeat(np.cumsum(chunk_counts) - chunk_counts, chunk_counts)
            j = members[np.repeat(low[first_box:last_box], chunk_counts) + offsets]
            inter = (np.maximum(0.0, np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]) + 1)
                     * np.maximum(0.0, np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]) + 1))
            if mode == "min":
                overlap = inter / np.minimum(areas[i], areas[j])
            else:
                overlap = inter / (areas[i] + areas[j] - inter)
            suppress = (overlap > threshold) & (i != j)
            firsts.append(i[suppress])
            seconds.append(j[suppress])
    first = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)
    second = np.concatenate(seconds) if seconds else np.zeros(0, np.int64)
    order = np.argsort(first, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(first, minlength=len(boxes)))])
    return starts, second[order]


def refine(boxes, regression):
    """Shift box corners by the regression offsets scaled by the box width/height (returns a copy)."""
    refined = boxes.copy()
    width = boxes[:, 2] - boxes[:, 0] + 1
    height = boxes[:, 3] - boxes[:, 1] + 1
    refined[:, 0:4] += regression[:, 0:4] * np.stack([width, height, width, height], axis=1)
    return refined


def square(boxes):
    """Grow each box to a square of side max(w, h) about its centre, then round corners (half to even)."""
    squared = boxes.copy()
    width = boxes[:, 2] - boxes[:, 0] + 1
    height = boxes[:, 3] - boxes[:, 1] + 1
    side = np.maximum(width, height)
    squared[:, 0] = boxes[:, 0] + width * 0.5 - side * 0.5
    squared[:, 1] = boxes[:, 1] + height * 0.5 - side * 0.5
    squared[:, 2] = squared[:, 0] + side - 1
    squared[:, 3] = squared[:, 1] + side - 1
    squared[:, 0:4] = np.round(squared[:, 0:4])
    return squared


def crop_resized(image, boxes, size, dtype):
    """Crop boxes (integral corners, may leave the image: zero-padded) and resize each to size x size.

    ``dtype`` is the crop's type before the bilinear resize: uint8 (RNet) rounds the resized pixels,
    float32 (ONet, LNet) does not; the original uses both. Returns (N, size, size, 3) in that dtype.
    """
    height, width = image.shape[:2]
    corners = boxes[:, 0:4].astype(np.int32)
    x1, y1, x2, y2 = corners.T
    src_x1, src_y1 = np.maximum(x1, 0), np.maximum(y1, 0)
    src_x2, src_y2 = np.minimum(x2, width - 1), np.minimum(y2, height - 1)
    inside = (x1 == src_x1) & (y1 == src_y1) & (x2 == src_x2) & (y2 == src_y2)
    crops = np.empty((len(boxes), size, size, 3), dtype)
    for i in range(len(boxes)):
        if inside[i]:
            patch = image[y1[i]:y2[i] + 1, x1[i]:x2[i] + 1].astype(dtype, copy=False)
        else:
            patch = np.zeros((y2[i] - y1[i] + 1, x2[i] - x1[i] + 1, 3), dtype)
            if src_x2[i] >= src_x1[i] and src_y2[i] >= src_y1[i]:
                patch[src_y1[i] - y1[i]:src_y2[i] - y1[i] + 1, src_x1[i] - x1[i]:src_x2[i] - x1[i] + 1] = \
                    image[src_y1[i]:src_y2[i] + 1, src_x1[i]:src_x2[i] + 1]
        crops[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
    return crops


def clip_to_image(boxes, width, height):
    """Clip box corners to the image in place (the original's ``pad()`` side effect)."""
    np.maximum(boxes[:, 0:2], 0, out=boxes[:, 0:2])
    np.minimum(boxes[:, 2], width - 1, out=boxes[:, 2])
    np.minimum(boxes[:, 3], height - 1, out=boxes[:, 3])


def pyramid_scales(height, width, min_face, factor):
    """Scales at which PNet's 12-px cell matches faces from ``min_face`` px up to the image size."""
    first = float(CELL_SIZE) / min_face
    side = min(height, width) * first
    scales = []
    while side > CELL_SIZE:
        scales.append(first * factor ** len(scales))
        side *= factor
    return scales


def pnet_boxes(prob, regression, scale, threshold):
    """Candidate rows ``[x1, y1, x2, y2, score, dx1, dy1, dx2, dy2]`` from one PNet output map."""
    ys, xs = np.nonzero(prob > threshold)
    rows = np.empty((ys.size, 9))
    rows[:, 0] = np.round((PNET_STRIDE * xs + 1) / scale)
    rows[:, 1] = np.round((PNET_STRIDE * ys + 1) / scale)
    # +1+12: one pixel wider than the 12-px cell, as the original computes it.
    rows[:, 2] = np.round((PNET_STRIDE * xs + 1 + CELL_SIZE) / scale)
    rows[:, 3] = np.round((PNET_STRIDE * ys + 1 + CELL_SIZE) / scale)
    rows[:, 4] = prob[ys, xs]
    rows[:, 5:9] = regression[:, ys, xs].T
    return rows


def as_bgr_uint8(image):
    """Return ``image`` as H x W x 3 uint8 BGR: grey is replicated, BGRA drops alpha, uint16 is scaled.

    Raises ValueError for other layouts and dtypes.
    """
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"MTCNN expects a uint8 (or uint16) image, got dtype {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"MTCNN expects an H x W, H x W x 3 (BGR) or H x W x 4 (BGRA) image, got shape {image.shape}")


class BaselineMtcnnDetector:
    """Multi-task cascaded face detector with five landmarks.

    ``backend="mxnet"``: ``model_dir`` holds ``det1``..``det3`` (and optionally ``det4`` = LNet) as
    ``detN-symbol.json`` + ``detN-0001.params``. ``backend="onnx"``: it holds ``det1.onnx``..``det3.onnx``
    (optionally ``det4.onnx``) written by ``export.py`` and ``ctx`` is ignored. Without ``det4``,
    ``accurate_landmark`` is silently off and the landmarks are ONet's.
    ``detect(image)`` returns ``(boxes (N,5) [x1,y1,x2,y2,score], landmarks (N,5,2) (x,y))``.
    """

    def __init__(self, model_dir=config.MTCNN_MODEL_DIR, ctx=None, min_face=config.MTCNN_MIN_FACE,
                 thresholds=config.MTCNN_THRESHOLDS, factor=config.MTCNN_FACTOR, accurate_landmark=True,
                 backend="mxnet"):
        if not 0 < factor < 1:
            raise ValueError(f"pyramid factor must be between 0 and 1, got {factor}")
        if min_face <= 0:
            raise ValueError(f"min_face must be positive, got {min_face}")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds needs one value per stage (PNet, RNet, ONet), got {thresholds}")
        self.backend = check_backend(backend)
        self.min_face = min_face
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        if not os.path.isdir(model_dir):
            raise CheckpointError(f"{model_dir}: MTCNN model folder not found (run `make models`)")
        self.ctx = None
        if backend == "mxnet":
            import mxnet as mx
            self.ctx = ctx or mx.cpu()
        self.pnet, self.rnet, self.onet = (self._load(model_dir, name) for name in ("det1", "det2", "det3"))
        has_lnet = os.path.exists(self._network_file(model_dir, "det4"))
        self.lnet = self._load(model_dir, "det4") if has_lnet else None
        self.accurate_landmark = bool(accurate_landmark and self.lnet is not None)
        self.timer = NO_TIMER

    def _network_file(self, model_dir, name):
        """The file whose presence says that network ``name`` is available on this backend."""
        if self.backend == "onnx":
            return onnx_path(model_dir, name)
        return checkpoint_paths(os.path.join(model_dir, name), EPOCH)[1]

    def _load(self, model_dir, name):
        if self.backend == "onnx":
            return CascadeNetwork(OnnxRunner(onnx_path(model_dir, name)))
        cache = PNET_CACHE_VALUES if name == "det1" else None
        return CascadeNetwork(MXNetRunner(*load_network(model_dir, name), self.ctx, max_cached_values=cache))

    def detect(self, image):
        """Detect faces in a BGR image; returns ``(boxes (N,5) float64, landmarks (N,5,2) float64)``.

        Landmarks are left eye, right eye, nose, left and right mouth corner (image-left first). Faces
        come in descending ONet score order after the last NMS, as in the original.
        """
        image = as_bgr_uint8(image)
        boxes = self._stage_pnet(image)
        if len(boxes):
            boxes = self._stage_rnet(image, boxes)
        if not len(boxes):
            return np.zeros((0, 5)), np.zeros((0, 5, 2))
        boxes, points = self._stage_onet(image, boxes)
        if len(boxes) and self.accurate_landmark:
            with self.timer("landmarks (LNet)"):
                points = self._stage_lnet(image, boxes, points)
        landmarks = np.stack([points[:, 0:5], points[:, 5:10]], axis=2).astype(np.float64)
        return boxes[:, 0:5].astype(np.float64), landmarks

    def _stage_pnet(self, image):
        height, width = image.shape[:2]
        per_scale = []
        for scale in pyramid_scales(height, width, self.min_face, self.factor):
            with self.timer("pyramid resize"):
                scaled = cv2.resize(image, (int(math.ceil(width * scale)), int(math.ceil(height * scale))),
                                    interpolation=cv2.INTER_LINEAR)
                tensor = normalise(scaled[np.newaxis])
            with self.timer("PNet forward"):
                regression, prob = self.pnet.run(tensor)
            with self.timer("PNet boxes + NMS"):
                rows = pnet_boxes(prob[0, 1], regression[0], scale, self.thresholds[0])
                if len(rows):
                    per_scale.append(rows[nms(rows, 0.5)])
        if not per_scale:
            return np.zeros((0, 9))
        with self.timer("PNet boxes + NMS"):
            boxes = np.concatenate(per_scale)
            boxes = boxes[nms(boxes, 0.7)]
            return square(refine(boxes[:, 0:5], boxes[:, 5:9]))

    def _stage_rnet(self, image, boxes):
        with self.timer("RNet crops"):
            crops = crop_resized(image, boxes, 24, np.uint8)
            clip_to_image(boxes, image.shape[1], image.shape[0])
            batch = normalise(crops)
        with self.timer("RNet forward"):
            regression, prob = self.rnet.run_batched(batch)
        with self.timer("RNet boxes + NMS"):
            return self._rnet_boxes(boxes, regression, prob)

    def _rnet_boxes(self, boxes, regression, prob):
        passed = prob[:, 1] > self.thresholds[1]
        boxes, regression = boxes[passed], regression[passed]
        boxes[:, 4] = prob[passed, 1]
        keep = nms(boxes, 0.7)
        return square(refine(boxes[keep], regression[keep]))

    def _stage_onet(self, image, boxes):
        with self.timer("ONet crops"):
            crops = crop_resized(image, boxes, 48, np.float32)
            clip_to_image(boxes, image.shape[1], image.shape[0])
            batch = normalise(crops)
        with self.timer("ONet forward"):
            landmarks, regression, prob = self.onet.run_batched(batch)
        with self.timer("ONet boxes + NMS"):
            return self._onet_boxes(boxes, landmarks, regression, prob)

    def _onet_boxes(self, boxes, landmarks, regression, prob):
        passed = prob[:, 1] > self.thresholds[2]
        boxes, regression, points = boxes[passed], regression[passed], landmarks[passed]
        boxes[:, 4] = prob[passed, 1]
        width = (boxes[:, 2] - boxes[:, 0] + 1)[:, np.newaxis]
        height = (boxes[:, 3] - boxes[:, 1] + 1)[:, np.newaxis]
        # Stored back into ONet's float32 array, as the original does.
        points[:, 0:5] = boxes[:, 0:1] + width * points[:, 0:5]
        points[:, 5:10] = boxes[:, 1:2] + height * points[:, 5:10]
        boxes = refine(boxes, regression)
        keep = nms(boxes, 0.7, mode="min")
        return boxes[keep], points[keep]

    def _stage_lnet(self, image, boxes, points):
        side = np.maximum(boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1)
        patch = np.round(side * 0.25)
        patch[np.mod(patch, 2) == 1] += 1
        # Top-left corner of each landmark's patch, landmark-major: (5, N).
        left = np.round(points[:, 0:5].T - 0.5 * patch)
        top = np.round(points[:, 5:10].T - 0.5 * patch)
        patch_boxes = np.stack([left, top, left + patch - 1, top + patch - 1], axis=2).reshape(-1, 4)
        crops = crop_resized(image, patch_boxes, 24, np.float32).reshape((5, len(boxes), 24, 24, 3))
        batch = normalise(crops).transpose(1, 0, 2, 3, 4).reshape(len(boxes), 15, 24, 24)
        offsets = np.stack(self.lnet.run_batched(batch))               # (5, N, 2)
        outliers = np.any(np.abs(offsets - 0.5) > LNET_OUTLIER, axis=2)
        offsets[outliers] = 0.5
        refined_x = left + offsets[:, :, 0] * patch
        refined_y = top + offsets[:, :, 1] * patch
        return np.concatenate([refined_x.T, refined_y.T], axis=1).astype(np.int32)


def export_onnx(model_dir, out_dir):
    """Write ``detN.onnx`` of ``model_dir`` in the form this baseline runs (the original layers)."""
    from agegender.onnx_export import save_model, symbol_to_onnx
    from mtcnn.symbols import NETWORKS
    written = []
    for name, (_, input_shape) in NETWORKS.items():
        if name == "det4" and not os.path.exists(checkpoint_paths(os.path.join(model_dir, name), EPOCH)[1]):
            continue
        symbol, arg_params = read_network(model_dir, name)
        dynamic = (0, 2, 3) if name == "det1" else (0,)
        model = symbol_to_onnx(symbol, arg_params, {}, input_shape, dynamic_axes=dynamic, graph_name=name)
        written.append(save_model(model, onnx_path(out_dir, name)))
    return written
