"""The batch loop behind test.py: inputs in, annotated pictures or videos / JSON / JSON Lines / CSV out,
bad items skipped; videos get face tracks; collections can be sharded and resumed."""
import csv
import errno
import json
import os
import sys

import cv2
from tqdm import tqdm

from agegender.errors import AgeGenderError
from agegender.image import read_image

from .draw import draw_faces
from .inputs import VIDEO_EXTENSIONS, expand_inputs, in_shard, iter_video_frames, output_name, video_fps
from .tracking import FaceTracker


class OutputError(AgeGenderError):
    """The JSON or CSV output cannot be written: the run stops."""


def _output_error(path, exc):
    """An OutputError for a failed write to ``path``; after a broken pipe, stdout is muted for a clean exit."""
    if path == "-" and exc.errno == errno.EPIPE:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OutputError("standard output was closed by the reader (broken pipe)")
    return OutputError(f"{path}: cannot write ({exc.strerror or exc})")


CSV_COLUMNS = ["image", "frame", "face", "x1", "y1", "x2", "y2", "score", "age", "age_expected",
               "gender", "gender_prob_male", "track", "age_track", "gender_track"]
TRACK_FIELDS = ("track", "age_track", "gender_track")


class JsonArrayWriter:
    """Writes one JSON array incrementally, so memory stays flat however many images there are."""

    def __init__(self, path):
        self.path = path
        self.file = sys.stdout if path == "-" else _open_for_writing(path)
        self.count = 0
        self._write("[")

    def _write(self, text):
        try:
            self.file.write(text)
        except OSError as exc:
            raise _output_error(self.path, exc) from None

    def write(self, record):
        self._write(("," if self.count else "") + "\n" + json.dumps(record))
        self.count += 1

    def close(self):
        self._write("\n]\n")
        _close(self.file, self.path)


class CsvWriter:
    """One row per face."""

    def __init__(self, path):
        self.path = path
        self.file = sys.stdout if path == "-" else _open_for_writing(path, newline="")
        self.writer = csv.writer(self.file)
        self._rows([CSV_COLUMNS])

    def _rows(self, rows):
        try:
            self.writer.writerows(rows)
        except OSError as exc:
            raise _output_error(self.path, exc) from None

    def write(self, record):
        """One row per face; a video's track summary record has no faces and gives no row."""
        self._rows([record["image"], "" if record["frame"] is None else record["frame"], i,
                    *face["bbox"], face["score"], face["age"], face["age_expected"],
                    face["gender"], face["gender_prob_male"], *(face.get(k, "") for k in TRACK_FIELDS)]
                   for i, face in enumerate(record.get("faces", ())))

    def close(self):
        _close(self.file, self.path)


class JsonLinesWriter:
    """One JSON object per line ('-' = stdout). Each line goes out in one unbuffered write, so a run cut
    at any point, even by SIGKILL, leaves complete lines only; ``append`` keeps the lines already there."""

    def __init__(self, path, append=False):
        self.path = path
        try:
            if path == "-":
                self.fd = sys.stdout.fileno()
                sys.stdout.flush()
            else:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o666)
        except OSError as exc:
            raise _output_error(path, exc) from None

    def write(self, record):
        view = memoryview((json.dumps(record) + "\n").encode("utf-8"))
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            raise _output_error(self.path, exc) from None

    def close(self):
        if self.path != "-":
            try:
                os.close(self.fd)
            except OSError as exc:
                raise _output_error(self.path, exc) from None


def finished_in_jsonl(path):
    """Inputs an earlier run finished in the JSON Lines file ``path``, for ``--resume``.

    A picture is finished by its record, a video by its track summary record. What a cut run left
    unfinished is removed from the file first (rewritten to a temporary file, then renamed): the frame
    records of a video without its summary, and a last line without its newline. Returns a set of paths.
    """
    if not os.path.exists(path):
        return set()
    finished, frames, cut = set(), set(), False
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    cut = True
                    break
                try:
                    record = json.loads(line)
                    image = record["image"]
                except (ValueError, KeyError, TypeError):
                    raise OutputError(f"{path}: line {number} is not a record of test.py; cannot resume from it") \
                        from None
                if "tracks" in record or record.get("frame") is None:
                    finished.add(image)
                else:
                    frames.add(image)
        unfinished = frames - finished
        if cut or unfinished:
            _drop_unfinished(path, unfinished)
    except OSError as exc:
        raise _output_error(path, exc) from None
    return finished


