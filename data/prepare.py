"""Build train/val[/test] RecordIO packs of 5-point-aligned 112x112 faces from a labelled source.

    python -m data.prepare SOURCE --out DIR [options]

SOURCE is a UTKFace-style folder, a CSV (path,age,gender[,split]), an IMDB-WIKI .mat or a .rec pack.
Each image is read, padded, searched with a detector (``--det``, MTCNN by default; the face nearest the
centre is kept), aligned and JPEG-encoded by a pool of worker processes (:mod:`data.aligner`); results
are appended to a journal in DIR/.prepare so an interrupted run resumes where it stopped when the same
command is run again. The packs are written from the journal at the end, in source order, so every kept
image gives exactly one record; each pack gets a sidecar ``<split>.meta.csv`` (record key -> source
image, race code). ``--meta-only`` writes just the sidecars for packs made earlier from the same source
and settings (checked against their labels).
"""
import csv
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import struct
import sys
import time
import zlib
from collections import Counter

import cv2

from agegender import config
from agegender.errors import AgeGenderError, DataError, UsageParser
from agegender.cli import EXIT_INTERRUPTED, EXIT_OK, run_main
from agegender.files import atomic_write, print_error, write_json
from analysis.detectors import DETECTORS, describe_detectors

from .aligner import OK, FaceAligner
from .records import PackReader, PackWriter, write_pack_meta
from .sources import SPLITS, assign_splits, read_source, young_items

WORK_DIR = ".prepare"
CHUNK = 8                          # images per task sent to a worker

log = logging.getLogger("data.prepare")


# -- journal ---------------------------------------------------------------------------------------
class Journal:
    """Append-only file of per-item results: ``<magic, index, status, length, crc32>`` + payload.

    A torn last entry (the run was killed while writing) is cut off when the journal is reopened.
    """
    MAGIC = 0x4A524E4C
    HEAD = struct.Struct("<IIBII")

    def __init__(self, path):
        self.path = path
        self.entries = {}          # item index -> (status, payload offset, payload length)
        valid_end = 0
        if os.path.exists(path):
            with open(path, "rb") as f:
                while True:
                    head = f.read(self.HEAD.size)
                    if len(head) < self.HEAD.size:
                        break
                    magic, index, status, length, crc = self.HEAD.unpack(head)
                    payload = f.read(length)
                    if magic != self.MAGIC or len(payload) < length or zlib.crc32(payload) != crc:
                        break
                    self.entries[index] = (status, valid_end + self.HEAD.size, length)
                    valid_end = f.tell()
            with open(path, "r+b") as f:
                f.truncate(valid_end)
        self._file = open(path, "ab")

    def append(self, index, status, payload):
        offset = self._file.tell() + self.HEAD.size
        self._file.write(self.HEAD.pack(self.MAGIC, index, status, len(payload), zlib.crc32(payload)))
        self._file.write(payload)
        self.entries[index] = (status, offset, len(payload))

    def flush(self):
        self._file.flush()
        os.fsync(self._file.fileno())

    def read(self, index):
        status, offset, length = self.entries[index]
        with open(self.path, "rb") as f:
            f.seek(offset)
            return status, f.read(length)

    def close(self):
        self._file.close()


# -- per-image work (runs in the worker processes) -------------------------------------------------
_aligner = None


def _init_worker(options):
    global _aligner
    cv2.setNumThreads(1)
    _aligner = FaceAligner(**options)


def _process_chunk(chunk):
    return [(index, *_aligner(source)) for index, source in chunk]


