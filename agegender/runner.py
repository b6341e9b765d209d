"""The batch loop behind test.py: inputs in, annotated pictures / JSON / CSV out, bad items skipped."""
import csv
import json
import os
import sys

import cv2
from tqdm import tqdm

from .draw import draw_faces
from .errors import AgeGenderError
from .image import read_image
from .inputs import expand_inputs, iter_video_frames, output_name

CSV_COLUMNS = ["image", "frame", "face", "x1", "y1", "x2", "y2", "score", "age", "age_expected",
               "gender", "gender_prob_male"]


class JsonArrayWriter:
    """Writes one JSON array incrementally, so memory stays flat however many images there are."""

    def __init__(self, path):
        self.file = sys.stdout if path == "-" else _open_for_writing(path)
        self.count = 0
        self.file.write("[")

    def write(self, record):
        self.file.write(("," if self.count else "") + "\n" + json.dumps(record))
        self.count += 1

    def close(self):
        self.file.write("\n]\n")
        if self.file is not sys.stdout:
            self.file.close()
        else:
            self.file.flush()


class CsvWriter:
    """One row per face."""

    def __init__(self, path):
        self.file = sys.stdout if path == "-" else _open_for_writing(path, newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(CSV_COLUMNS)

    def write(self, record):
        for i, face in enumerate(record["faces"]):
            self.writer.writerow([record["image"], "" if record["frame"] is None else record["frame"], i,
                                  *face["bbox"], face["score"], face["age"], face["age_expected"],
                                  face["gender"], face["gender_prob_male"]])

    def close(self):
        if self.file is not sys.stdout:
            self.file.close()


def _open_for_writing(path, newline=None):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return open(path, "w", encoding="utf-8", newline=newline)


class PictureWriter:
    """Writes annotated pictures: to ``output`` itself for a single picture, else inside the folder."""

    def __init__(self, output, single):
        self.output = output
        self.single = single and os.path.splitext(output)[1].lower() in (".jpg", ".jpeg", ".png", ".bmp")
        self.used = set()

    def path_for(self, item, frame):
        if self.single:
            return self.output
        root = os.path.abspath(self.output)
        path = os.path.abspath(os.path.join(root, output_name(item, frame)))
        stem, ext = os.path.splitext(path)
        n = 1
        while path in self.used:
            path = f"{stem}_{n}{ext}"
            n += 1
        self.used.add(path)
        return path

    def write(self, item, frame, picture):
        path = self.path_for(item, frame)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ok, encoded = cv2.imencode(os.path.splitext(path)[1] or ".jpg", picture)
        if not ok:
            raise AgeGenderError(f"{path}: cannot encode the annotated picture")
        encoded.tofile(path)


def _frames(item, args):
    """Yield ``(frame, image, scale)`` for an input item (one triple for a picture)."""
    if item.is_video:
        for frame, image in iter_video_frames(item.path, args.every):
            yield frame, image, 1.0
    else:
        image, scale = read_image(item.path)
        yield None, image, scale


def _record(item, frame, image, scale, detector, faces):
    return {"image": item.path, "frame": frame, "width": int(round(image.shape[1] * scale)),
            "height": int(round(image.shape[0] * scale)), "detector": detector, "faces": faces}


def report(message):
    """Print a one-line error for a bad item on stderr."""
    tqdm.write(f"error: {message}", file=sys.stderr)


def run(analyzer, args):
    """Process every input of ``args``; returns the exit status (0 all good, 1 if any item failed)."""
    items = expand_inputs(args.inputs)
    writers = []
    if args.json:
        writers.append(JsonArrayWriter(args.json))
    if args.csv:
        writers.append(CsvWriter(args.csv))
    pictures = PictureWriter(args.output, single=len(items) == 1 and not items[0].is_video) if args.output else None
    failed = 0
    show_bar = len(items) > 1 or any(item.is_video for item in items)
    bar = tqdm(total=len(items), unit="img", disable=not show_bar or args.quiet, file=sys.stderr,
               dynamic_ncols=True)
    pending = []

    def flush():
        if not pending:
            return
        images = [entry[2] for entry in pending]
        if analyzer.detector is None:
            results = analyzer.analyze_aligned(images, raw=args.raw)
        else:
            results = analyzer.analyze_many(images, raw=args.raw, scales=[entry[3] for entry in pending])
        for (item, frame, image, scale), faces in zip(pending, results):
            record = _record(item, frame, image, scale, analyzer.detector_name, faces)
            for writer in writers:
                writer.write(record)
            if pictures or args.show:
                picture = draw_faces(image, _scaled_faces(faces, scale))
                if pictures:
                    pictures.write(item, frame, picture)
                if args.show:
                    _show(picture)
        pending.clear()

    try:
        for item in items:
            try:
                if item.error:
                    raise AgeGenderError(item.error)
                for frame, image, scale in _frames(item, args):
                    pending.append((item, frame, image, scale))
                    if len(pending) >= args.images_per_batch:
                        flush()
                flush()
            except AgeGenderError as exc:
                pending.clear()
                failed += 1
                report(exc)
            except cv2.error as exc:
                pending.clear()
                failed += 1
                report(f"{item.path}: OpenCV could not process it ({str(exc).strip().splitlines()[-1]})")
            bar.update(1)
    finally:
        bar.close()
        for writer in writers:
            writer.close()
    return 1 if failed else 0


def _scaled_faces(faces, scale):
    """Faces with coordinates mapped back onto a picture decoded at reduced size."""
    if scale == 1.0:
        return faces
    scaled = []
    for face in faces:
        face = dict(face)
        face["bbox"] = [v / scale for v in face["bbox"]]
        if face.get("landmarks"):
            face["landmarks"] = [[x / scale, y / scale] for x, y in face["landmarks"]]
        scaled.append(face)
    return scaled


_display_checked = []


def _show(picture):
    if not _display_checked:
        _display_checked.append(bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")))
        if not _display_checked[0]:
            report("--show: no display available, window skipped")
    if not _display_checked[0]:
        return
    try:
        cv2.imshow("detection result", picture)
        cv2.waitKey(0)
    except cv2.error:
        _display_checked[0] = False
        report("--show: this OpenCV build has no GUI support, window skipped")
