"""Five-point similarity alignment of a face onto the original's 112x112 template."""
import cv2
import numpy as np

from .config import IMAGE_SIZE

# Left eye, right eye, nose tip, left and right mouth corners (image-left first), for a 112x96 crop.
TEMPLATE_112x96 = np.array([
    [30.2946, 51.6963],
    [65.5318, 51.5014],
    [48.0252, 71.7366],
    [33.5493, 92.3655],
    [62.7299, 92.2041],
], dtype=np.float64)


FACE_SIZES = ((112, 112), (112, 96))     # (height, width) of the crops an alignment template exists for


def parse_face_size(text):
    """``"112,112"`` -> ``(112, 112)``; ValueError with a one-line reason unless it is one of FACE_SIZES."""
    try:
        size = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        size = ()
    if size not in FACE_SIZES:
        sizes = " or ".join(f"'{h},{w}'" for h, w in FACE_SIZES)
        raise ValueError(f"--image-size {text}: aligned faces are {sizes} (height,width); the networks "
                         f"are trained on 112x112 faces")
    return size


def face_template(size=IMAGE_SIZE):
    """Return the 5x2 landmark template for an aligned crop of ``size`` = (height, width).

    Only height 112 is defined; width 112 shifts the 112x96 template by 8 px to the right.
    """
    height, width = size
    if height != 112 or width not in (96, 112):
        raise ValueError(f"alignment template exists for 112x96 and 112x112 crops, not {height}x{width}")
    template = TEMPLATE_112x96.copy()
    if width == 112:
        template[:, 0] += 8.0
    return template


def similarity_transform(src, dst):
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src to dst.

    Umeyama's closed form. Returns the 3x3 homogeneous matrix.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    signs = np.ones(dim)
    if np.linalg.det(cov) < 0:
        signs[-1] = -1
    u, s, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        raise ValueError("landmarks are degenerate (all points coincide)")
    if rank == dim - 1 and np.linalg.det(u) * np.linalg.det(vt) <= 0:
        # One singular value is zero: flip the last axis only if needed to exclude a reflection.
        flip = signs.copy()
        flip[-1] = -1
        rotation = u @ np.diag(flip) @ vt
    else:
        rotation = u @ np.diag(signs) @ vt
    scale = (s @ signs) / src_c.var(axis=0).sum()
    matrix = np.eye(dim + 1)
    matrix[:dim, :dim] = scale * rotation
    matrix[:dim, dim] = dst_mean - scale * rotation @ src_mean
    return matrix


def alignment_matrix(landmarks, size=IMAGE_SIZE):
    """Return the 2x3 affine matrix that maps the 5 (x, y) landmarks of a face onto the template."""
    landmarks = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    return similarity_transform(landmarks, face_template(size))[:2]


def align_face(image, landmarks, size=IMAGE_SIZE):
    """Warp ``image`` (H x W x C) so the 5 landmarks land on the template; returns a (h, w, C) crop.

    Bilinear interpolation, black border, channel order unchanged.
    """
    height, width = size
    matrix = alignment_matrix(landmarks, size)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