# -- the run ---------------------------------------------------------------------------------------
def _fingerprint(items, options):
    digest = hashlib.sha1(json.dumps(options, sort_keys=True).encode())
    for item in items:
        digest.update(f"{item.source}\t{item.gender}\t{item.age}\t{item.split}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _open_journal(work, items, options, restart):
    manifest_path = os.path.join(work, "manifest.json")
    fingerprint = _fingerprint(items, options)
    if restart and os.path.isdir(work):
        shutil.rmtree(work)
    os.makedirs(work, exist_ok=True)
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            if json.load(f).get("fingerprint") != fingerprint:
                raise DataError(f"{work}: holds an unfinished run with another source or settings; "
                                f"use --restart to discard it")
    else:
        atomic_write(manifest_path, lambda tmp: write_json(tmp, {"fingerprint": fingerprint, "items": len(items),
                                                                  "options": options}, indent=1), error_class=DataError)
    return Journal(os.path.join(work, "journal.bin"))


def run_workers(items, journal, options, workers, progress=True):
    """Align every item not yet in the journal; returns (processed now, aligned now, seconds spent)."""
    from tqdm import tqdm
    todo = [(i, item.source) for i, item in enumerate(items) if i not in journal.entries]
    chunks = [todo[start:start + CHUNK] for start in range(0, len(todo), CHUNK)]
    bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="img", disable=not progress,
               smoothing=0.05, dynamic_ncols=True)
    started = time.time()
    aligned_now = 0
    if workers <= 1:
        _init_worker(options)
        results = map(_process_chunk, chunks)
        pool = None
    else:
        # Fresh interpreters with one MXNet/OpenMP thread each: the processes share the cores instead.
        for name in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"
        os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (options,))
        results = pool.imap_unordered(_process_chunk, chunks)
    try:
        for chunk_results in results:
            for index, status, payload in chunk_results:
                journal.append(index, status, payload if status == OK else payload.encode("utf-8", "surrogateescape"))
                aligned_now += status == OK
                if status != OK:
                    log.info("skipped %s: %s", items[index].source, payload)
            journal.flush()
            bar.update(len(chunk_results))
            bar.set_postfix(faces_per_s=f"{aligned_now / max(time.time() - started, 1e-9):.1f}")
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    finally:
        bar.close()
    if pool is not None:
        pool.close()
        pool.join()
    return len(todo), aligned_now, time.time() - started


def write_packs(items, journal, out_dir, rejected):
    """Write the split packs and skipped.csv from a complete journal; returns {split: count}, skip reasons."""
    counts, reasons = Counter(), Counter(reason for _, reason in rejected)
    skipped_rows = list(rejected)
    for split in SPLITS:
        indices = [i for i, item in enumerate(items) if item.split == split]
        if not indices:
            continue
        with PackWriter(os.path.join(out_dir, split)) as writer:
            for index in indices:
                status, payload = journal.read(index)
                if status == OK:
                    item = items[index]
                    writer.write(payload, item.gender, item.age, item.source, item.race)
                else:
                    reason = payload.decode("utf-8", "surrogateescape")
                    skipped_rows.append((items[index].source, reason))
                    reasons[reason.split(":")[0]] += 1
            counts[split] = writer.count
    atomic_write(os.path.join(out_dir, "skipped.csv"),
                 lambda tmp: _write_csv(tmp, [("path", "reason")] + skipped_rows), error_class=DataError)
    return counts, reasons


def write_meta(items, out_dir):
    """Write the sidecars of packs already in ``out_dir`` that were made from ``items`` (their kept images
    in order, less those listed in skipped.csv); returns {split: records}. DataError when a pack's count or
    labels show it was made from another source or settings."""
    skipped_csv = os.path.join(out_dir, "skipped.csv")
    if not os.path.isfile(skipped_csv):
        raise DataError(f"{skipped_csv}: file not found (run the whole preparation instead of --meta-only)")
    with open(skipped_csv, newline="", encoding="utf-8") as f:
        skipped = {row["path"] for row in csv.DictReader(f)}
    written = {}
    for split in SPLITS:
        kept = [item for item in items if item.split == split and item.source not in skipped]
        if not kept:
            continue
        with PackReader(os.path.join(out_dir, split), check_labels=False) as reader:
            if len(reader) != len(kept):
                raise DataError(f"{reader.rec_path}: {len(reader)} records, but the source keeps {len(kept)} "
                                f"{split} images; the pack was made from another source or settings")
            for row, (key, item) in enumerate(zip(reader.keys, kept)):
                gender, age = (int(v) for v in reader.labels[row])
                if (gender, age) != (item.gender, item.age):
                    raise DataError(f"{reader.rec_path}: record {key} is labelled [{gender}, {age}] but the "
                                    f"source's image for it, {item.source}, is [{item.gender}, {item.age}]; "
                                    f"the pack was made from another source or settings")
            write_pack_meta(reader.rec_path, [(key, item.source, item.race) for key, item in zip(reader.keys, kept)])
        written[split] = len(kept)
    return written


