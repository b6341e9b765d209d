"""Training/evaluation iterator over a pack of aligned faces.

Differences from the original ``FaceImageIter``: the last partial batch is kept (padded, ``batch.pad``
tells how many samples are padding) so evaluation sees every face; colour jitter clips to 0..255;
images are decoded and augmented in a background thread; an optional random crop/scale jitter.
Cutout fills with 128, as the original (the network subtracts 127.5, so 128 is "no signal").
"""
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional, Tuple

import cv2
import mxnet as mx
import numpy as np

from agegender.config import AGE_CLASSES, MAX_AGE
from agegender.errors import DataError, ImageError
from agegender.image import decode_image

from .records import PackReader

CUTOUT_FILL = 128
JITTER_STRENGTH = 0.125                  # brightness, contrast and saturation, as mx.image.ColorJitterAug
JPEG_JITTER_QUALITY = (2, 20)            # re-compression quality range when color_jitter > 1
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)   # RGB weights of mx.image's grey conversion


def encode_labels(gender, age):
    """Return the 101-float training label: [gender, b_1..b_100] with b_j = 1 for j <= age."""
    age = min(max(int(age), 1), MAX_AGE)
    label = np.zeros(1 + AGE_CLASSES, np.float32)
    label[0] = gender
    label[1:1 + age] = 1.0
    return label


