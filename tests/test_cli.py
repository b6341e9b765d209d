"""test.py driven as a subprocess: golden faces, output formats, bad items, exit statuses."""
import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from agegender.config import PROJECT_ROOT
from tests.golden import assert_estimates_match, load_reference

GOLDEN_IMAGES = ["test1.jpg", "test2.jpg", "test.jpg", "Tom_Hanks_54745.png"]


def run_cli(*args, timeout=300):
    """Run test.py; returns the CompletedProcess (stdout/stderr as text)."""
    return subprocess.run([sys.executable, os.path.join(PROJECT_ROOT, "test.py"), "--quiet", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory, sample_images_dir, original_model, original_mtcnn_dir):
    out = tmp_path_factory.mktemp("golden")
    images = [os.path.join(sample_images_dir, name) for name in GOLDEN_IMAGES]
    result = run_cli("--det", "0", "--gpu", "-1", "--model", original_model, "--mtcnn-model", original_mtcnn_dir,
                     "--image", *images, "--json", out / "faces.json", "--csv", out / "faces.csv",
                     "--output", out / "pictures", "--raw")
    assert result.returncode == 0, result.stderr
    with open(out / "faces.json") as f:
        records = json.load(f)
    return out, records


def test_json_matches_golden_references(golden_run, reference_dir):
    _, records = golden_run
    assert [os.path.basename(r["image"]) for r in records] == GOLDEN_IMAGES
    for record in records:
        name = os.path.basename(record["image"])
        faces, ref_boxes, ref_landmarks = load_reference(reference_dir, name)
        assert record["detector"] == "mtcnn" and record["frame"] is None
        assert len(record["faces"]) == len(faces)
        boxes = np.array([face["bbox"] for face in record["faces"]]).reshape(-1, 4)
        landmarks = np.array([face["landmarks"] for face in record["faces"]]).reshape(-1, 5, 2)
        np.testing.assert_allclose(boxes, ref_boxes, atol=1.0)
        np.testing.assert_allclose(landmarks, ref_landmarks, atol=1.0)
        assert_estimates_match(reference_dir, name, [f["age"] for f in record["faces"]],
                               [f["gender"] for f in record["faces"]])
        for face in record["faces"]:
            assert len(face["fc1"]) == 202
            assert 0.0 <= face["gender_prob_male"] <= 1.0 and 0.0 <= face["age_expected"] <= 100.0
            assert (face["gender"] == "M") == (face["fc1"][1] > face["fc1"][0])


def test_json_image_size_and_csv_rows(golden_run, sample_images_dir):
    out, records = golden_run
    for record in records:
        image = cv2.imread(os.path.join(sample_images_dir, os.path.basename(record["image"])))
        assert (record["height"], record["width"]) == image.shape[:2]
    with open(out / "faces.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(r["faces"]) for r in records)
    first = records[0]["faces"][0]
    assert int(rows[0]["age"]) == first["age"] and rows[0]["gender"] == first["gender"]


def test_annotated_pictures_written_inside_output(golden_run):
    out, records = golden_run
    written = sorted(os.listdir(out / "pictures"))
    assert written == sorted(os.path.splitext(os.path.basename(r["image"]))[0] + ".jpg" for r in records)
    picture = cv2.imread(str(out / "pictures" / "test1.jpg"))
    box = records[0]["faces"][0]["bbox"]
    # The box outline is drawn in pure green.
    x1, y1 = int(box[0]), int(box[1])
    assert tuple(picture[y1 + 20, x1]) != (0, 0, 0)
    assert picture[y1 + 20, x1][1] > 200 and picture[y1 + 20, x1][0] < 60


def test_bad_items_are_reported_and_skipped(tmp_path, sample_images_dir, original_model, original_mtcnn_dir):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    good = os.path.join(sample_images_dir, "test2.jpg")
    result = run_cli("--model", original_model, "--mtcnn-model", original_mtcnn_dir, good, text,
                     tmp_path / "missing.png", empty, "--json", tmp_path / "out.json")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert any("notes.jpg" in e for e in errors) and any("missing.png" in e for e in errors)
    assert any(str(empty) in e for e in errors)
    assert "Traceback" not in result.stderr
    with open(tmp_path / "out.json") as f:
        records = json.load(f)
    assert [os.path.basename(r["image"]) for r in records] == ["test2.jpg"] and records[0]["faces"]


def test_no_face_gives_empty_list_and_clean_picture(tmp_path, original_model, original_mtcnn_dir):
    blank = np.full((240, 320, 3), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "blank.png"), blank)
    result = run_cli("--model", original_model, "--mtcnn-model", original_mtcnn_dir, tmp_path / "blank.png",
                     "--json", "-", "--output", tmp_path / "blank_out.png")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert records[0]["faces"] == []
    assert np.array_equal(cv2.imread(str(tmp_path / "blank_out.png")), blank)


def test_aligned_input_reproduces_golden_fc1(tmp_path, reference_dir, original_model):
    aligned = os.path.join(reference_dir, "test1_face0_aligned112.png")
    result = run_cli("--aligned", "--model", original_model, aligned, "--json", "-", "--raw")
    assert result.returncode == 0, result.stderr
    face = json.loads(result.stdout)[0]["faces"][0]
    reference = np.load(os.path.join(reference_dir, "test1_face0_fc1.npy")).ravel()
    assert np.abs(np.array(face["fc1"]) - reference).max() < 1e-4
    assert json.loads(result.stdout)[0]["detector"] == "aligned"


def test_video_frames_every_n(tmp_path, sample_images_dir, original_model, original_mtcnn_dir):
    frame = cv2.resize(cv2.imread(os.path.join(sample_images_dir, "test2.jpg")), (320, 176))
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 176))
    for i in range(5):
        writer.write(np.roll(frame, i, axis=1))
    writer.release()
    result = run_cli("--model", original_model, "--mtcnn-model", original_mtcnn_dir, path, "--every", "2",
                     "--json", "-", "--output", tmp_path / "frames")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["frame"] for r in records[:-1]] == [0, 2, 4]
    assert records[-1]["frames"] == 3 and "tracks" in records[-1]      # the video's track summary closes it
    assert os.listdir(tmp_path / "frames") == ["clip.mp4"]             # a folder output keeps videos videos
    video = cv2.VideoCapture(str(tmp_path / "frames" / "clip.mp4"))
    count = 0
    while video.read()[0]:
        count += 1
    video.release()
    assert count == 3


