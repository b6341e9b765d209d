"""ESSH-family face detector: boxes and five landmarks per face, on CPU or GPU.

:class:`ESSHDetector` runs any checkpoint with the 9-output ESSH deploy layout (see
:mod:`essh.symbols`); how it normalises pixels and decodes anchors follows the checkpoint's family
(:mod:`essh.families`). The network runs on MXNet or, from a file written by ``export.py``, on
onnxruntime (:mod:`agegender.backends`); the onnx backend never imports MXNet.
"""
import cv2
import numpy as np

from agegender import config
from agegender.backends import MXNetRunner, OnnxRunner, check_backend
from agegender.checkpoint import checkpoint_paths, parse_model_spec
from agegender.errors import CheckpointError
from agegender.image import as_bgr_uint8
from agegender.profiling import NO_TIMER
from rcnn.processing.bbox_transform import bbox_overlaps, bbox_pred, clip_boxes, clip_points, landmark_pred
from rcnn.processing.generate_anchor import anchors_plane, generate_anchors_fpn
from rcnn.processing.nms import cpu_nms_wrapper, gpu_nms_wrapper

from .families import AUX_RENAMES, FAMILIES, detect_family
from .layout import NUM_ANCHORS, STRIDES

# Metadata key of an exported ONNX file naming the checkpoint's family (written by export.py).
ONNX_FAMILY_KEY = "essh.family"
# Short side 1200 / long side 1600 (enhanced-ssh test.py) and the WIDER pyramid around 800 / 1200.
AUTO_SCALE_SIDES = (1200, 1600)
PYRAMID_SIDES = (800, 1200)
PYRAMID_SIZES = (500, 800, 1100, 1400, 1700)


def scale_for_sides(shape, short_side, long_side):
    """Scale that maps the image's short side to ``short_side`` without its long side exceeding ``long_side``."""
    height, width = shape[:2]
    return min(short_side / min(height, width), long_side / max(height, width))


def resolve_scales(scales, shape):
    """Turn a scales option into a list of floats for an image of ``shape``.

    ``scales`` is a list of factors, ``"auto"`` (shrink only when the short side exceeds 1200 or the long
    side 1600, as enhanced-ssh's test.py) or ``"pyramid"`` (enhanced-ssh's WIDER pyramid
    [500, 800, 1100, 1400, 1700] / 800 around the scale taking the short side to 800, long side <= 1200).
    """
    if isinstance(scales, str):
        if scales == "auto":
            height, width = shape[:2]
            short, long = AUTO_SCALE_SIDES
            return [scale_for_sides(shape, short, long) if min(height, width) > short or max(height, width) > long
                    else 1.0]
        if scales == "pyramid":
            base = scale_for_sides(shape, *PYRAMID_SIDES)
            return [base * size / PYRAMID_SIDES[0] for size in PYRAMID_SIZES]
        raise ValueError(f"scales must be a list of numbers, 'auto' or 'pyramid', not '{scales}'")
    scales = [float(s) for s in scales]
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive numbers, got {scales}")
    return scales


def box_voting(dets, landmarks, threshold):
    """Box voting (enhanced-ssh ``test_mode``): merge each group of boxes overlapping by IoU >= threshold.

    Takes rows in descending score order; every group (the top remaining box and all boxes overlapping
    it) becomes one box: the score-weighted mean of the group's boxes and landmarks with the group's
    top score. Unlike the original, single-box groups are kept and an empty input stays empty.
    """
    order = np.argsort(-dets[:, 4], kind="stable")
    dets, landmarks = dets[order], landmarks[order]
    remaining = np.arange(len(dets))
    merged_dets, merged_landmarks = [], []
    while remaining.size:
        top = remaining[0]
        iou = bbox_overlaps(dets[remaining], dets[top:top + 1])[:, 0]
        group = remaining[iou >= threshold]
        remaining = remaining[iou < threshold]
        weights = dets[group, 4:5]
        box = (dets[group, :4] * weights).sum(axis=0) / weights.sum()
        merged_dets.append(np.append(box, dets[top, 4]))
        merged_landmarks.append((landmarks[group] * weights[:, :, None]).sum(axis=0) / weights.sum())
    if not merged_dets:
        return np.zeros((0, 5)), np.zeros((0, 5, 2))
    return np.array(merged_dets), np.array(merged_landmarks)