def prepare(source, out_dir, val_fraction=0.1, test_fraction=0.0, seed=0, workers=None, det_model=None,
            min_face="auto", pad=config.PACK_PAD, aligned=False, min_face_score=1.0, swap_labels=False,
            add_young=(), young_max_age=20, restart=False, keep_work=False, progress=True, meta_only=False,
            det=0, backend="mxnet"):
    """Run the whole preparation (see the module docstring); returns a summary dict.

    ``det``, ``det_model`` (None: the detector's default on ``backend``) and ``backend`` choose the detector.

    ``meta_only``: only write the sidecars of the packs already in ``out_dir`` (``{"meta": {split: n}}``).
    """
    os.makedirs(out_dir, exist_ok=True)
    items, rejected = read_source(source, min_face_score=min_face_score, age_first=swap_labels)
    items = assign_splits(items, val_fraction, test_fraction, seed)
    items += young_items(add_young, young_max_age, age_first=swap_labels)
    if not items:
        raise DataError(f"{source}: no usable images (see {os.path.join(out_dir, 'skipped.csv')})")
    if meta_only:
        return {"source": source, "out": out_dir, "meta": write_meta(items, out_dir)}
    options = {"det": det, "det_model": det_model and os.path.abspath(det_model), "backend": backend,
               "min_face": min_face, "pad": pad, "aligned": aligned}
    work = os.path.join(out_dir, WORK_DIR)
    journal = _open_journal(work, items, options, restart)
    resumed = len(journal.entries)
    log.info("%s: %d images (%d already done), %d rejected by labels/cleaning", source, len(items), resumed,
             len(rejected))
    try:
        processed, aligned_now, seconds = run_workers(items, journal, options, workers or os.cpu_count() or 1,
                                                      progress)
        counts, reasons = write_packs(items, journal, out_dir, rejected)
    finally:
        journal.close()
    if not keep_work:
        shutil.rmtree(work)
    summary = {"source": source, "out": out_dir, "records": dict(counts), "skipped": dict(reasons),
               "resumed_from": resumed, "processed_now": processed, "seconds": round(seconds, 1),
               "faces_per_s": round(aligned_now / seconds, 2) if seconds > 0 else None}
    atomic_write(os.path.join(out_dir, "summary.json"), lambda tmp: write_json(tmp, summary, indent=1), error_class=DataError)
    return summary


def _write_csv(path, rows):
    # file names that are not UTF-8 (surrogate escapes) are written as their original bytes
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        csv.writer(f).writerows(rows)