def test_unopenable_video_and_mismatched_checkpoint(tmp_path, shared, original_model):
    fake = tmp_path / "broken.mp4"
    fake.write_bytes(b"\x00" * 64)
    result = run_cli("--aligned", "--model", original_model, fake, "--json", tmp_path / "o.json")
    assert result.returncode == 1 and "broken.mp4" in result.stderr and "Traceback" not in result.stderr
    mtcnn_prefix = os.path.join(shared, "weights", "original", "mtcnn-model", "det1") + ",1"
    result = run_cli("--aligned", "--model", mtcnn_prefix, fake)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "det1" in lines[0]


def test_usage_errors_exit_2():
    for args, words in ((["--det", "7"], "argument --det: invalid choice"), (["--every", "0"], "--every must be"),
                        (["--image-size", "0,0"], "--image-size 0,0: aligned faces are"),
                        (["--image-size", "64,64"], "--image-size 64,64: aligned faces are"),
                        (["--threshold", "nan"], "--threshold nan: must be a score between 0 and 1")):
        result = run_cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], \
            result.stderr
    assert run_cli("--det-size", "640").returncode == 2                 # --det 0: MTCNN has no input cap
    assert run_cli("--det", "1", "--det-size", "16").returncode == 2


def test_no_arguments_runs_the_shipped_defaults(tmp_path):
    """`python test.py` alone: sample image, shipped model, MTCNN, picture + JSON under ./output."""
    result = subprocess.run([sys.executable, os.path.join(PROJECT_ROOT, "test.py")], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "output" / "astronaut.json") as f:
        records = json.load(f)
    assert records[0]["image"].endswith("astronaut.jpg") and records[0]["detector"] == "mtcnn"
    faces = records[0]["faces"]
    assert len(faces) == 1 and faces[0]["gender"] in ("F", "M") and 0 <= faces[0]["age"] <= 100
    picture = cv2.imread(str(tmp_path / "output" / "astronaut_annotated.jpg"))
    assert picture.shape == (512, 512, 3)
