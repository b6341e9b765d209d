"""The face tracker on real detections of frames made from a sample image (shifted copies, a blank gap),
and test.py on a clip made of such frames: track fields, summary record, annotated video."""
import copy
import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from agegender.config import PROJECT_ROOT
from analysis.draw import face_label
from analysis.runner import VideoOutput
from analysis.tracking import FaceTracker, box_iou

SHIFT = (4, 2)          # pixels per frame (x, y)
BLANK_FRAME = 3         # frame index left empty: no face is detected there


def shifted(image, k):
    dx, dy = SHIFT[0] * k, SHIFT[1] * k
    return cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, dy]]), (image.shape[1], image.shape[0]),
                          borderMode=cv2.BORDER_REPLICATE)


@pytest.fixture(scope="module")
def detected_frames(sample_images_dir):
    """``[(frame, faces)]`` for 7 frames of test2.jpg moving by SHIFT, frame 3 blank: real MTCNN + model."""
    from analysis.pipeline import FaceAnalyzer
    analyzer = FaceAnalyzer(det=0, gpu=-1)
    base = cv2.imread(os.path.join(sample_images_dir, "test2.jpg"))
    frames = []
    for k in range(7):
        image = np.full_like(base, 128) if k == BLANK_FRAME else shifted(base, k)
        frames.append((k, analyzer.analyze(image)))
    assert len(frames[0][1]) >= 3 and frames[BLANK_FRAME][1] == []
    return frames


def counterpart(face, frame, first_faces):
    """Index of the frame-0 face this face is (its box moved back by the shift), or None."""
    dx, dy = SHIFT[0] * frame, SHIFT[1] * frame
    x1, y1, x2, y2 = face["bbox"]
    iou = box_iou([[x1 - dx, y1 - dy, x2 - dx, y2 - dy]], [f["bbox"] for f in first_faces])[0]
    return int(iou.argmax()) if iou.max() > 0.6 else None


def run_tracker(frames, **kwargs):
    tracker = FaceTracker(**kwargs)
    tracked = [(frame, tracker.update(frame, copy.deepcopy(faces))) for frame, faces in frames]
    return tracker, tracked


