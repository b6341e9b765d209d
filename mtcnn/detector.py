"""The MTCNN cascade: PNet on an image pyramid, RNet and ONet on crops, LNet landmark refinement.

Numerically it follows the original ``MtcnnDetector.detect_face`` (same rounding, crop dtypes, NMS
order and in-place clipping of boxes) with less waste: P-, R- and ONet run in an exact "fast form"
(:func:`fast_network`: PReLU as fused convolutions, softmax on the candidates only), all pyramid levels
of an image share one canvas cut into a few strips of bounded size (:class:`PNetCanvas`: few forwards,
bounded memory, few executor shapes), crops of equal size are resized together and the crops run as
batches. The networks run on MXNet or, from files written by ``export.py``, on
onnxruntime (:mod:`agegender.backends`); the onnx backend never imports MXNet.
"""
import math
import os

import cv2
import numpy as np

from agegender import config
from agegender.backends import MXNetRunner, OnnxRunner, check_backend
from agegender.checkpoint import checkpoint_paths
from agegender.errors import CheckpointError
from agegender.image import as_bgr_uint8
from agegender.profiling import NO_TIMER

EPOCH = 1
CELL_SIZE = 12
PNET_STRIDE = 2
LNET_OUTLIER = 0.35
# RNet/ONet/LNet batches are padded up to a power of two (at most MAX_BATCH[name]) so few executors are bound.
MAX_BATCH = {"det2": 256, "det3": 128, "det4": 128}
# MKL-DNN pools 28-channel maps several times slower than 32-channel ones, so LNet's first convs run with
# extra all-zero filters (see widen_first_conv).
WIDE_CONV1_FILTERS = {"det4": 32}
# PNet input pixels per forward: larger pyramid levels are cut into strips, see pnet_strips (bounded memory;
# strips of ~100k pixels also run faster per pixel than whole levels, their maps staying in cache).
PNET_STRIP_PIXELS = 131_072
PNET_MIN_STRIP = 32
# PNet executors kept (MXNet): they share one strip's memory, so each costs little.
PNET_EXECUTORS = 64
# Form of the exported ONNX files this detector runs (metadata "mtcnn.form", written by mtcnn.export).
ONNX_FORM = "fast-1"
ONNX_FORM_KEY = "mtcnn.form"


def read_network(model_dir, name):
    """Load ``<model_dir>/<name>-symbol.json`` + ``-0001.params`` as the symbol of mtcnn/symbols.py.

    The JSON must describe the same parameters as our symbol (checked); the params must match it in
    shape. Raises CheckpointError naming the file otherwise. Returns ``(symbol, arg_params)``.
    """
    from agegender.checkpoint import check_params_match, load_checkpoint

    from .symbols import NETWORKS
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

    from .symbols import NETWORKS
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


def fast_network(network, arg_params):
    """``(symbol, params as float32 NumPy)`` of the fast form of det1..det3 (see mtcnn.symbols).

    Each conv/FC + PReLU with weights W, bias b, slopes g becomes a layer [W; -W], [b; -b] with ReLU and
    a mix [I, -diag(g)], padded with zero filters to the widths of ``symbols.fast_widths``.
    """
    from .symbols import HEADS, LAYERS, PRELU_NAMES, fast_symbol, fast_widths
    source = {k: (v.asnumpy() if hasattr(v, "asnumpy") else np.asarray(v)).astype(np.float32)
              for k, v in arg_params.items()}
    params = {}
    widths, outputs = fast_widths(network)
    widths = iter(widths)
    channels_in = 3
    for kind, name, units, _ in LAYERS[network]:
        if kind == "pool":
            continue
        layer = f"conv{name}" if kind == "conv" else name
        prelu = f"prelu{name}" if kind == "conv" else PRELU_NAMES[name]
        weight, bias, slope = source[f"{layer}_weight"], source[f"{layer}_bias"], source[f"{prelu}_gamma"]
        filters, channels_out = next(widths)
        if kind == "conv":
            weight = _zero_pad(weight, 1, channels_in)
        params[f"{layer}_pn_weight"] = _zero_pad(np.concatenate([weight, -weight]), 0, filters)
        params[f"{layer}_pn_bias"] = _zero_pad(np.concatenate([bias, -bias]), 0, filters)
        mix = np.concatenate([np.eye(units, dtype=np.float32), -np.diag(slope)], axis=1)
        mix = _zero_pad(_zero_pad(mix, 1, filters), 0, channels_out)
        params[f"{layer}_mix_weight"] = mix.reshape(mix.shape + (1, 1)) if kind == "conv" else mix
        channels_in = channels_out
    head_weights = np.concatenate([source[f"{head}_weight"] for head, _ in HEADS[network]])
    if network == "det1":
        head_weights = _zero_pad(head_weights, 1, channels_in)
    params["heads_weight"] = _zero_pad(head_weights, 0, outputs)
    params["heads_bias"] = _zero_pad(np.concatenate([source[f"{head}_bias"] for head, _ in HEADS[network]]), 0, outputs)
    return fast_symbol(network), params


