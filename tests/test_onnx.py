"""ONNX export and the onnxruntime backend: numerics against MXNet and the golden references, no MXNet import."""
import json
import os
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import symbols
from agegender import config
from agegender.backends import OnnxRunner
from agegender.checkpoint import load_checkpoint, parse_model_spec, save_checkpoint
from agegender.config import PROJECT_ROOT
from agegender.errors import CheckpointError
from agegender.model import AgeGenderModel, faces_to_batch
from agegender.onnx_export import export_agegender
from mtcnn.detector import MtcnnDetector, crop_resized, normalise
from mtcnn.export import export_mtcnn
from tests.golden import assert_estimates_match, load_reference

GOLDEN_STEMS = ["test1", "test2", "test", "oscar1", "t2", "Tom_Hanks_54745"]
PIPELINE_IMAGES = ["test1.jpg", "test2.jpg", "test.jpg"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, original_model, original_mtcnn_dir):
    """The original age/gender and MTCNN checkpoints exported to a temporary folder."""
    out = tmp_path_factory.mktemp("onnx")
    return {"model": export_agegender(original_model, str(out / "agegender.onnx")),
            "mtcnn": os.path.dirname(export_mtcnn(original_mtcnn_dir, str(out / "mtcnn"))[0])}


def random_checkpoint(folder, network="m1", version_output="GAP", seed=0):
    """A random x0.25 age/gender checkpoint with BatchNorm statistics and gammas far from their defaults."""
    sym = symbols.get_symbol(network, multiplier=0.25, version_input=0, version_output=version_output)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 112, 112))
    rng = np.random.default_rng(seed)
    arg_params = {name: mx.nd.array(rng.normal(0, 0.1, shape) + (0.6 if name.endswith("_gamma") else 0.0))
                  for name, shape in zip(sym.list_arguments(), arg_shapes) if name != "data"}
    aux_params = {name: mx.nd.array(rng.uniform(0.5, 2.0, shape) if name.endswith("_var") else rng.normal(0, 0.2, shape))
                  for name, shape in zip(sym.list_auxiliary_states(), aux_shapes)}
    prefix = os.path.join(folder, f"{network}-{version_output}")
    save_checkpoint(prefix, 0, sym, arg_params, aux_params)
    return f"{prefix},0"


def golden_faces(reference_dir):
    faces = [cv2.imread(os.path.join(reference_dir, f"{stem}_face0_aligned112.png")) for stem in GOLDEN_STEMS]
    fc1 = np.stack([np.load(os.path.join(reference_dir, f"{stem}_face0_fc1.npy")).reshape(-1) for stem in GOLDEN_STEMS])
    return faces, fc1


def test_original_checkpoint_matches_golden_fc1(exported, original_model, reference_dir):
    prefix, epoch = parse_model_spec(original_model)
    _, arg_params, _ = load_checkpoint(prefix, epoch)
    # The original stores gamma 0.5676 under fix_gamma; MXNet (and the export) must use 1.
    assert not np.allclose(arg_params["conv_1_batchnorm_gamma"].asnumpy(), 1.0)
    faces, golden = golden_faces(reference_dir)
    model = AgeGenderModel(exported["model"], backend="onnx")
    np.testing.assert_allclose(model.forward(faces_to_batch(faces)), golden, atol=1e-4, rtol=0)
    np.testing.assert_allclose(model.forward(faces_to_batch(faces[:1])), golden[:1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("version_output", ["GAP", "GDC", "GNAP"])
def test_random_m1_checkpoints_match_mxnet(tmp_path, reference_dir, version_output):
    spec = random_checkpoint(str(tmp_path), version_output=version_output)
    path = export_agegender(spec, str(tmp_path / "model.onnx"))
    faces, _ = golden_faces(reference_dir)
    batch = faces_to_batch(faces)
    expected = AgeGenderModel(spec).forward(batch)
    got = AgeGenderModel(path, backend="onnx").forward(batch)
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()), rtol=0)


