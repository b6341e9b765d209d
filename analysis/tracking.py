"""Linking faces across video frames into tracks, with per-track running means of age and gender.

A deliberately simple tracker: each processed frame's faces are matched to the live tracks greedily by
the IoU of their boxes (highest first, at least ``iou_threshold``); a track that has not been matched for
more than ``max_gap`` processed frames ends. Each face gets its track's id and the running means, over the
track so far, of the expected age and of the probability of "male"::

    tracker = FaceTracker()
    for frame, faces in frames:
        tracker.update(frame, faces)        # adds "track", "age_track", "gender_track" to every face
    summaries = tracker.summaries()
"""
import numpy as np

from agegender import config


def box_iou(boxes_a, boxes_b):
    """IoU matrix (len(a) x len(b)) of ``[x1, y1, x2, y2]`` boxes."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class Track:
    """One face followed over frames: last box, frames seen, sums for the running means."""

    def __init__(self, track_id, frame, step, face):
        self.id = track_id
        self.first_frame = frame
        self.last_frame = frame
        self.last_step = step
        self.box = face["bbox"]
        self.count = 0
        self.age_sum = 0.0
        self.male_sum = 0.0

    def add(self, frame, step, face):
        self.last_frame, self.last_step, self.box = frame, step, face["bbox"]
        self.count += 1
        self.age_sum += face["age_expected"]
        self.male_sum += face["gender_prob_male"]

    @property
    def age_mean(self):
        return self.age_sum / self.count

    @property
    def male_mean(self):
        return self.male_sum / self.count

    def summary(self):
        """``{"track", "first_frame", "last_frame", "faces", "age", "gender", "gender_prob_male"}``."""
        return {"track": self.id, "first_frame": self.first_frame, "last_frame": self.last_frame,
                "faces": self.count, "age": round(self.age_mean, 2), "gender": "M" if self.male_mean > 0.5 else "F",
                "gender_prob_male": round(self.male_mean, 4)}


class FaceTracker:
    """Assigns track ids and running means to the faces of successive frames of one video.

    ``max_gap`` counts processed frames (so it means the same with ``--every N``); ids start at 0.
    """

    def __init__(self, iou_threshold=config.TRACK_IOU, max_gap=config.TRACK_MAX_GAP):
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self.tracks = []          # every track, in order of creation (index == id)
        self.step = -1            # processed frames so far, minus one

    def update(self, frame, faces):
        """Match ``faces`` (dicts with ``bbox``, ``age_expected``, ``gender_prob_male``) of ``frame``
        to the live tracks; sets ``track``, ``age_track`` and ``gender_track`` on each and returns them."""
        self.step += 1
        live = [t for t in self.tracks if self.step - t.last_step <= self.max_gap + 1]
        assigned = [None] * len(faces)
        if live and faces:
            iou = box_iou([t.box for t in live], [f["bbox"] for f in faces])
            # greedy: best remaining pair first; ties broken by track age, then face order
            order = np.argsort(-iou, axis=None, kind="stable")
            used_tracks = set()
            for flat in order:
                ti, fi = divmod(int(flat), len(faces))
                if iou[ti, fi] < self.iou_threshold:
                    break
                if ti in used_tracks or assigned[fi] is not None:
                    continue
                used_tracks.add(ti)
                assigned[fi] = live[ti]
        for fi, face in enumerate(faces):
            track = assigned[fi]
            if track is None:
                track = Track(len(self.tracks), frame, self.step, face)
                self.tracks.append(track)
            track.add(frame, self.step, face)
            face["track"] = track.id
            face["age_track"] = round(track.age_mean, 2)
            face["gender_track"] = round(track.male_mean, 4)
        return faces

    def summaries(self):
        """One summary per track, in id order (see :meth:`Track.summary`)."""
        return [t.summary() for t in self.tracks]
