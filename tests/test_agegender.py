"""Core: checkpoint loading, alignment, decoding and the original network's golden numbers."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from agegender.align import align_face, face_template, similarity_transform
from agegender.checkpoint import load_checkpoint, parse_model_spec, save_checkpoint
from agegender.decode import decode_age, decode_age_expected, decode_faces, decode_gender
from agegender.errors import CheckpointError
from agegender.model import AgeGenderModel

STEMS = ["test1", "test2", "test", "t2", "oscar1", "Tom_Hanks_54745"]
SAMPLE_FILES = {"test1": "test1.jpg", "test2": "test2.jpg", "test": "test.jpg", "t2": "t2.jpg",
                "oscar1": "oscar1.jpg", "Tom_Hanks_54745": "Tom_Hanks_54745.png"}


@pytest.fixture(scope="module")
def model(original_model):
    return AgeGenderModel(original_model)


@pytest.mark.parametrize("stem", STEMS)
def test_fc1_matches_golden_on_aligned_face(model, reference_dir, stem):
    aligned = cv2.imread(os.path.join(reference_dir, f"{stem}_face0_aligned112.png"))   # BGR on disk
    estimates, fc1 = model.predict([aligned])                                           # RGB into the net
    golden = np.load(os.path.join(reference_dir, f"{stem}_face0_fc1.npy")).reshape(1, -1)
    assert np.abs(fc1 - golden).max() < 1e-4
    with open(os.path.join(reference_dir, f"{stem}.json")) as f:
        face0 = json.load(f)["faces"][0]
    assert estimates[0]["age"] == face0["age"]
    assert estimates[0]["gender"] == ("M" if face0["gender"] == 1 else "F")
    assert list(np.argmax(fc1[0, 2:].reshape(100, 2), axis=1)) == face0["age_bits_argmax"]


@pytest.mark.parametrize("stem", STEMS)
def test_alignment_reproduces_golden_crop(reference_dir, sample_images_dir, stem):
    image = cv2.imread(os.path.join(sample_images_dir, SAMPLE_FILES[stem]))
    with open(os.path.join(reference_dir, f"{stem}.json")) as f:
        landmarks = json.load(f)["faces"][0]["landmarks_5x2"]
    golden = cv2.imread(os.path.join(reference_dir, f"{stem}_face0_aligned112.png")).astype(np.float64)
    aligned = align_face(image, landmarks)
    assert aligned.shape == (112, 112, 3)
    assert np.abs(aligned - golden).mean() <= 1.0


def test_batch_forward_equals_single(model, reference_dir):
    faces = [cv2.imread(os.path.join(reference_dir, f"{stem}_face0_aligned112.png")) for stem in STEMS]
    _, batch = model.predict(faces)
    singles = np.concatenate([model.predict([face])[1] for face in faces])
    assert np.abs(batch - singles).max() < 1e-4


def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rotation.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:2, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:2, 2], shift, atol=1e-9)
    # A mirrored point set must not be fitted by a reflection.
    mirrored = similarity_transform(src, dst * [-1, 1])
    assert np.linalg.det(mirrored[:2, :2]) > 0


def test_template_is_shifted_for_width_112():
    np.testing.assert_allclose(face_template((112, 112))[:, 0] - face_template((112, 96))[:, 0], 8.0)
    with pytest.raises(ValueError):
        face_template((100, 100))


def test_decoding_rules():
    fc1 = np.zeros((3, 202), np.float32)
    fc1[0, 1] = 2.0                                # male
    fc1[0, 3:2 + 2 * 30:2] = 1.0                   # 30 "older" votes
    fc1[1, 0] = 1.0                                # female, no votes
    fc1[2, 2::2] = -5.0                            # every classifier says "older": age 100
    gender, prob_male = decode_gender(fc1)
    assert list(gender) == [1, 0, 0]              # the tie in row 2 goes to index 0, as argmax
    assert prob_male[0] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert list(decode_age(fc1)) == [30, 0, 100]
    p_older = 1 / (1 + np.exp(-1.0))
    assert decode_age_expected(fc1)[0] == pytest.approx(30 * p_older + 70 * 0.5, rel=1e-5)
    assert decode_age_expected(fc1)[2] == pytest.approx(100 / (1 + np.exp(-5.0)), rel=1e-5)
    faces = decode_faces(fc1)
    assert faces[0]["gender"] == "M" and faces[1]["gender"] == "F" and faces[2]["age"] == 100


def test_parse_model_spec():
    assert parse_model_spec("models/a,3") == ("models/a", 3)
    assert parse_model_spec("models/a") == ("models/a", 0)
    with pytest.raises(CheckpointError):
        parse_model_spec("models/a,x")


def test_checkpoint_round_trip_and_errors(tmp_path, shared, original_model):
    prefix, epoch = parse_model_spec(original_model)
    sym, args, auxs = load_checkpoint(prefix, epoch)
    out = str(tmp_path / "copy")
    save_checkpoint(out, 7, sym, args, auxs)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp")]
    model = AgeGenderModel(out + ",7")
    assert model.forward(np.zeros((2, 3, 112, 112), np.float32)).shape == (2, 202)

    # symbol without params
    shutil.copy(f"{prefix}-symbol.json", tmp_path / "lonely-symbol.json")
    with pytest.raises(CheckpointError, match="lonely-0000.params: params file not found"):
        AgeGenderModel(str(tmp_path / "lonely") + ",0")
    # truncated params
    data = open(f"{prefix}-0000.params", "rb").read()
    (tmp_path / "cut-0000.params").write_bytes(data[: len(data) // 2])
    shutil.copy(f"{prefix}-symbol.json", tmp_path / "cut-symbol.json")
    with pytest.raises(CheckpointError, match="cut-0000.params: cannot be read"):
        AgeGenderModel(str(tmp_path / "cut") + ",0")
    # params of another network under the age/gender symbol
    mtcnn = os.path.join(shared, "weights", "original", "mtcnn-model", "det1-0001.params")
    shutil.copy(mtcnn, tmp_path / "other-0000.params")
    shutil.copy(f"{prefix}-symbol.json", tmp_path / "other-symbol.json")
    with pytest.raises(CheckpointError, match="other-0000.params: does not match the network"):
        AgeGenderModel(str(tmp_path / "other") + ",0")
    # a symbol that is not JSON
    (tmp_path / "junk-symbol.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="junk-symbol.json: not a valid MXNet symbol JSON"):
        AgeGenderModel(str(tmp_path / "junk") + ",0")


def test_flip_averages_face_and_mirror(original_model, reference_dir):
    face = cv2.imread(os.path.join(reference_dir, "test1_face0_aligned112.png"))
    plain = AgeGenderModel(original_model)
    flipped = AgeGenderModel(original_model, flip=True)
    _, both = flipped.predict([face])
    _, one = plain.predict([face])
    _, mirror = plain.predict([face[:, ::-1].copy()])
    np.testing.assert_allclose(both, (one + mirror) / 2, atol=1e-5)
    assert np.abs(both - one).max() > 1e-3          # the mirror really changes the estimate


def test_model_sidecar_sets_decoding_and_flip(original_model, reference_dir, tmp_path):
    """A checkpoint's <prefix>-inference.json gives its test-time defaults; arguments override them; the
    ONNX export carries them; a checkpoint without one keeps the original's (votes, no flip)."""
    from agegender.decode import decode_age_as
    from agegender.onnx_export import export_agegender
    prefix, epoch = parse_model_spec(original_model)
    for suffix in ("-symbol.json", f"-{epoch:04d}.params"):
        shutil.copy(prefix + suffix, str(tmp_path / "model") + suffix)
    spec = f"{tmp_path / 'model'},{epoch}"
    face = cv2.imread(os.path.join(reference_dir, "test1_face0_aligned112.png"))
    plain = AgeGenderModel(spec)
    assert (plain.age_decoding, plain.flip) == ("votes", False)
    (tmp_path / "model-inference.json").write_text(json.dumps({"age_decoding": "expected", "flip": True}))
    shipped = AgeGenderModel(spec)
    assert (shipped.age_decoding, shipped.flip) == ("expected", True)
    faces, fc1 = shipped.predict([face])
    _, one = plain.predict([face])
    _, mirror = plain.predict([face[:, ::-1].copy()])
    np.testing.assert_allclose(fc1, (one + mirror) / 2, atol=1e-5)
    assert faces[0]["age"] == int(decode_age_as(fc1, "expected")[0]) == int(np.rint(decode_age_expected(fc1))[0])
    overridden = AgeGenderModel(spec, flip=False, age_decoding="mean")
    assert (overridden.age_decoding, overridden.flip) == ("mean", False)
    onnx_path = export_agegender(spec, str(tmp_path / "model.onnx"))
    exported = AgeGenderModel(onnx_path, backend="onnx")
    assert (exported.age_decoding, exported.flip) == ("expected", True)
    (tmp_path / "model-inference.json").write_text(json.dumps({"age_decoding": "median"}))
    with pytest.raises(CheckpointError, match="model-inference.json: age_decoding must be one of"):
        AgeGenderModel(spec)