def load_fast_network(model_dir, name):
    """:func:`read_network` (checked against the original layers), then :func:`fast_network`."""
    return fast_network(name, read_network(model_dir, name)[1])


def face_probability(logits):
    """Softmax probability of class 1 from (N, 2, ...) logits, float32 as the networks' softmax."""
    logits = logits.astype(np.float32, copy=False)
    top = np.maximum(logits[:, 0], logits[:, 1])
    background, face = np.exp(logits[:, 0] - top), np.exp(logits[:, 1] - top)
    return face / (background + face)


class CascadeNetwork:
    """One cascade stage's network on a runner of :mod:`agegender.backends`."""

    def __init__(self, runner, max_batch=256):
        self.runner = runner
        self.max_batch = max_batch

    def run(self, batch):
        """Forward one float32 batch; returns the outputs as NumPy arrays."""
        return self.runner.run(batch)

    def run_batched(self, batch):
        """Forward N samples in chunks of at most ``max_batch``.

        On a runner that binds per shape (MXNet) each chunk is padded to a power-of-two batch size, so
        few executors are bound.
        """
        results = []
        for start in range(0, batch.shape[0], self.max_batch):
            chunk = batch[start:start + self.max_batch]
            n = chunk.shape[0]
            size = min(self.max_batch, 1 << (n - 1).bit_length()) if self.runner.fixed_shapes else n
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


def pnet_boxes(ys, xs, scores, regression, scale):
    """Candidate rows ``[x1, y1, x2, y2, score, dx1, dy1, dx2, dy2]`` from PNet output cells (ys, xs) of one level."""
    rows = np.empty((ys.size, 9))
    rows[:, 0] = np.round((PNET_STRIDE * xs + 1) / scale)
    rows[:, 1] = np.round((PNET_STRIDE * ys + 1) / scale)
    # +1+12: one pixel wider than the 12-px cell, as the original computes it.
    rows[:, 2] = np.round((PNET_STRIDE * xs + 1 + CELL_SIZE) / scale)
    rows[:, 3] = np.round((PNET_STRIDE * ys + 1 + CELL_SIZE) / scale)
    rows[:, 4] = scores
    rows[:, 5:9] = regression
    return rows


