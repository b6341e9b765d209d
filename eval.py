"""Evaluate an age/gender checkpoint on labelled faces; writes the metrics as JSON (and a plot).

    python eval.py --data work-data/utkface/val.rec --model runs/m1/model,30 --json out.json --plot out.png
    python eval.py --data labels.csv --split val --model models/agegender-m1,0 --json out.json

``--data`` is a RecordIO pack of aligned faces (labels [gender, age]) or a CSV
``path,age,gender[,split][,race]`` of face images, which are detected and aligned exactly as
``data.prepare`` does for training packs (``--aligned`` when the images are already aligned 112x112
crops). Ages are compared with the labels as stored (not capped at 100). Gender 9999 (unknown) is left
out of gender accuracy. The JSON's ``fairness`` holds the same figures by race group (the CSV's ``race``
column or the pack's ``.meta.csv`` sidecar, when there is one), by gender and by age decade, with gender
accuracy also apart for children under 10 and everyone older. A CSV image that is missing or unreadable
is one ``error:`` line, counted in ``n_unreadable`` (not in the metrics), and makes the exit status 1; an
image where no face is found counts in ``n`` but not in ``n_detected``.
"""
import argparse
import json
import os
import sys
from typing import NamedTuple

import cv2
import numpy as np

from agegender import config
from agegender.decode import AGE_DECODINGS, decode_age_as, decode_age_expected, decode_gender
from agegender.errors import AgeGenderError, DataError, UsageParser
from agegender.cli import EXIT_FAILED, EXIT_OK, add_gpu_option, run_main
from agegender.files import atomic_write, check_output_path, print_error
from agegender.metrics import age_gender_summary, cumulative_scores, fairness_report
from agegender.model import AgeGenderModel, get_context
from analysis.detectors import DETECTORS, describe_detectors

BATCH = 64
CS_CURVE_MAX = 20


def pack_faces(path):
    """Yield ``(face_bgr, gender, age, race)`` for every record of a pack, in file order; race is None
    without a ``.meta.csv`` sidecar."""
    from data.records import PackReader, meta_path
    with PackReader(path) as reader:
        meta = reader.read_meta()
        if meta is None:
            print(f"note: {meta_path(path)} not found: no race groups (python -m data.prepare SOURCE --out DIR "
                  f"--meta-only writes it)", file=sys.stderr)
        races = meta["race"] if meta else [None] * len(reader.keys)
        for row, key in enumerate(reader.keys):
            gender, age = reader.labels[row]
            yield reader.read_image(key)[1], int(gender), int(age), races[row]


class Unreadable(NamedTuple):
    """What ``csv_faces`` yields instead of a face for an image that cannot be read: the reason."""
    reason: str


def csv_faces(path, split=None, aligned=False, det=0, det_model=None, backend="mxnet"):
    """Yield ``(face, gender, age, race)`` for every CSV row (of ``split``): ``face`` is the aligned BGR face
    (found by ``det`` as data.prepare finds it), None when no face is found, or an :class:`Unreadable` when
    the image is missing or cannot be read; race None when unknown."""
    from data.aligner import OK, FaceAligner
    from data.sources import read_csv
    items = [item for item in read_csv(path)[0] if not split or item.split == split]
    if not items:
        raise DataError(f"{path}: no rows" + (f" with split '{split}'" if split else ""))
    aligner = FaceAligner(det, det_model, backend, aligned=aligned)
    for item in items:
        status, payload = aligner(item.source)
        if status == OK:
            face = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        elif payload.startswith("unreadable: "):
            face = Unreadable(payload[len("unreadable: "):])
        else:
            face = None
        yield face, item.gender, item.age, item.race


def evaluate(model, faces, progress=False):
    """Run ``model`` over ``(face_bgr or None, gender, age, race)`` tuples; returns the metrics dict."""
    if progress:
        from tqdm import tqdm
        faces = tqdm(faces, unit="face", file=sys.stderr)
    genders, ages, races, fc1_parts, pending = [], [], [], [], []
    total = unreadable = 0

    def flush():
        fc1_parts.append(model.predict(pending)[1])
        pending.clear()

    for face, gender, age, race in faces:
        total += 1
        if isinstance(face, Unreadable):
            unreadable += 1
            print(f"error: {face.reason}", file=sys.stderr)
            continue
        if face is None:
            continue
        pending.append(face)
        genders.append(gender)
        ages.append(age)
        races.append(race)
        if len(pending) == BATCH:
            flush()
    if pending:
        flush()
    fc1 = np.concatenate(fc1_parts) if fc1_parts else np.zeros((0, config.FC1_SIZE), np.float32)
    age_pred = decode_age_as(fc1, model.age_decoding)
    age_expected, gender_pred = decode_age_expected(fc1), decode_gender(fc1)[0]
    result = age_gender_summary(ages, age_pred, age_expected, genders, gender_pred)
    result["n"], result["n_detected"], result["n_unreadable"] = total, len(ages), unreadable
    result["cs_curve"] = [round(float(v), 6) for v in cumulative_scores(ages, age_pred, CS_CURVE_MAX)] if ages else []
    result["cs_curve_expected"] = [round(float(v), 6) for v in
                                   cumulative_scores(ages, age_expected, CS_CURVE_MAX)] if ages else []
    result["fairness"] = fairness_report(ages, age_pred, age_expected, genders, gender_pred, races)
    return result