def parse_args(argv=None):
    parser = UsageParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="UTKFace-style folder, .csv (path,age,gender[,split]), IMDB-WIKI .mat or .rec")
    parser.add_argument("--out", required=True, help="output folder for train/val[/test].rec + .idx")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="random val share when the source has no split")
    parser.add_argument("--test-fraction", type=float, default=0.0, help="random test share (writes test.rec)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes (default: all cores)")
    parser.add_argument("--det", type=int, default=0, choices=sorted(DETECTORS), help=describe_detectors())
    for entry in DETECTORS.values():
        parser.add_argument(f"--{entry.package}-model", default=None, help=entry.model_help)
    parser.add_argument("--backend", default="mxnet", choices=["mxnet", "onnx"],
                        help="the detector's backend (onnx: files written by export.py)")
    parser.add_argument("--min-face", default="auto",
                        help="smallest face in px; 'auto' = a quarter of the image's shorter side (>= 20), "
                             "retried at 20 when nothing is found")
    parser.add_argument("--pad", type=float, default=config.PACK_PAD,
                        help="replicated border on each side before detection, fraction of the image size")
    parser.add_argument("--aligned", action="store_true", help="images are already aligned: no detection, "
                                                               "only resized to 112x112 and re-encoded")
    parser.add_argument("--min-face-score", type=float, default=1.0, help=".mat cleaning: minimum face_score")
    parser.add_argument("--swap-labels", action="store_true",
                        help="input packs hold [age, gender] labels (SSR-Net style) instead of [gender, age]")
    parser.add_argument("--add-young", nargs="+", default=(), metavar="PACK",
                        help="append the under-age records of these packs to train with gender unknown (9999)")
    parser.add_argument("--young-max-age", type=int, default=20, help="--add-young takes ages below this")
    parser.add_argument("--restart", action="store_true", help="discard an unfinished run in --out")
    parser.add_argument("--keep-work", action="store_true", help=f"keep the journal in OUT/{WORK_DIR}")
    parser.add_argument("--meta-only", action="store_true",
                        help="only write <split>.meta.csv (record -> source image, race) for the packs already "
                             "in --out, made earlier from the same SOURCE and options")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in ("val_fraction", "test_fraction"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            parser.error(f"--{name.replace('_', '-')} {value}: must be a fraction between 0 and 1")
    if args.val_fraction + args.test_fraction > 1:
        parser.error(f"--val-fraction {args.val_fraction} + --test-fraction {args.test_fraction}: more than 1")
    if not args.pad >= 0 or args.pad > 10:
        parser.error(f"--pad {args.pad}: must be between 0 and 10 (a fraction of the image size)")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers {args.workers}: must be at least 1")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out}: is a file, not a folder")
    if not os.path.exists(args.source):
        parser.error(f"{args.source}: source not found")
    if args.min_face != "auto":
        try:
            args.min_face = int(args.min_face)
        except ValueError:
            parser.error(f"--min-face must be 'auto' or a number of pixels, got {args.min_face!r}")
        if args.min_face < 1:
            parser.error(f"--min-face {args.min_face}: must be at least 1 pixel")
    return args


def main(argv=None):
    return run_main(lambda: _main(argv))


def _main(argv):
    args = parse_args(argv)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        raise AgeGenderError(f"{args.out}: cannot create the output folder ({exc.strerror or exc})") from exc
    logging.basicConfig(filename=os.path.join(args.out, "prepare.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        summary = prepare(args.source, args.out, args.val_fraction, args.test_fraction, args.seed, args.workers,
                          getattr(args, f"{DETECTORS[args.det].package}_model"), args.min_face, args.pad,
                          args.aligned, args.min_face_score, args.swap_labels, args.add_young, args.young_max_age,
                          args.restart, args.keep_work, progress=not args.quiet, meta_only=args.meta_only,
                          det=args.det, backend=args.backend)
    except AgeGenderError as exc:
        log.error("%s", exc)
        raise
    except KeyboardInterrupt:
        print_error(f"interrupted: run the same command again to resume ({args.out}/{WORK_DIR} keeps the work done)")
        return EXIT_INTERRUPTED
    log.info("summary %s", json.dumps(summary))
    if args.meta_only:
        print("wrote " + ", ".join(f"{split}.meta.csv ({n} records)" for split, n in summary["meta"].items())
              + f" to {args.out}")
        return EXIT_OK
    records = ", ".join(f"{split} {n}" for split, n in summary["records"].items())
    skipped = ", ".join(f"{reason} {n}" for reason, n in summary["skipped"].items()) or "none"
    print(f"wrote {records} records to {args.out}; skipped: {skipped} (list in {args.out}/skipped.csv)")
    print(f"{summary['processed_now']} images processed in {summary['seconds']} s: "
          f"{summary['faces_per_s']} aligned faces/s")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