def pnet_output_size(size):
    """PNet's output cells along an input side of ``size`` pixels (conv 3, pool 2 'full', conv 3, conv 3)."""
    return -(-(size - 2) // 2) - 4


def pnet_strips(height, width, max_pixels=None):
    """Row ranges ``(start, stop)`` of a pyramid level for PNet forwards of at most ``max_pixels`` pixels.

    PNet is fully convolutional with stride 2 and a 12-px window: strips starting at even rows and
    overlapping by 10 rows give every output cell exactly once, each computed whole in one strip (inner
    strips have an even height, so no pooling window is cut; the last one ends at the level's own edge).
    """
    max_pixels = PNET_STRIP_PIXELS if max_pixels is None else max_pixels
    rows = max(PNET_MIN_STRIP, (max_pixels // max(width, 1)) // 2 * 2)
    if height <= rows:
        return [(0, height)]
    strips, start = [], 0
    while start + rows < height:
        strips.append((start, start + rows))
        start += rows - 10
    return strips + [(start, height)]


class MtcnnDetector:
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
        self.timer = NO_TIMER   # a profiling.StageTimer collects per-stage times (bench/)

    def _network_file(self, model_dir, name):
        """The file whose presence says that network ``name`` is available on this backend."""
        if self.backend == "onnx":
            return onnx_path(model_dir, name)
        return checkpoint_paths(os.path.join(model_dir, name), EPOCH)[1]

    def _load(self, model_dir, name):
        max_batch = MAX_BATCH.get(name, 256)
        if self.backend == "onnx":
            runner = OnnxRunner(onnx_path(model_dir, name))
            if name != "det4" and runner.metadata.get(ONNX_FORM_KEY) != ONNX_FORM:
                raise CheckpointError(f"{runner.path}: exported by an older version of this project; export it "
                                      f"again (python export.py --defaults, or --mtcnn-model DIR --out-dir DIR)")
            return CascadeNetwork(runner, max_batch)
        if name == "det4":
            return CascadeNetwork(MXNetRunner(*load_network(model_dir, name), self.ctx), max_batch)
        symbol, params = load_fast_network(model_dir, name)
        import mxnet as mx
        params = {k: mx.nd.array(v) for k, v in params.items()}
        if name == "det1":
            # One executor's memory, sized for a full strip, shared by the executors of every level shape.
            side = int(math.ceil(math.sqrt(PNET_STRIP_PIXELS)))
            runner = MXNetRunner(symbol, params, self.ctx, max_executors=PNET_EXECUTORS,
                                 shared_shape=(1, 3, side + 2, side + 2))
        else:
            runner = MXNetRunner(symbol, params, self.ctx)
        return CascadeNetwork(runner, max_batch)

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
                level = cv2.resize(image, (int(math.ceil(width * scale)), int(math.ceil(height * scale))),
                                   interpolation=cv2.INTER_LINEAR)
            found = []
            for start, stop in pnet_strips(*level.shape[:2]):
                with self.timer("pyramid resize"):
                    tensor = normalise(level[np.newaxis, start:stop])
                with self.timer("PNet forward"):
                    output, = self.pnet.run(tensor)
                with self.timer("PNet boxes + NMS"):
                    prob = face_probability(output[:, 0:2])[0]
                    ys, xs = np.nonzero(prob > self.thresholds[0])
                    found.append((ys + start // 2, xs, prob[ys, xs], output[0, 2:6][:, ys, xs].T))
            with self.timer("PNet boxes + NMS"):
                ys, xs, scores, regression = (np.concatenate(parts) for parts in zip(*found))
                if len(ys):
                    rows = pnet_boxes(ys, xs, scores, regression, scale)
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
            output, = self.rnet.run_batched(batch)
        with self.timer("RNet boxes + NMS"):
            prob = face_probability(output[:, 0:2])
            passed = prob > self.thresholds[1]
            boxes, regression = boxes[passed], output[passed, 2:6]
            boxes[:, 4] = prob[passed]
            keep = nms(boxes, 0.7)
            return square(refine(boxes[keep], regression[keep]))

    def _stage_onet(self, image, boxes):
        with self.timer("ONet crops"):
            crops = crop_resized(image, boxes, 48, np.float32)
            clip_to_image(boxes, image.shape[1], image.shape[0])
            batch = normalise(crops)
        with self.timer("ONet forward"):
            output, = self.onet.run_batched(batch)
        with self.timer("ONet boxes + NMS"):
            prob = face_probability(output[:, 0:2])
            passed = prob > self.thresholds[2]
            boxes, regression, points = boxes[passed], output[passed, 2:6], output[passed, 6:16]
            boxes[:, 4] = prob[passed]
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