def test_box_iou():
    iou = box_iou([[0, 0, 10, 10], [5, 5, 15, 15]], [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    np.testing.assert_allclose(iou, [[1, 0, 0], [25 / 175, 0, 0]])


def test_faces_keep_their_track_across_frames_and_a_gap(detected_frames):
    tracker, tracked = run_tracker(detected_frames, max_gap=2)
    first = tracked[0][1]
    assert [f["track"] for f in first] == list(range(len(first)))
    matched = 0
    for frame, faces in tracked[1:]:
        ids = [f["track"] for f in faces]
        assert len(set(ids)) == len(ids), f"frame {frame}: two faces share a track"
        for face in faces:
            k = counterpart(face, frame, first)
            if k is None:
                assert face["track"] >= len(first), f"frame {frame}: a new face took an old track"
            else:
                assert face["track"] == first[k]["track"], f"frame {frame}: face {k} changed track"
                matched += 1
    assert matched >= 4 * len(first)       # most faces are found again in the 5 frames with faces
    summaries = tracker.summaries()
    assert [s["track"] for s in summaries] == list(range(len(tracker.tracks)))
    assert all(s["first_frame"] == 0 for s in summaries[:len(first)])


def test_running_means_and_summary(detected_frames):
    tracker, tracked = run_tracker(detected_frames, max_gap=2)
    history = {}
    for frame, faces in tracked:
        for face in faces:
            seen = history.setdefault(face["track"], [])
            seen.append((frame, face["age_expected"], face["gender_prob_male"]))
            assert face["age_track"] == pytest.approx(np.mean([a for _, a, _ in seen]), abs=0.006)
            assert face["gender_track"] == pytest.approx(np.mean([g for _, _, g in seen]), abs=6e-5)
    for s in tracker.summaries():
        seen = history[s["track"]]
        assert (s["first_frame"], s["last_frame"], s["faces"]) == (seen[0][0], seen[-1][0], len(seen))
        assert s["age"] == pytest.approx(np.mean([a for _, a, _ in seen]), abs=0.006)
        assert s["gender"] == ("M" if np.mean([g for _, _, g in seen]) > 0.5 else "F")


def test_a_gap_longer_than_max_gap_starts_new_tracks(detected_frames):
    _, tracked = run_tracker(detected_frames, max_gap=0)
    before = {f["track"] for f in tracked[BLANK_FRAME - 1][1]}
    after = {f["track"] for f in tracked[BLANK_FRAME + 1][1]}
    assert after and not before & after
    _, tracked = run_tracker(detected_frames, max_gap=1)
    after = {f["track"] for f in tracked[BLANK_FRAME + 1][1]}
    assert before & after


def test_each_track_takes_at_most_one_face_per_frame():
    tracker = FaceTracker(iou_threshold=0.3)
    face = {"bbox": [0, 0, 10, 10], "age_expected": 30.0, "gender_prob_male": 0.9}
    tracker.update(0, [dict(face)])
    faces = tracker.update(1, [dict(face, bbox=[1, 0, 11, 10]), dict(face, bbox=[0, 0, 10, 10])])
    assert [f["track"] for f in faces] == [1, 0]      # the better overlap keeps the track


def test_face_label_shows_the_track_and_its_smoothed_values():
    face = {"age": 31, "gender": "M", "track": 2, "age_track": 28.6, "gender_track": 0.3}
    assert face_label(face) == "#2 29, F"
    assert face_label({"age": 31, "gender": "M"}) == "31, M"


def test_video_gets_tracks_a_summary_and_an_annotated_video(tmp_path, sample_images_dir):
    """test.py on a clip of test2.jpg moving, one blank frame: track fields, summary record, annotated .mp4."""
    base = cv2.imread(os.path.join(sample_images_dir, "test2.jpg"))[:344]  # Motion JPEG keeps even sizes
    clip = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"MJPG"), 10, (base.shape[1], base.shape[0]))
    for k in range(6):
        writer.write(np.full_like(base, 128) if k == BLANK_FRAME else shifted(base, k))
    writer.release()
    out = tmp_path / "annotated.mp4"
    result = subprocess.run([sys.executable, os.path.join(PROJECT_ROOT, "test.py"), "--quiet", "--gpu", "-1", clip,
                             "--json", "-", "--csv", str(tmp_path / "faces.csv"), "--output", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    frames, summary = records[:-1], records[-1]
    assert [r["frame"] for r in frames] == list(range(6)) and summary["frames"] == 6
    assert frames[BLANK_FRAME]["faces"] == [] and len(frames[0]["faces"]) >= 3
    history = {}
    for record in frames:
        for face in record["faces"]:
            seen = history.setdefault(face["track"], [])
            seen.append((record["frame"], face["age_expected"], face["gender_prob_male"]))
            assert face["age_track"] == pytest.approx(np.mean([a for _, a, _ in seen]), abs=0.006)
            assert face["gender_track"] == pytest.approx(np.mean([g for _, _, g in seen]), abs=6e-5)
    assert [t["track"] for t in summary["tracks"]] == sorted(history)
    for track in summary["tracks"]:
        seen = history[track["track"]]
        assert (track["first_frame"], track["last_frame"], track["faces"]) == (seen[0][0], seen[-1][0], len(seen))
    # the faces of frame 0 are found again after the blank frame under the same ids (default max gap)
    assert {f["track"] for f in frames[0]["faces"]} & {f["track"] for f in frames[BLANK_FRAME + 1]["faces"]}
    with open(tmp_path / "faces.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(r["faces"]) for r in frames)
    assert [int(row["track"]) for row in rows] == [f["track"] for r in frames for f in r["faces"]]

    video = cv2.VideoCapture(str(out))
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(10)
    decoded = []
    while True:
        ok, picture = video.read()
        if not ok:
            break
        decoded.append(picture)
    video.release()
    assert len(decoded) == 6 and decoded[0].shape[:2] == (frames[0]["height"], frames[0]["width"])
    for record, picture in zip(frames, decoded):
        for face in record["faces"]:
            # the blue label background with the track's smoothed text sits on the box's top-left corner
            x1, y1 = int(face["bbox"][0]), int(face["bbox"][1])
            (width, height), _ = cv2.getTextSize(face_label(face), cv2.FONT_HERSHEY_SIMPLEX, 1, 2)
            top = max(y1, height)
            label = picture[top - height:top, x1:x1 + width].reshape(-1, 3)
            b, g, r = np.median(label, axis=0)
            assert b > 170 and g < 90 and r < 90, (record["frame"], face["track"], (b, g, r))


def test_annotated_video_keeps_odd_sides(tmp_path):
    picture = np.zeros((345, 611, 3), np.uint8)
    picture[-1, :, 2] = 255                                   # the last row is red
    out = VideoOutput(str(tmp_path / "odd.mp4"), fps=5)
    for _ in range(2):
        out.write(picture)
    out.close()
    assert sorted(os.listdir(tmp_path)) == ["odd.mp4"]        # the temporary name is gone
    video = cv2.VideoCapture(str(tmp_path / "odd.mp4"))
    ok, frame = video.read()
    video.release()
    assert ok and frame.shape == (346, 612, 3)                # padded by a copy of the last row/column
    assert frame[-3:, 100:500, 2].mean() > 150


def test_videos_in_a_folder_run_become_annotated_videos_in_the_output_folder(tmp_path, sample_images_dir):
    base = cv2.imread(os.path.join(sample_images_dir, "test2.jpg"))[:344]
    inputs = tmp_path / "inputs"
    (inputs / "clips").mkdir(parents=True)
    writer = cv2.VideoWriter(str(inputs / "clips" / "walk.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 8,
                             (base.shape[1], base.shape[0]))
    for k in range(4):
        writer.write(shifted(base, k))
    writer.release()
    cv2.imwrite(str(inputs / "still.jpg"), base)
    out = tmp_path / "annotated"
    result = subprocess.run([sys.executable, os.path.join(PROJECT_ROOT, "test.py"), "--quiet", "--gpu", "-1",
                             str(inputs), "--every", "2", "--output", str(out), "--json", "-"],
                            capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["clips/walk.mp4", "still.jpg"]
    frames = [r for r in json.loads(result.stdout) if r.get("frame") is not None]
    video = cv2.VideoCapture(str(out / "clips" / "walk.mp4"))
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(4)     # every 2nd frame of an 8 fps clip
    count = 0
    while video.read()[0]:
        count += 1
    video.release()
    assert count == len(frames) == 2