class FaceImageIter(mx.io.DataIter):
    """Batches of (B, 3, H, W) float32 RGB 0..255 faces and (B, 101) labels from ``path_imgrec``.

    Augmentations (training): ``rand_mirror`` flips with probability 1/2; ``color_jitter`` > 0 jitters
    brightness, contrast and saturation by up to 12.5 % (random order), and > 1 first re-compresses half
    the images as JPEG of quality 2..20; ``cutoff`` > 0 fills a random ``cutoff`` x ``cutoff`` square
    (clipped to the image) with 128 in half the images; ``rand_crop`` > 0 scales by a random factor in
    [1 - rand_crop, 1 + rand_crop] and shifts by up to ``rand_crop`` of the size (black border).
    ``shuffle`` reorders the records at every reset(); ``num_parts``/``part_index`` take every
    num_parts-th record starting at part_index. ``seed`` makes shuffling and augmentation repeatable.
    ``sample_weights`` (one per pack record) makes every epoch a draw with replacement of as many faces
    as the part holds, in proportion to the weights (for balancing groups).
    """

    def __init__(self, path_imgrec, batch_size, data_shape=(3, 112, 112), shuffle=False, rand_mirror=False,
                 color_jitter=0, cutoff=0, num_parts=1, part_index=0, seed=None, rand_crop=0.0,
                 prefetch=4, num_threads=2, data_name="data", label_name="softmax_label", sample_weights=None):
        super().__init__(batch_size)
        if len(data_shape) != 3 or data_shape[0] != 3 or data_shape[1] != data_shape[2]:
            raise ValueError(f"data_shape must be (3, S, S), got {data_shape}")
        if not 0 <= part_index < num_parts:
            raise ValueError(f"part_index {part_index} is not in 0..{num_parts - 1}")
        self.reader = PackReader(path_imgrec)
        self.path_imgrec = self.reader.rec_path
        self.data_shape = tuple(data_shape)
        self.shuffle, self.rand_mirror = shuffle, rand_mirror
        self.color_jitter, self.cutoff, self.rand_crop = color_jitter, cutoff, float(rand_crop)
        self.rows = np.arange(part_index, len(self.reader), num_parts)
        if len(self.rows) == 0:
            raise DataError(f"{self.path_imgrec}: part {part_index} of {num_parts} holds no records")
        self.num_samples = len(self.rows)
        self._weights = None
        if sample_weights is not None:
            weights = np.asarray(sample_weights, np.float64)
            if weights.shape != (len(self.reader),) or not np.all(np.isfinite(weights)) or weights.min() < 0:
                raise ValueError(f"sample_weights must be {len(self.reader)} finite weights >= 0")
            self._weights = weights[self.rows] / weights[self.rows].sum()
        self.labels = np.stack([encode_labels(g, a) for g, a in self.reader.labels[self.rows]])
        self.provide_data = [mx.io.DataDesc(data_name, (batch_size,) + self.data_shape, np.float32)]
        self.provide_label = [mx.io.DataDesc(label_name, (batch_size, 1 + AGE_CLASSES), np.float32)]
        self._rng = np.random.RandomState(seed)
        self._prefetch = prefetch
        self._worker_reader = self.reader.reopen()
        self._read_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, num_threads), thread_name_prefix="FaceImageIter")
        self._queue = None
        self._stop = None
        self._thread = None
        self.reset()

    # -- epoch control -------------------------------------------------------------------------
    def reset(self):
        """Start a new epoch (reshuffled when ``shuffle``)."""
        self._halt()
        if self._weights is not None:
            order = np.sort(self._rng.choice(self.rows, size=len(self.rows), replace=True, p=self._weights))
            if self.shuffle:
                order = self._rng.permutation(order)
        else:
            order = self.rows.copy() if not self.shuffle else self._rng.permutation(self.rows)
        self._positions = np.searchsorted(self.rows, order)
        self._queue = queue.Queue(maxsize=self._prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(self._positions, self._queue, self._stop),
                                        daemon=True)
        self._thread.start()

    def _halt(self):
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread = None

    def close(self):
        """Stop the background thread and close the pack."""
        self._halt()
        self._pool.shutdown()
        self._worker_reader.close()
        self.reader.close()

    def __del__(self):
        try:
            self._halt()
        except Exception:  # interpreter shutdown: threads and modules may already be gone
            pass

    # -- batches -------------------------------------------------------------------------------
    def next(self):
        item = self._queue.get()
        if item is None:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        data, label, pad, index = item
        # The arrays are fresh per batch, so MXNet may take them over without a copy.
        return mx.io.DataBatch(data=[mx.nd.from_numpy(data, zero_copy=True)],
                               label=[mx.nd.from_numpy(label, zero_copy=True)], pad=pad, index=index,
                               provide_data=self.provide_data, provide_label=self.provide_label)

    def _produce(self, positions, out, stop):
        try:
            batch_size = self.batch_size
            for start in range(0, len(positions), batch_size):
                chosen = positions[start:start + batch_size]
                pad = batch_size - len(chosen)
                if pad:     # repeat the epoch's first samples so the batch has its full size
                    chosen = np.concatenate([chosen, np.resize(positions, pad)])
                params = self.draw_augmentations(batch_size)
                data = np.empty((batch_size,) + self.data_shape, np.float32)

                def fill(slot):
                    data[slot] = self._load(self.rows[chosen[slot]], params[slot]).transpose(2, 0, 1)

                list(self._pool.map(fill, range(batch_size)))
                item = (data, np.ascontiguousarray(self.labels[chosen]), pad, self.rows[chosen])
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            out.put(None)
        except BaseException as exc:  # hand the error to the consumer instead of dying silently
            out.put(exc)

    def _load(self, row, params):
        """Decode and augment one record; returns H x W x 3 float32 RGB."""
        key = self.reader.keys[row]
        with self._read_lock:
            _, jpeg = self._worker_reader.read(key)
        try:
            image, _ = decode_image(jpeg, f"{self.path_imgrec}: record {key}")
        except ImageError as exc:
            raise DataError(str(exc)) from None
        size = self.data_shape[1]
        if image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        return augment(image, params, self.cutoff)

    def draw_augmentations(self, count):
        """Draw the random choices of ``count`` samples (from this iterator's seeded generator)."""
        rng, amount = self._rng, self.rand_crop
        crops = np.column_stack([1.0 + rng.uniform(-amount, amount, count), rng.uniform(-amount, amount, (count, 2))])
        mirrors = rng.rand(count) < 0.5
        jpeg_flags, qualities = rng.rand(count) < 0.5, rng.randint(JPEG_JITTER_QUALITY[0],
                                                                   JPEG_JITTER_QUALITY[1] + 1, count)
        orders = np.argsort(rng.rand(count, 3), axis=1)
        factors = 1.0 + rng.uniform(-JITTER_STRENGTH, JITTER_STRENGTH, (count, 3))
        cut_flags, centres = rng.rand(count) < 0.5, rng.rand(count, 2)
        return [Augmentation(
            crop=tuple(crops[i]) if amount > 0 else None,
            mirror=bool(self.rand_mirror and mirrors[i]),
            jpeg_quality=int(qualities[i]) if self.color_jitter > 1 and jpeg_flags[i] else None,
            jitter=tuple(zip(orders[i].tolist(), factors[i].tolist())) if self.color_jitter > 0 else (),
            cutout=tuple(centres[i]) if self.cutoff > 0 and cut_flags[i] else None,
        ) for i in range(count)]


