"""The face tracker on real detections of frames made from a sample image (shifted copies, a blank gap)."""
import copy
import os

import cv2
import numpy as np
import pytest

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
