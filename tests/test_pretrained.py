"""The face-pretrained backbone, the Gaussian ordinal targets and balanced sampling (the second model's recipe)."""
import math
import os
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import symbols
import train
from agegender import config
from agegender.checkpoint import load_checkpoint, parse_model_spec
from agegender.losses import age_targets
from agegender.training import balanced_sample_weights
from data.iterator import FaceImageIter, encode_labels
from data.records import PackWriter, encode_face
from symbols.pretrained import backbone_params, detector_input
from tests.test_train import utkface_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def detector_or_skip():
    prefix, epoch = parse_model_spec(config.ESSH_DEFAULT_MODEL)
    if not os.path.isfile(f"{prefix}-{epoch:04d}.params"):
        reason = f"{prefix}: default detector weights not converted (run `make models`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return prefix, epoch


def utkface_faces(shared, count):
    """``count`` UTKFace training chips resized to 112x112, as the network's N x 3 x 112 x 112 RGB input."""
    images = [cv2.resize(cv2.imread(os.path.join(shared, "data", "utkface", row["path"])), (112, 112),
                         interpolation=cv2.INTER_AREA) for row in utkface_rows(shared, "train", count)]
    return np.stack([image[:, :, ::-1].transpose(2, 0, 1) for image in images]).astype(np.float32)


def forward(sym, arg_params, aux_params, data, is_train=False):
    module = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", data.shape)], for_training=is_train)
    module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)
    module.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=is_train)
    return module.get_outputs()[0].asnumpy()


@pytest.fixture(scope="module")
def mapped(shared):
    """The detector checkpoint, and m1's backbone mapped from it with statistics of 64 training faces."""
    prefix, epoch = detector_or_skip()
    faces = utkface_faces(shared, 64)
    args, auxs = backbone_params(prefix, epoch, faces)
    return load_checkpoint(prefix, epoch), args, auxs, faces


def backbone_output(version_body="retinaface"):
    fc1 = symbols.get_symbol("m1", multiplier=0.25, version_input=0, version_body=version_body)
    return fc1.get_internals()["conv_14_leaky_output"]


def detector_backbone_output(detector_sym):
    return detector_sym.get_internals()["mnet_conv26_leaky_output"]


def test_mapped_backbone_computes_the_detectors_last_feature_map(mapped, sample_images_dir):
    (det_sym, det_args, det_auxs), args, auxs, _ = mapped
    face = cv2.imread(os.path.join(sample_images_dir, "Tom_Hanks_54745.png"))      # an aligned 112x112 face
    data = face[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32)
    ours = forward(backbone_output(), args, auxs, data)
    theirs = forward(detector_backbone_output(det_sym), det_args, det_auxs, detector_input(data))
    assert ours.shape == theirs.shape == (1, 256, 4, 4)
    assert np.abs(theirs).max() > 1.0
    assert np.abs(ours - theirs).max() <= 1e-4


def test_mapped_backbone_in_training_mode_on_the_measured_faces(mapped):
    """BatchNorm in training mode uses the batch's statistics: on the faces they were measured on, they are the
    re-created moving statistics, so the training-mode features are the detector's too."""
    (det_sym, det_args, det_auxs), args, auxs, faces = mapped
    ours = forward(backbone_output(), args, auxs, faces, is_train=True)
    theirs = forward(detector_backbone_output(det_sym), det_args, det_auxs, detector_input(faces))
    assert np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()


def test_pretrained_backbone_is_refused_for_another_layout(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--data-dir", str(tmp_path),
                           "--pretrained-backbone", "models/retinaface/retinaface-mnet25,0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    message = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(message) == 1 and "--version-body retinaface" in message[0]


def test_backbone_lr_mult_applies_to_the_27_blocks_only():
    args = train.parse_args(["--data-dir", "x", "--version-input", "0", "--version-body", "retinaface",
                             "--backbone-lr-mult", "0.25"])
    schedule = train.LRSchedule(0.1, 100, mode="cosine")
    optimizer = train.make_optimizer(args, schedule, 0, 1)
    names = train.network_symbol(args).list_arguments()
    scaled = {name for name in names if optimizer.lr_mult.get(name) == 0.25}
    assert len(scaled) == 27 * 3        # conv weight, BatchNorm gamma and beta per block
    assert {"pre_fc1_weight", "fc1_beta", "bn1_gamma"}.isdisjoint(scaled)
    assert all(name.startswith("conv_") for name in scaled)


def _evaluate(sym, **inputs):
    executor = sym.bind(mx.cpu(), {name: mx.nd.array(value) for name, value in inputs.items()})
    return executor.forward()[0].asnumpy()


def test_gaussian_targets_are_normal_tail_probabilities():
    ages = [1, 30, 67, 100]
    bits = np.stack([encode_labels(0, age)[1:] for age in ages])
    targets = _evaluate(age_targets(mx.sym.var("bits"), sigma=2.0), bits=bits)
    for row, age in zip(targets, ages):
        expected = [0.5 * (1 + math.erf((age - k - 0.5) / (2.0 * math.sqrt(2)))) for k in range(100)]
        np.testing.assert_allclose(row[:, 1], expected, atol=1e-6)
        np.testing.assert_allclose(row[:, 0] + row[:, 1], 1.0, atol=1e-6)
    hard = _evaluate(age_targets(mx.sym.var("bits"), sigma=0.0), bits=bits)
    np.testing.assert_array_equal(hard[:, :, 1], bits)
    # a narrow Gaussian is the hard targets
    narrow = _evaluate(age_targets(mx.sym.var("bits"), sigma=0.05), bits=bits)
    np.testing.assert_allclose(narrow[:, :, 1], bits, atol=1e-6)


def test_balanced_weights_equalise_groups(shared):
    rows = utkface_rows(shared, "train", 400)
    ages = [int(row["age"]) for row in rows]
    races = [int(row["race"]) for row in rows]
    groups = [(min(age // 10, 8), race) for age, race in zip(ages, races)]
    for power in (0.0, 0.5, 1.0):
        weights = balanced_sample_weights(ages, races, power)
        assert weights.sum() == pytest.approx(1.0)
        totals = {}
        for group, weight in zip(groups, weights):
            totals[group] = totals.get(group, 0.0) + weight
        sizes = {group: groups.count(group) for group in totals}
        for group, total in totals.items():
            # a group's total weight is proportional to n^(1 - power)
            ratio = total / sizes[group] ** (1 - power)
            assert ratio == pytest.approx(next(iter(totals.values())) / sizes[next(iter(totals))] ** (1 - power))


def test_weighted_epochs_draw_only_weighted_faces(shared, tmp_path):
    rows = utkface_rows(shared, "train", 24)
    with PackWriter(str(tmp_path / "train")) as writer:
        for row in rows:
            image = cv2.imread(os.path.join(shared, "data", "utkface", row["path"]))
            writer.write(encode_face(cv2.resize(image, (112, 112))), int(row["gender"]), int(row["age"]))
    weights = np.zeros(len(rows))
    weights[[3, 7, 11]] = 1.0
    data_iter = FaceImageIter(str(tmp_path / "train.rec"), 8, shuffle=True, seed=1, sample_weights=weights)
    try:
        for _ in range(2):
            data_iter.reset()
            drawn = np.concatenate([batch.index[:8 - batch.pad] for batch in data_iter])
            assert len(drawn) == len(rows) and set(drawn) <= {3, 7, 11}
            assert len(set(drawn)) == 3
    finally:
        data_iter.close()
    with pytest.raises(ValueError):
        FaceImageIter(str(tmp_path / "train.rec"), 8, sample_weights=np.ones(5))