class Augmentation(NamedTuple):
    """The random choices for one sample; ``None``/empty means the step is skipped.

    crop: (scale, dx, dy) with shifts as fractions of the size; jpeg_quality: re-compression quality;
    jitter: ((operation, factor), ...) with operation 0 brightness, 1 contrast, 2 saturation;
    cutout: centre as fractions (y, x) of the image size.
    """
    crop: Optional[Tuple[float, float, float]] = None
    mirror: bool = False
    jpeg_quality: Optional[int] = None
    jitter: tuple = ()
    cutout: Optional[Tuple[float, float]] = None


def augment(image_bgr, params, cutoff=0):
    """Apply one sample's augmentations to a uint8 BGR face; returns float32 RGB (the original's order)."""
    image = image_bgr
    if params.crop is not None:
        image = crop_scale(image, *params.crop)
    if params.mirror:
        image = cv2.flip(image, 1)
    if params.jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, params.jpeg_quality])
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if params.jitter:
        image = color_jitter(image, params.jitter)
    image = image.astype(np.float32)
    if params.cutout is not None:
        height, width = image.shape[:2]
        cutout(image, cutoff, int(params.cutout[0] * height), int(params.cutout[1] * width))
    return image


def color_jitter(image_rgb, steps):
    """Brightness / contrast / saturation steps as mx.image.ColorJitterAug, on uint8 RGB, clipped to 0..255.

    Every step maps the image to ``p * x + q * grey(x) + r`` of the original x, so the whole sequence
    is one 3x3 colour matrix plus an offset, applied in a single pass.
    """
    mean_grey = float(_LUMA @ np.array(cv2.mean(image_rgb)[:3], np.float32))
    p, q, r = 1.0, 0.0, 0.0
    for op, alpha in steps:
        if op == 0:      # brightness: scale
            p, q, r = alpha * p, alpha * q, alpha * r
        elif op == 1:    # contrast: blend with the mean grey level
            current_mean = (p + q) * mean_grey + r
            p, q, r = alpha * p, alpha * q, alpha * r + (1.0 - alpha) * current_mean
        else:            # saturation: blend with each pixel's grey level
            q = alpha * q + (1.0 - alpha) * (p + q)
            p = alpha * p
    matrix = np.hstack([p * np.eye(3) + q * np.tile(_LUMA, (3, 1)), np.full((3, 1), r)])
    return cv2.transform(image_rgb, matrix)      # uint8 output saturates at 0 and 255


def cutout(image, size, cy, cx):
    """Fill the size x size square centred on (cy, cx), clipped to the image, with CUTOUT_FILL, in place."""
    half = size // 2
    image[max(cy - half, 0):max(cy + half, 0), max(cx - half, 0):max(cx + half, 0)] = CUTOUT_FILL
    return image


def crop_scale(image, scale, dx, dy):
    """Zoom by ``scale`` about the centre and shift by (dx, dy) fractions of the size (black border)."""
    height, width = image.shape[:2]
    matrix = np.array([[scale, 0, (1 - scale) * width / 2 + dx * width],
                       [0, scale, (1 - scale) * height / 2 + dy * height]], np.float64)
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