def _group_bars(axis, groups, series, ylabel, title):
    """Grouped bars of ``series`` = [(label, key)] over ``groups`` = {name: group summary}; None bars left out."""
    names = list(groups)
    x = np.arange(len(names))
    width = 0.8 / len(series)
    for i, (label, key) in enumerate(series):
        values = [groups[name][key] for name in names]
        axis.bar(x + (i - (len(series) - 1) / 2) * width, [np.nan if v is None else v for v in values], width,
                 label=label)
    axis.set_xticks(x, [f"{name}\n{groups[name]['n']}" for name in names], fontsize=8)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    if len(series) > 1:
        axis.legend(fontsize=8, ncol=len(series), loc="upper center")


def plot(result, path, title=""):
    """Save MAE and gender accuracy by age decade, the cumulative-score curves and MAE and gender accuracy by
    race group and gender (fairness report; bar labels give the group's face count) to ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplot_mosaic("AABBCC;DDDEEE", figsize=(15, 8))
    fairness = result["fairness"]
    by_decade = fairness["by_decade"]
    _group_bars(axes["A"], by_decade, [("argmax count", "mae"), ("expected value", "mae_expected")],
                "MAE (years)", "MAE by age decade (true age; n below)")
    _group_bars(axes["B"], by_decade, [("gender accuracy", "gender_acc")], "gender accuracy",
                "gender accuracy by age decade")
    axes["B"].set_ylim(0, 1.12)
    right = axes["C"]
    thresholds = np.arange(len(result["cs_curve"]))
    right.plot(thresholds, result["cs_curve"], marker=".", label="argmax count")
    right.plot(thresholds, result["cs_curve_expected"], marker=".", label="expected value")
    right.set_xlabel("error threshold t (years)")
    right.set_ylabel("CS@t = fraction with |error| <= t")
    right.set_ylim(0, 1)
    right.grid(alpha=0.3)
    right.set_title("cumulative score")
    right.legend()
    groups = {**fairness.get("by_race", {}), **fairness["by_gender"]}
    _group_bars(axes["D"], groups, [("argmax count", "mae"), ("expected value", "mae_expected")], "MAE (years)",
                "MAE by race group and gender")
    child = config.CHILD_AGE
    _group_bars(axes["E"], groups, [("all ages", "gender_acc"), (f"age >= {child}", f"gender_acc_age{child}plus"),
                                    (f"age < {child}", f"gender_acc_under{child}")],
                "gender accuracy", "gender accuracy by race group and gender")
    axes["E"].set_ylim(0, 1.12)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    extension = os.path.splitext(path)[1] or ".png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format=extension[1:]))
    plt.close(fig)


def parse_args(argv=None):
    p = UsageParser(description="Evaluate an age/gender model on a .rec pack or a CSV of images.")
    p.add_argument("--data", required=True, help="a .rec pack of aligned faces, or a CSV path,age,gender[,split]")
    p.add_argument("--model", default=config.DEFAULT_MODEL, help="checkpoint 'prefix,epoch'")
    p.add_argument("--json", default="", help="write the metrics to this JSON file")
    p.add_argument("--plot", default="", help="draw MAE and gender accuracy by decade, race group and gender, "
                                               "and the cumulative score curve, to this picture")
    p.add_argument("--split", default="", help="CSV only: evaluate the rows of this split (train/val/test)")
    p.add_argument("--aligned", action="store_true", help="CSV only: images are already aligned faces")
    p.add_argument("--det", type=int, default=0, choices=sorted(DETECTORS), help="CSV only: " + describe_detectors())
    for entry in DETECTORS.values():
        p.add_argument(f"--{entry.package}-model", default=None, help="CSV only: " + entry.model_help)
    add_gpu_option(p)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average each face with its mirror image (default: the model's own setting)")
    p.add_argument("--age-decoding", choices=AGE_DECODINGS, default=None,
                   help="how 'age' is read from the classifiers (default: the model's own setting)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    args = p.parse_args(argv)
    if os.path.isdir(args.data):
        p.error(f"--data {args.data}: is a folder; give a .rec pack or a CSV file")
    if not os.path.exists(args.data):
        p.error(f"--data {args.data}: file not found")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            try:
                check_output_path(path, option + " output")
            except AgeGenderError as exc:
                p.error(str(exc))
    if args.plot:
        from matplotlib.backend_bases import FigureCanvasBase
        formats = FigureCanvasBase.get_supported_filetypes()
        if os.path.splitext(args.plot)[1][1:].lower() not in formats:
            p.error(f"--plot {args.plot}: unknown picture type (use one of .{', .'.join(sorted(formats))})")
    return args


def main(argv=None):
    return run_main(lambda: _main(argv))


def _main(argv):
    args = parse_args(argv)
    model = AgeGenderModel(args.model, ctx=get_context(args.gpu), flip=args.flip, age_decoding=args.age_decoding)
    if args.data.endswith(".rec") or args.data.endswith(".idx"):
        faces = pack_faces(args.data)
    else:
        faces = csv_faces(args.data, args.split, args.aligned, args.det,
                          getattr(args, f"{DETECTORS[args.det].package}_model"))
    result = evaluate(model, faces, progress=args.progress)
    result["model"], result["data"], result["flip"] = args.model, args.data, model.flip
    result["age_decoding"] = model.age_decoding
    text = json.dumps(result, indent=1, allow_nan=False)
    if args.json:
        atomic_write(args.json, lambda tmp: _write_text(tmp, text + "\n"))
    if args.plot:
        plot(result, args.plot, title=f"{args.model} on {os.path.basename(args.data)}")
    summary = {k: result[k] for k in ("n", "n_detected", "n_unreadable", "mae", "cs5", "gender_acc", "mae_expected",
                                      "cs5_expected")}
    print(json.dumps(summary, allow_nan=False))
    if result["n_unreadable"]:
        print_error(f"error: {args.data}: {result['n_unreadable']} of {result['n']} images could not be read "
                    f"(left out of the metrics)")
        return EXIT_FAILED
    return EXIT_OK


def _write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
