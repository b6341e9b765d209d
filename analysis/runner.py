"""The batch loop behind test.py: inputs in, annotated pictures or videos / JSON / JSON Lines / CSV out,
bad items skipped; videos get face tracks; collections can be sharded and resumed."""
import csv
import errno
import json
import math
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
from tqdm import tqdm

from agegender.errors import AgeGenderError, ModelOutputError, UsageError
from agegender.files import (OutputError, TextOutput, atomic_write, check_output_path, mute_stdout, same_file,
                             stderr_clear)
from agegender.image import IMAGE_EXTENSIONS, read_image

from .draw import draw_faces
from .inputs import VIDEO_EXTENSIONS, expand_inputs, in_shard, iter_video_frames, output_name, video_fps
from .tracking import FaceTracker


def _output_error(path, exc):
    """An OutputError for a failed write to ``path``; after a broken pipe, stdout is muted for a clean exit."""
    if path == "-" and exc.errno == errno.EPIPE:
        mute_stdout()
        return OutputError("standard output was closed by the reader (broken pipe)")
    return OutputError(f"{path}: cannot write ({exc.strerror or exc})")


CSV_COLUMNS = ["image", "frame", "face", "x1", "y1", "x2", "y2", "score", "age", "age_expected",
               "gender", "gender_prob_male", "track", "age_track", "gender_track"]
TRACK_FIELDS = ("track", "age_track", "gender_track")


class JsonArrayWriter:
    """Writes one JSON array incrementally, so memory stays flat however many images there are.

    The file is complete or absent: it is written under a temporary name and renamed by close().
    """

    def __init__(self, path):
        self.path = path
        self.output = TextOutput(path)
        self.count = 0
        self.output.write("[")

    def write(self, record):
        self.output.write(("," if self.count else "") + "\n" + json.dumps(record, allow_nan=False))
        self.count += 1

    def close(self):
        self.output.write("\n]\n")
        self.output.commit()

    def discard(self):
        if self.path != "-":
            self.output.discard()
            return
        try:                            # what went to stdout is kept: end the array so it stays valid JSON
            self.close()
        except OutputError:
            pass


class CsvWriter:
    """One row per face; complete or absent like JsonArrayWriter."""

    def __init__(self, path):
        self.path = path
        self.output = TextOutput(path, newline="")
        self.writer = csv.writer(self.output)
        self.writer.writerow(CSV_COLUMNS)

    def write(self, record):
        """One row per face; a video's track summary record has no faces and gives no row."""
        self.writer.writerows([record["image"], "" if record["frame"] is None else record["frame"], i,
                               *face["bbox"], face["score"], face["age"], face["age_expected"],
                               face["gender"], face["gender_prob_male"], *(face.get(k, "") for k in TRACK_FIELDS)]
                              for i, face in enumerate(record.get("faces", ())))

    def close(self):
        self.output.commit()

    def discard(self):
        if self.path != "-":
            self.output.discard()
            return
        try:
            self.close()
        except OutputError:
            pass


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
        view = memoryview((json.dumps(record, allow_nan=False) + "\n").encode("utf-8"))
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

    def discard(self):
        """Lines written are kept (each is complete): the file is closed."""
        try:
            self.close()
        except OutputError:
            pass


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


def names_picture(path):
    """True when ``path`` is a picture file name (an image extension), not an existing folder."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS and not os.path.isdir(path)


class PictureWriter:
    """Writes annotated pictures: to ``output`` itself for a single picture, else inside the folder.

    In a folder, names come from :func:`output_name` (no ``..``, no absolute paths) and a name that a
    symbolic link inside the folder would lead outside it is refused. A video in a folder run becomes one
    annotated video there, named like the video with :data:`FOLDER_VIDEO_SUFFIX`.
    """

    def __init__(self, output, single):
        self.output = output
        self.single = single and names_picture(output)
        self.used = set()

    def path_for(self, item, frame, suffix=".jpg"):
        if self.single:
            return self.output
        root = os.path.abspath(self.output)
        path = os.path.abspath(os.path.join(root, output_name(item, frame, suffix)))
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
        atomic_write(path, encoded.tofile, error_class=AgeGenderError)


FOLDER_VIDEO_SUFFIX = ".mp4"


class VideoOutput:
    """An annotated video written frame by frame under a temporary name, renamed to ``path`` on close."""

    CODECS = {".avi": "MJPG"}     # others (.mp4, .mov, .mkv, ...): MPEG-4 part 2

    def __init__(self, path, fps):
        self.path = path
        self.fps = fps
        stem, ext = os.path.splitext(path)
        self.temp = f"{stem}.partial-{os.getpid()}{ext}"     # the extension tells OpenCV the container
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
            self.writer = None
            try:
                os.replace(self.temp, self.path)
            except OSError as exc:
                raise _output_error(self.path, exc) from None

    def discard(self):
        """Drop the partial video (``path`` stays as it was)."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        try:
            os.remove(self.temp)
        except OSError:
            pass


