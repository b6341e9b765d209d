"""Shared fixtures: where ../shared is, and skipping (or failing under CI=true) without it."""
import os

import pytest

from agegender.config import shared_dir


def _require_shared(*parts):
    root = shared_dir()
    path = os.path.join(root, *parts) if root else None
    if path is None or not os.path.exists(path):
        reason = f"shared data not found ({os.path.join('../shared', *parts)}; set AGEGENDER_SHARED)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " — required under CI=true")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def shared():
    """Path of the shared folder; the test skips (fails under CI=true) if it is absent."""
    return _require_shared()


@pytest.fixture(scope="session")
def original_model(shared):
    """``prefix,epoch`` of the original age/gender checkpoint."""
    _require_shared("weights", "original", "age-gender", "model-symbol.json")
    return os.path.join(shared, "weights", "original", "age-gender", "model") + ",0"


@pytest.fixture(scope="session")
def original_mtcnn_dir(shared):
    """Folder of the original MTCNN checkpoints det1..det4 (epoch 1)."""
    return _require_shared("weights", "original", "mtcnn-model")


@pytest.fixture(scope="session")
def reference_dir(shared):
    """Folder of the original code's golden outputs."""
    return _require_shared("reference", "mtcnn")


@pytest.fixture(scope="session")
def face_112(reference_dir):
    """An aligned 112x112 face (BGR) of the original's golden references."""
    import cv2
    return cv2.imread(os.path.join(reference_dir, "test1_face0_aligned112.png"))


@pytest.fixture(scope="session")
def sample_images_dir(shared):
    return _require_shared("sample-images")


@pytest.fixture(scope="session")
def utkface_images_dir(shared):
    """Folder of the UTKFace chips (200x200 JPEG)."""
    return _require_shared("data", "utkface", "images")


@pytest.fixture(scope="session")
def tiny_pack(shared, tmp_path_factory):
    """train (32) / val (16) packs of resized UTKFace chips: 2 batches of 16 per epoch."""
    import csv
    import cv2
    from data.records import PackWriter, encode_face
    folder = tmp_path_factory.mktemp("pack")
    with open(os.path.join(shared, "data", "utkface", "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    for split, count in (("train", 32), ("val", 16)):
        chosen = [r for r in rows if r["split"] == split][::97][:count]
        with PackWriter(str(folder / split)) as writer:
            for row in chosen:
                image = cv2.imread(os.path.join(shared, "data", "utkface", row["path"]))
                writer.write(encode_face(cv2.resize(image, (112, 112), interpolation=cv2.INTER_AREA)),
                             int(row["gender"]), int(row["age"]))
    return folder