def test_mtcnn_networks_match_mxnet_on_real_crops(exported, original_mtcnn_dir, sample_images_dir, reference_dir):
    image = cv2.imread(os.path.join(sample_images_dir, "test1.jpg"))
    _, boxes, _ = load_reference(reference_dir, "test1.jpg")
    boxes = np.round(boxes).astype(np.float64)
    reference = MtcnnDetector(original_mtcnn_dir)
    onnx_detector = MtcnnDetector(exported["mtcnn"], backend="onnx")
    scaled = cv2.resize(image, None, fx=0.3, fy=0.3)
    inputs = {"pnet": normalise(scaled[np.newaxis]),
              "rnet": normalise(crop_resized(image, boxes, 24, np.uint8)),
              "onet": normalise(crop_resized(image, boxes, 48, np.float32)),
              "lnet": np.concatenate([normalise(crop_resized(image, boxes, 24, np.float32))] * 5, axis=1)}
    for stage, batch in inputs.items():
        expected = getattr(reference, stage).run(batch)
        got = getattr(onnx_detector, stage).run(batch)
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, atol=1e-4, rtol=0, err_msg=stage)
    expected_boxes, expected_points = reference.detect(image)
    got_boxes, got_points = onnx_detector.detect(image)
    np.testing.assert_allclose(got_boxes, expected_boxes, atol=1e-2)
    np.testing.assert_allclose(got_points, expected_points, atol=1.0)


def test_default_essh_matches_mxnet(tmp_path, sample_images_dir):
    prefix, epoch = parse_model_spec(config.ESSH_DEFAULT_MODEL)
    if not os.path.exists(f"{prefix}-{epoch:04d}.params"):
        pytest.skip("default ESSH weights not converted (run `make models`)")
    from essh.detector import ESSHDetector
    from essh.export import export_essh
    path = export_essh(config.ESSH_DEFAULT_MODEL, str(tmp_path / "essh.onnx"))
    reference, onnx_detector = ESSHDetector(), ESSHDetector(path, backend="onnx")
    assert onnx_detector.family == reference.family
    image = cv2.imread(os.path.join(sample_images_dir, "oscar1.jpg"))
    tensor = reference.input_tensor(image, 0.5)
    for expected, got in zip(reference.forward(tensor), onnx_detector.forward(tensor)):
        np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()), rtol=0)
    expected_boxes, expected_points = reference.detect(image)
    got_boxes, got_points = onnx_detector.detect(image)
    assert len(got_boxes) == len(expected_boxes) > 0
    np.testing.assert_allclose(got_boxes, expected_boxes, atol=1e-2)
    np.testing.assert_allclose(got_points, expected_points, atol=1e-2)


def test_pipeline_on_onnx_matches_golden_without_mxnet(exported, tmp_path, sample_images_dir, reference_dir):
    out = tmp_path / "faces.json"
    images = [os.path.join(sample_images_dir, name) for name in PIPELINE_IMAGES]
    driver = ("import sys, test; rc = test.main(sys.argv[1:]); "
              "print('MXNET_IMPORTED' if 'mxnet' in sys.modules else 'NO_MXNET'); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", driver, "--quiet", "--backend", "onnx", "--gpu", "-1",
                             "--model", exported["model"], "--mtcnn-model", exported["mtcnn"],
                             "--image", *images, "--json", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "NO_MXNET"
    with open(out) as f:
        records = json.load(f)
    for record, name in zip(records, PIPELINE_IMAGES):
        faces, ref_boxes, ref_landmarks = load_reference(reference_dir, name)
        assert len(record["faces"]) == len(faces)
        np.testing.assert_allclose([face["bbox"] for face in record["faces"]], ref_boxes, atol=1.0)
        np.testing.assert_allclose([face["landmarks"] for face in record["faces"]], ref_landmarks, atol=1.0)
        assert_estimates_match(reference_dir, name, [f["age"] for f in record["faces"]],
                               [f["gender"] for f in record["faces"]])


def test_missing_or_wrong_onnx_files_are_one_line_errors(exported, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        AgeGenderModel(str(tmp_path / "absent.onnx"), backend="onnx")
    with pytest.raises(CheckpointError, match="does not take"):
        AgeGenderModel(os.path.join(exported["mtcnn"], "det2.onnx"), backend="onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a loadable ONNX model"):
        OnnxRunner(str(junk))
    result = subprocess.run([sys.executable, os.path.join(PROJECT_ROOT, "test.py"), "--quiet", "--backend", "onnx",
                             "--model", str(tmp_path / "absent.onnx"), "--json", "-"],
                            capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_export_cli_checks_against_mxnet(tmp_path):
    spec = random_checkpoint(str(tmp_path))
    result = subprocess.run([sys.executable, os.path.join(PROJECT_ROOT, "export.py"), "--model", spec,
                             "--out", str(tmp_path / "m1.onnx")], capture_output=True, text=True, timeout=120,
                            cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert "max relative difference to MXNet" in result.stdout and os.path.isfile(tmp_path / "m1.onnx")
    usage = subprocess.run([sys.executable, os.path.join(PROJECT_ROOT, "export.py"), "--model", spec],
                           capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert usage.returncode == 2 and "--out" in usage.stderr