# Pictures decoded ahead of the one being analysed (a background thread: decoding releases the GIL).
PREFETCH_PICTURES = 2


class PictureReader:
    """Decodes the next pictures of ``items`` in a background thread while the current one is analysed.

    ``read(index)`` returns ``read_image(items[index].path)`` (or raises what it raised) and queues the
    decoding of the following pictures, at most ``depth`` ahead, so memory stays bounded.
    """

    def __init__(self, items, depth=PREFETCH_PICTURES):
        self.items, self.depth = items, depth
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") if depth > 0 else None
        self.pending = {}

    def read(self, index):
        for ahead in range(index + 1, min(index + 1 + self.depth, len(self.items))):
            item = self.items[ahead]
            if self.pool and ahead not in self.pending and not item.is_video and not item.error:
                self.pending[ahead] = self.pool.submit(read_image, item.path)
        future = self.pending.pop(index, None)
        return future.result() if future is not None else read_image(self.items[index].path)

    def close(self):
        if self.pool:
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.pending.clear()


def _frames(item, args, reader=None, index=None):
    """Yield ``(frame, image, scale)`` for an input item (one triple for a picture; ``reader``: a
    PictureReader over the run's items, ``index`` this item's place in them)."""
    if item.is_video:
        for frame, image in iter_video_frames(item.path, args.every):
            yield frame, image, 1.0
    else:
        image, scale = reader.read(index) if reader is not None else read_image(item.path)
        if scale != 1.0:
            report(f"{item.path}: {round(image.shape[1] * scale)}x{round(image.shape[0] * scale)} pixels, "
                   f"decoded at 1/{round(scale)} size ({image.shape[1]}x{image.shape[0]})", "note")
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
            report(f"{args.jsonl}: {len(items) - len(remaining)} of {len(items)} inputs already done, "
                   f"resuming with {len(remaining)}", "note")
        items = remaining
    return items


def report(message, kind="error"):
    """Print a one-line error (or note) for a bad item on stderr, never into a silenced one."""
    with stderr_clear():
        try:
            tqdm.write(f"{kind}: {message}", file=sys.stderr)
        except (OSError, ValueError):
            pass


def check_outputs(args, items):
    """UsageError unless the outputs of ``args`` can be written without destroying anything.

    Refused: two of ``--json``/``--csv``/``--jsonl`` naming one file, or more than one ``-``; an output that
    is (or would overwrite) an input file; an ``--output`` folder that is, or holds, an input folder; a
    picture file name for ``--output`` when the inputs give several pictures; outputs that are folders or
    inside a file.
    """
    inputs = [item.path for item in items if not item.error]
    input_folders = {os.path.realpath(item.root) for item in items if item.root}

    def overwrites_input(path):
        return any(same_file(path, p) for p in inputs)

    named = [(option, path) for option, path in (("--json", args.json), ("--csv", args.csv),
                                                  ("--jsonl", getattr(args, "jsonl", None))) if path]
    on_stdout = [option for option, path in named if path == "-"]
    if len(on_stdout) > 1:
        raise UsageError(f"{' - and '.join(on_stdout)} - would mix formats on standard output; write all but one "
                         f"to files")
    files = [(option, path) for option, path in named if path != "-"]
    for i, (option, path) in enumerate(files):
        for other_option, other in files[:i]:
            if path == other or same_file(path, other):
                raise UsageError(f"{other_option} and {option} name the same file {path}")
        if overwrites_input(path):
            raise UsageError(f"{option} {path}: is an input; refusing to overwrite it")
        try:
            check_output_path(path, f"{option} output")
        except AgeGenderError as exc:
            raise UsageError(str(exc)) from None
    if not args.output:
        return
    output = args.output
    single = len(items) == 1 and not items[0].is_video
    if len(items) == 1 and items[0].is_video and output.lower().endswith(VIDEO_EXTENSIONS):
        if overwrites_input(output) or any(same_file(output, p) for _, p in files):
            raise UsageError(f"--output {output}: is an input or another output; refusing to overwrite it")
        return
    if names_picture(output):
        if not single:
            raise UsageError(f"--output {output}: names one picture, but the inputs give several; give a folder")
        if overwrites_input(output) or any(same_file(output, p) for _, p in files):
            raise UsageError(f"--output {output}: is an input or another output; refusing to overwrite it")
        try:
            check_output_path(output, "--output picture")
        except AgeGenderError as exc:
            raise UsageError(str(exc)) from None
        return
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output}: is a file; give a folder (or a picture name for one input)")
    real = os.path.realpath(output)
    for folder in input_folders:
        if os.path.commonpath([real, folder]) == real:
            raise UsageError(f"--output {output}: is or holds the input folder {folder}; annotated pictures "
                             f"would be written among the inputs")
    planner = PictureWriter(output, single=False)
    for item in items:
        if item.error:
            continue
        try:
            planned = planner.path_for(item, None, FOLDER_VIDEO_SUFFIX if item.is_video else ".jpg")
        except AgeGenderError:
            continue                    # refused when the item is written (a symbolic link leads outside)
        if overwrites_input(planned):
            kind = "video" if item.is_video else "picture"
            raise UsageError(f"--output {output}: the annotated {kind} of {item.path} would overwrite an input")