def _drop_unfinished(path, unfinished):
    """Rewrite ``path`` without the frame records of the ``unfinished`` videos and without a cut last line."""
    temp = f"{path}.resume-tmp"
    with open(path, "rb") as source, open(temp, "wb") as target:
        for line in source:
            if not line.endswith(b"\n"):
                break
            if unfinished and json.loads(line)["image"] in unfinished:
                continue
            target.write(line)
        target.flush()
        os.fsync(target.fileno())
    os.replace(temp, path)


def _open_for_writing(path, newline=None):
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return open(path, "w", encoding="utf-8", newline=newline)
    except OSError as exc:
        raise _output_error(path, exc) from None


def _close(file, path):
    """Flush stdout or close a file; buffered data that cannot be written raises OutputError."""
    try:
        if file is sys.stdout:
            file.flush()
        else:
            file.close()
    except OSError as exc:
        raise _output_error(path, exc) from None


class PictureWriter:
    """Writes annotated pictures: to ``output`` itself for a single picture, else inside the folder.

    In a folder, names come from :func:`output_name` (no ``..``, no absolute paths) and a name that a
    symbolic link inside the folder would lead outside it is refused.
    """

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
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
            raise AgeGenderError(f"{path}: refused, a symbolic link would put it outside {self.output}")
        return path

    def write(self, item, frame, picture):
        path = self.path_for(item, frame)
        ok, encoded = cv2.imencode(os.path.splitext(path)[1] or ".jpg", picture)
        if not ok:
            raise AgeGenderError(f"{path}: cannot encode the annotated picture")
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            encoded.tofile(path)
        except OSError as exc:
            raise AgeGenderError(f"{path}: cannot write the annotated picture ({exc.strerror or exc})") from None


class VideoOutput:
    """An annotated video written frame by frame under a temporary name, renamed to ``path`` on close."""

    CODECS = {".avi": "MJPG"}     # others (.mp4, .mov, .mkv, ...): MPEG-4 part 2

    def __init__(self, path, fps):
        self.path = path
        self.fps = fps
        stem, ext = os.path.splitext(path)
        self.temp = f"{stem}.partial{ext}"
        self.writer = None

    def write(self, picture):
        # MPEG-4 needs even sides: an odd one gets a copy of its last row/column rather than losing it
        picture = cv2.copyMakeBorder(picture, 0, picture.shape[0] % 2, 0, picture.shape[1] % 2, cv2.BORDER_REPLICATE)
        if self.writer is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            ext = os.path.splitext(self.path)[1].lower()
            fourcc = cv2.VideoWriter_fourcc(*self.CODECS.get(ext, "mp4v"))
            self.writer = cv2.VideoWriter(self.temp, fourcc, self.fps, (picture.shape[1], picture.shape[0]))
            if not self.writer.isOpened():
                raise OutputError(f"{self.path}: cannot write a video (no encoder for {ext} in this OpenCV)")
        self.writer.write(picture)

    def close(self):
        if self.writer is not None:
            self.writer.release()
            try:
                os.replace(self.temp, self.path)
            except OSError as exc:
                raise _output_error(self.path, exc) from None


def _frames(item, args):
    """Yield ``(frame, image, scale)`` for an input item (one triple for a picture)."""
    if item.is_video:
        for frame, image in iter_video_frames(item.path, args.every):
            yield frame, image, 1.0
    else:
        image, scale = read_image(item.path)
        if scale != 1.0:
            tqdm.write(f"note: {item.path}: {round(image.shape[1] * scale)}x{round(image.shape[0] * scale)} pixels, "
                       f"decoded at 1/{round(scale)} size ({image.shape[1]}x{image.shape[0]})", file=sys.stderr)
        yield None, image, scale


def image_record(path, frame, image, scale, detector, faces):
    """The JSON record of one picture or video frame, as test.py writes it (``scale``: see read_image)."""
    return {"image": path, "frame": frame, "width": int(round(image.shape[1] * scale)),
            "height": int(round(image.shape[0] * scale)), "detector": detector, "faces": faces}