class ESSHDetector:
    """Face detector for ESSH-layout checkpoints (original ESSH, insightface RetinaFace, converted default).

    ``backend="mxnet"``: ``model`` is ``"prefix,epoch"``. ``backend="onnx"``: ``model`` is an ONNX file
    written by ``export.py --essh-model`` (its metadata names the family; ``ctx`` is ignored).
    ``family`` None picks it per checkpoint (:mod:`essh.families`); ``threshold`` is the score a face
    needs; ``nms`` None takes the family's threshold; ``scales`` (None: ``[1.0]``, or "auto"/"pyramid",
    see :func:`resolve_scales`); ``voting=True`` replaces NMS by box voting; ``min_face`` (pixels, may be
    changed between calls) drops faces whose box is smaller on its longer side (None keeps all);
    ``max_size`` (pixels, None: no cap; may be changed between calls) shrinks an image whose longer side
    exceeds it before the scales apply, like insightface's ``det_size`` (default ``config.ESSH_MAX_SIZE``, chosen by recall, see README).
    """

    def __init__(self, model=config.ESSH_DEFAULT_MODEL, ctx=None, family=None, threshold=config.ESSH_THRESHOLD,
                 nms=None, scales=None, voting=False, min_face=None, max_size=config.ESSH_MAX_SIZE, max_executors=4,
                 backend="mxnet"):
        self.backend = check_backend(backend)
        self.threshold = float(threshold)
        self.min_face = min_face
        if max_size is not None and int(max_size) < 32:
            raise ValueError(f"max_size must be at least 32 pixels, got {max_size}")
        self.max_size = None if max_size is None else int(max_size)
        self.timer = NO_TIMER   # a profiling.StageTimer collects per-stage times (bench/)
        if backend == "onnx":
            self.runner = OnnxRunner(model)
            name = family or self.runner.metadata.get(ONNX_FAMILY_KEY)
            if name is None:
                raise CheckpointError(f"{model}: no '{ONNX_FAMILY_KEY}' metadata; export it with export.py "
                                      f"--essh-model or pass family=")
            expected_outputs = 3 * len(STRIDES)
            if len(self.runner.output_names) != expected_outputs:
                raise CheckpointError(f"{model}: {len(self.runner.output_names)} outputs; an ESSH deploy graph "
                                      f"has {expected_outputs}")
            self.ctx = None
        else:
            name = self._load_mxnet(model, ctx, family, max_executors)
        if name not in FAMILIES:
            raise ValueError(f"unknown detector family '{name}' (known: {', '.join(FAMILIES)})")
        self.family = FAMILIES[name]
        self.nms_threshold = self.family.nms if nms is None else float(nms)
        self.scales = [1.0] if scales is None else scales
        resolve_scales(self.scales, (1, 1))   # refuse a bad option now rather than at the first image
        self.voting = voting
        if self.ctx is not None and self.ctx.device_type == "gpu":
            self._nms = gpu_nms_wrapper(self.nms_threshold, self.ctx.device_id)
        else:
            self._nms = cpu_nms_wrapper(self.nms_threshold)
        self._ssh_base_anchors = dict(zip(STRIDES, generate_anchors_fpn()))

    def _load_mxnet(self, model, ctx, family, max_executors):
        """Load and check the checkpoint, set ``self.runner``; returns the family name."""
        import mxnet as mx
        from agegender.checkpoint import load_checkpoint
        self.prefix, self.epoch = parse_model_spec(model)
        self.ctx = ctx or mx.cpu()
        sym, arg_params, aux_params = load_checkpoint(self.prefix, self.epoch, aux_renames=AUX_RENAMES)
        params_path = checkpoint_paths(self.prefix, self.epoch)[1]
        name = family or detect_family(self.prefix, sym)
        self._check_layout(sym, arg_params, aux_params, params_path)
        self.runner = MXNetRunner(sym, {**arg_params, **aux_params}, self.ctx, max_executors=max_executors)
        return name

    @staticmethod
    def _check_layout(sym, arg_params, aux_params, params_path):
        """Raise CheckpointError unless ``sym`` has the 9 ESSH outputs and the params fit it."""
        from agegender.checkpoint import check_params_match
        data_shape = {"data": (1, 3, 128, 128)}
        check_params_match(sym, arg_params, aux_params, data_shape, params_path)
        out_shapes = sym.infer_shape(**data_shape)[1]
        channels = [shape[1] for shape in out_shapes]
        expected = [2 * NUM_ANCHORS, 4 * NUM_ANCHORS, 10 * NUM_ANCHORS] * len(STRIDES)
        if channels != expected:
            raise CheckpointError(f"{params_path}: network outputs have {channels} channels; an ESSH deploy "
                                  f"graph has {expected} ([cls, bbox, landmark] x strides 32, 16, 8)")

    def input_tensor(self, img_bgr, scale=1.0):
        """The network input for ``img_bgr`` resized by ``scale``: 1 x 3 x h x w float32, family-normalised."""
        if scale != 1.0:
            img_bgr = cv2.resize(img_bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        pixels = img_bgr.astype(np.float32)
        if self.family.channel_order == "RGB":
            pixels = pixels[:, :, ::-1]
        pixels = pixels - np.array(self.family.means, dtype=np.float32)
        return pixels.transpose(2, 0, 1)[np.newaxis]

    def forward(self, tensor):
        """Run the network on a 1 x 3 x h x w tensor; returns the 9 outputs as numpy arrays."""
        return self.runner.run(tensor)

    def _anchors(self, stride, height, width):
        """Anchors of one stride over an output of height x width, in (row, col, anchor) order."""
        if self.family.decoding == "ssh":
            return anchors_plane(height, width, stride, self._ssh_base_anchors[stride]).reshape(-1, 4)
        sizes = dict(self.family.anchor_sizes)[stride]
        rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        centres = np.stack([(cols.ravel() + 0.5) * stride, (rows.ravel() + 0.5) * stride], axis=1)
        centres = np.repeat(centres, len(sizes), axis=0)
        sizes = np.tile(np.asarray(sizes, dtype=np.float64), height * width)[:, None]
        return np.hstack([centres, sizes, sizes])   # cx, cy, w, h

    def _decode(self, anchors, box_deltas, landmark_deltas):
        """Boxes (N, 4) x1, y1, x2, y2 and landmarks (N, 5, 2) from anchors and network deltas."""
        if self.family.decoding == "ssh":
            return bbox_pred(anchors, box_deltas), landmark_pred(anchors, landmark_deltas)
        centre_var, size_var = self.family.variances
        centres, sizes = anchors[:, :2], anchors[:, 2:]
        box_centres = centres + box_deltas[:, :2] * centre_var * sizes
        box_sizes = sizes * np.exp(box_deltas[:, 2:] * size_var)
        boxes = np.hstack([box_centres - box_sizes / 2, box_centres + box_sizes / 2])
        landmarks = centres[:, None, :] + landmark_deltas * centre_var * sizes[:, None, :]
        return boxes, landmarks

    def _candidates(self, img_bgr, scale, threshold, strides):
        """Decoded (scores, boxes, landmarks) at one scale, in original image coordinates."""
        with self.timer("resize + normalise"):
            tensor = self.input_tensor(img_bgr, scale)
        with self.timer("forward"):
            outputs = self.forward(tensor)
        with self.timer("decode"):
            return self._decode_outputs(outputs, tensor.shape[2:], scale, threshold, strides)

    def _decode_outputs(self, outputs, image_shape, scale, threshold, strides):
        results = []
        for index, stride in enumerate(STRIDES):
            if stride not in strides:
                continue
            cls, bbox, points = (out[0] for out in outputs[3 * index:3 * index + 3])
            height, width = cls.shape[1:]
            scores = cls[NUM_ANCHORS:].transpose(1, 2, 0).reshape(-1)
            keep = np.flatnonzero(scores >= threshold)
            if self.family.pre_nms_top is not None and keep.size > self.family.pre_nms_top:
                keep = keep[np.argsort(-scores[keep], kind="stable")[:self.family.pre_nms_top]]
            box_deltas = bbox.transpose(1, 2, 0).reshape(-1, 4)[keep].astype(np.float64)
            landmark_deltas = points.transpose(1, 2, 0).reshape(-1, 5, 2)[keep].astype(np.float64)
            anchors = self._anchors(stride, height, width)[keep].astype(np.float64)
            boxes, landmarks = self._decode(anchors, box_deltas, landmark_deltas)
            boxes = clip_boxes(boxes, image_shape)
            if self.family.clip_landmarks:
                landmarks = clip_points(landmarks, image_shape)
            results.append((scores[keep].astype(np.float64), boxes / scale, landmarks / scale))
        return results

    def detect(self, img_bgr):
        """Detect faces in a BGR image (grey, BGRA and 16-bit are converted; ImageError for other arrays).

        Returns ``(boxes, landmarks)``: boxes (N, 5) float64 ``[x1, y1, x2, y2, score]`` by descending
        score, landmarks (N, 5, 2) float64 (left eye, right eye, nose, left and right mouth corner,
        image-left first). No face gives arrays of shape (0, 5) and (0, 5, 2).
        With several scales, stride 32 is skipped at the largest one (as the original).
        """
        img_bgr = as_bgr_uint8(img_bgr)
        if img_bgr.size == 0:
            return np.zeros((0, 5)), np.zeros((0, 5, 2))
        boxes, landmarks = self._detect(img_bgr)
        if self.min_face and len(boxes):
            large = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= self.min_face
            boxes, landmarks = boxes[large], landmarks[large]
        return boxes, landmarks

    def _detect(self, img_bgr):
        """Faces of every scale, merged by NMS (or box voting), by descending score."""
        scales = resolve_scales(self.scales, img_bgr.shape)
        longest = max(img_bgr.shape[:2])
        if self.max_size is not None and longest > self.max_size:
            scales = [scale * self.max_size / longest for scale in scales]
        candidates = []
        for scale in scales:
            strides = STRIDES[1:] if len(scales) > 1 and scale == max(scales) else STRIDES
            candidates += self._candidates(img_bgr, scale, self.threshold, strides)
        scores = np.concatenate([c[0] for c in candidates]) if candidates else np.zeros(0)
        if scores.size == 0:
            return np.zeros((0, 5)), np.zeros((0, 5, 2))
        boxes = np.concatenate([c[1] for c in candidates])
        landmarks = np.concatenate([c[2] for c in candidates])
        order = np.argsort(-scores, kind="stable")
        dets = np.hstack([boxes, scores[:, None]])[order]
        landmarks = landmarks[order]
        with self.timer("NMS"):
            if self.voting:
                return box_voting(dets, landmarks, self.nms_threshold)
            keep = self._nms(dets.astype(np.float32))
            return dets[keep], landmarks[keep]