class Interrupted(BaseException):
    """A second SIGINT/SIGTERM/SIGHUP arrived: the current item is abandoned."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopSignals:
    """While entered (main thread only): the first SIGINT, SIGTERM or SIGHUP sets ``received`` so the run
    stops after the current item; a second one raises :class:`Interrupted` to abandon that item.

    ``restore=False`` (a command line that exits next) keeps the handlers after the block, only recording.
    """

    def __init__(self, restore=True):
        self.received = None
        self._holding = False
        self._restore = restore
        self._previous = {}

    def hold(self):
        """From now on signals are only recorded (the outputs are being completed)."""
        self._holding = True

    def _handle(self, signum, frame):
        if self.received is None or self._holding:
            self.received = self.received or signum
            return
        raise Interrupted(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        if not self._restore:           # a command line about to exit: later signals are only recorded
            self.hold()
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def exit_status_for(signum):
    """The shell's exit status for a run stopped by ``signum``: 128 + its number (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


def _item_failure(item, exc):
    """The one-line report of an item that failed with a native or memory error, or None for other errors."""
    if isinstance(exc, MemoryError):
        return f"{item.path}: out of memory while processing it; skipped"
    if isinstance(exc, cv2.error):
        return f"{item.path}: OpenCV could not process it ({str(exc).strip().splitlines()[-1]})"
    kind = type(exc)
    if kind.__name__ == "MXNetError" or kind.__module__.startswith("onnxruntime"):
        text = [line for line in str(exc).strip().splitlines() if line.strip()] or [kind.__name__]
        return f"{item.path}: the network could not process it ({text[-1][:200]})"
    return None