def track_summary_record(path, frames, tracker):
    """The record closing a video: processed frame count and one summary per face track."""
    return {"image": path, "frame": None, "frames": frames, "tracks": tracker.summaries()}


def select_items(items, args):
    """The items of this run: those of ``--shard K/N``, less those ``--resume`` finds finished."""
    if args.shard:
        index, count = args.shard
        items = [item for item in items if in_shard(item, index, count)]
    if args.resume:
        finished = finished_in_jsonl(args.jsonl)
        remaining = [item for item in items if item.path not in finished]
        if len(remaining) < len(items):
            tqdm.write(f"note: {args.jsonl}: {len(items) - len(remaining)} of {len(items)} inputs already done, "
                       f"resuming with {len(remaining)}", file=sys.stderr)
        items = remaining
    return items


def report(message):
    """Print a one-line error for a bad item on stderr."""
    tqdm.write(f"error: {message}", file=sys.stderr)


def run(analyzer, args):
    """Process every input of ``args``; returns the exit status (0 all good, 1 if any item failed)."""
    found = expand_inputs(args.inputs)
    items = select_items(found, args)
    writers = []
    if args.json:
        writers.append(JsonArrayWriter(args.json))
    if args.csv:
        writers.append(CsvWriter(args.csv))
    if args.jsonl:
        writers.append(JsonLinesWriter(args.jsonl, append=args.resume))
    one_video = len(found) == 1 and found[0].is_video
    video_out = None
    pictures = None
    if args.output and one_video and args.output.lower().endswith(VIDEO_EXTENSIONS):
        video_out = VideoOutput(args.output, video_fps(found[0].path) / args.every)
    elif args.output:
        pictures = PictureWriter(args.output, single=len(found) == 1 and not found[0].is_video)
    failed = 0
    show_bar = (len(found) > 1 or one_video) and not args.quiet and sys.stderr.isatty()
    bar = tqdm(total=len(items), unit="input", disable=not show_bar, file=sys.stderr, dynamic_ncols=True)
    pending = []

    def flush(tracker):
        if not pending:
            return
        images = [entry[2] for entry in pending]
        if analyzer.finder is None:
            results = [_rescaled(faces, entry[3]) for faces, entry in
                       zip(analyzer.analyze_aligned(images, raw=args.raw), pending)]
        else:
            results = analyzer.analyze_many(images, raw=args.raw, scales=[entry[3] for entry in pending])
        for (item, frame, image, scale), faces in zip(pending, results):
            if tracker is not None:
                tracker.update(frame, faces)
            record = image_record(item.path, frame, image, scale, analyzer.detector_name, faces)
            for writer in writers:
                writer.write(record)
            if pictures or video_out or args.show:
                picture = draw_faces(image, _rescaled(faces, 1.0 / scale))
                if pictures:
                    pictures.write(item, frame, picture)
                if video_out:
                    video_out.write(picture)
                if args.show:
                    _show(picture)
        pending.clear()

    try:
        for item in items:
            try:
                if item.error:
                    raise AgeGenderError(item.error)
                tracker = FaceTracker() if item.is_video else None
                frames = 0
                for frame, image, scale in _frames(item, args):
                    pending.append((item, frame, image, scale))
                    frames += 1
                    if len(pending) >= args.images_per_batch:
                        flush(tracker)
                flush(tracker)
                if tracker is not None:
                    for writer in writers:
                        writer.write(track_summary_record(item.path, frames, tracker))
            except OutputError:
                raise
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
        close_errors = _close_all(writers + ([video_out] if video_out else []))
    if close_errors:
        raise close_errors[0]
    return 1 if failed else 0


def _close_all(writers):
    """Close every writer; returns the OutputErrors (reported unless another error is on its way)."""
    errors = []
    for writer in writers:
        try:
            writer.close()
        except OutputError as exc:
            errors.append(exc)
    return errors


def _rescaled(faces, factor):
    """Faces with box and landmark coordinates multiplied by ``factor`` (between decoded and file pixels)."""
    if factor == 1.0:
        return faces
    scaled = []
    for face in faces:
        face = dict(face)
        face["bbox"] = [v * factor for v in face["bbox"]]
        if face.get("landmarks"):
            face["landmarks"] = [[x * factor, y * factor] for x, y in face["landmarks"]]
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