def run(analyzer, args, found=None, signals=None):
    """Process every input of ``args``; returns the exit status (0 all good, 1 if any item failed, 128 + N
    when stopped by signal N).

    ``found`` (default: ``expand_inputs(args.inputs)``) should have passed :func:`check_outputs`; ``signals``
    is the entered :class:`StopSignals` (default: one entered here).
    """
    found = expand_inputs(args.inputs) if found is None else found
    if signals is None:
        with StopSignals() as own:
            return run(analyzer, args, found, own)
    items = select_items(found, args)
    if signals.received:
        return _stopped(signals.received, 0, len(items))
    one_video = len(found) == 1 and found[0].is_video
    video_out = None
    pictures = None
    if args.output and one_video and args.output.lower().endswith(VIDEO_EXTENSIONS):
        video_out = VideoOutput(args.output, video_fps(found[0].path) / args.every)
    elif args.output:
        pictures = PictureWriter(args.output, single=len(found) == 1 and not found[0].is_video)
    writers = []
    outputs = [video_out] if video_out else []
    try:
        for option, writer_class in (("json", JsonArrayWriter), ("csv", CsvWriter)):
            if getattr(args, option):
                outputs.append(writer_class(getattr(args, option)))
                writers.append(outputs[-1])
        if args.jsonl:
            outputs.append(JsonLinesWriter(args.jsonl, append=args.resume))
            writers.append(outputs[-1])
    except BaseException:
        for output in outputs:
            output.discard()
        raise
    failed = done = 0
    show_bar = (len(found) > 1 or one_video) and not args.quiet and sys.stderr.isatty()
    bar = None
    pending = []

    def flush(item, tracker):
        if not pending:
            return
        images = [entry[2] for entry in pending]
        try:
            if analyzer.finder is None:
                results = [_rescaled(faces, entry[3]) for faces, entry in
                           zip(analyzer.analyze_aligned(images, raw=args.raw), pending)]
            else:
                results = analyzer.analyze_many(images, raw=args.raw, scales=[entry[3] for entry in pending])
        except ModelOutputError as exc:
            raise AgeGenderError(f"{item.path}: {exc}") from None
        for (item, frame, image, scale), faces in zip(pending, results):
            if tracker is not None:
                tracker.update(frame, faces)
            record = image_record(item.path, frame, image, scale, analyzer.detector_name, faces)
            _check_finite(record)
            for writer in writers:
                writer.write(record)
            if pictures or video_out or args.show:
                picture = draw_faces(image, _rescaled(faces, 1.0 / scale))
                if item_video:
                    item_video.write(picture)
                elif pictures:
                    pictures.write(item, frame, picture)
                if video_out:
                    video_out.write(picture)
                if args.show:
                    _show(picture)
        pending.clear()

    interrupted = None
    item_video = None                   # the annotated video of the current video in a folder run
    reader = PictureReader(items)
    try:
        bar = tqdm(total=len(items), unit="input", disable=not show_bar, file=sys.stderr, dynamic_ncols=True)
        for index, item in enumerate(items):
            if signals.received:
                break
            try:
                if item.error:
                    raise AgeGenderError(item.error)
                tracker = FaceTracker() if item.is_video else None
                if pictures and item.is_video:
                    item_video = VideoOutput(pictures.path_for(item, None, FOLDER_VIDEO_SUFFIX),
                                             video_fps(item.path) / args.every)
                    outputs.append(item_video)
                frames = 0
                for frame, image, scale in _frames(item, args, reader, index):
                    pending.append((item, frame, image, scale))
                    frames += 1
                    if len(pending) >= args.images_per_batch:
                        flush(item, tracker)
                        if signals.received:        # a long video: stop at a batch boundary
                            break
                flush(item, tracker)
                if tracker is not None:
                    for writer in writers:
                        writer.write(track_summary_record(item.path, frames, tracker))
            except OutputError:
                raise
            except AgeGenderError as exc:
                pending.clear()
                failed += 1
                report(exc)
            except Exception as exc:  # noqa: BLE001 - native and memory errors fail this item only
                message = _item_failure(item, exc)
                if message is None:
                    raise
                pending.clear()
                failed += 1
                report(message)
            if item_video:                  # kept with the frames done, like a single --output video
                outputs.remove(item_video)
                errors = _close_all([item_video])
                item_video = None
                if errors:
                    raise errors[0]
            done += 1
            bar.update(1)
    except Interrupted as exc:
        interrupted = exc.signum
        pending.clear()
    except BaseException:
        signals.hold()
        for output in outputs:
            output.discard()
        raise
    finally:
        reader.close()
        if bar is not None:
            bar.close()
    signals.hold()
    close_errors = _close_all(outputs)
    if close_errors:
        raise close_errors[0]
    if interrupted or signals.received:
        return _stopped(interrupted or signals.received, done, len(items))
    return 1 if failed else 0


def _stopped(signum, done, total):
    name = signal.Signals(signum).name
    report(f"interrupted by {name} after {done} of {total} inputs; the outputs hold the inputs done")
    return exit_status_for(signum)


def _check_finite(record):
    """AgeGenderError naming the image if any number of its record is NaN or infinite (JSON cannot hold it)."""
    for face in record["faces"]:
        values = list(face["bbox"]) + [face.get("score"), face.get("age_expected"), face.get("gender_prob_male")]
        values += [v for point in face.get("landmarks") or [] for v in point] + list(face.get("fc1") or [])
        if not all(v is None or math.isfinite(v) for v in values):
            raise AgeGenderError(f"{record['image']}: a face's result holds NaN or infinite values; not written")


def _close_all(writers):
    """Close every writer; returns the OutputErrors (the outputs that could not be completed are discarded)."""
    errors = []
    for writer in writers:
        try:
            writer.close()
        except OutputError as exc:
            writer.discard()
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
