"""Evaluate an age/gender checkpoint on labelled faces; writes the metrics as JSON (and a plot).

    python eval.py --data work-data/utkface/val.rec --model runs/m1/model,30 --json out.json --plot out.png
    python eval.py --data labels.csv --split val --model models/agegender-m1,0 --json out.json

``--data`` is a RecordIO pack of aligned faces (labels [gender, age]) or a CSV ``path,age,gender[,split]``
of face images, which are detected and aligned exactly as ``data.prepare`` does for training packs
(``--aligned`` when the images are already aligned 112x112 crops). Ages are compared with the labels
as stored (not capped at 100). Gender 9999 (unknown) is left out of gender accuracy.
"""
import argparse
import json
import os
import sys

import cv2
import numpy as np

from agegender import config
from agegender.decode import decode_age, decode_age_expected, decode_gender
from agegender.errors import AgeGenderError, DataError
from agegender.metrics import age_gender_summary, cumulative_scores
from agegender.model import AgeGenderModel, get_context

BATCH = 64
CS_CURVE_MAX = 20


def pack_faces(path):
    """Yield ``(face_bgr, gender, age)`` for every record of a pack, in file order."""
    from data.records import PackReader
    with PackReader(path) as reader:
        for row, key in enumerate(reader.keys):
            gender, age = reader.labels[row]
            yield reader.read_image(key)[1], int(gender), int(age)


def csv_faces(path, split=None, aligned=False, mtcnn_model=config.MTCNN_MODEL_DIR):
    """Yield ``(face_bgr or None, gender, age)`` for every CSV row (of ``split``); None when no face is found."""
    from data.prepare import OK, FaceAligner
    from data.sources import read_csv
    items = [item for item in read_csv(path)[0] if not split or item.split == split]
    if not items:
        raise DataError(f"{path}: no rows" + (f" with split '{split}'" if split else ""))
    aligner = FaceAligner(mtcnn_model=mtcnn_model, aligned=aligned)
    for item in items:
        status, payload = aligner(item.source)
        face = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR) if status == OK else None
        yield face, item.gender, item.age


def evaluate(model, faces, progress=False):
    """Run ``model`` over ``(face_bgr or None, gender, age)`` tuples; returns the metrics dict."""
    if progress:
        from tqdm import tqdm
        faces = tqdm(faces, unit="face", file=sys.stderr)
    genders, ages, fc1_parts, pending = [], [], [], []
    total = 0

    def flush():
        fc1_parts.append(model.predict(pending)[1])
        pending.clear()

    for face, gender, age in faces:
        total += 1
        if face is None:
            continue
        pending.append(face)
        genders.append(gender)
        ages.append(age)
        if len(pending) == BATCH:
            flush()
    if pending:
        flush()
    fc1 = np.concatenate(fc1_parts) if fc1_parts else np.zeros((0, config.FC1_SIZE), np.float32)
    age_pred = decode_age(fc1)
    result = age_gender_summary(ages, age_pred, decode_age_expected(fc1), genders, decode_gender(fc1)[0])
    result["n"], result["n_detected"] = total, len(ages)
    result["cs_curve"] = [round(float(v), 6) for v in cumulative_scores(ages, age_pred, CS_CURVE_MAX)]
    result["cs_curve_expected"] = [round(float(v), 6) for v in
                                   cumulative_scores(ages, decode_age_expected(fc1), CS_CURVE_MAX)]
    return result


def plot(result, path, title=""):
    """Save MAE by age decade (both decodings) and the cumulative-score curves to ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    decades = list(result["mae_by_decade"])
    x = np.arange(len(decades))
    left.bar(x - 0.2, [result["mae_by_decade"][d] for d in decades], 0.4, label="argmax count")
    left.bar(x + 0.2, [result["mae_by_decade_expected"][d] for d in decades], 0.4, label="expected value")
    left.set_xticks(x, decades)
    left.set_xlabel("true age")
    left.set_ylabel("MAE (years)")
    left.set_title("MAE by age decade")
    left.legend()
    thresholds = np.arange(len(result["cs_curve"]))
    right.plot(thresholds, result["cs_curve"], marker=".", label="argmax count")
    right.plot(thresholds, result["cs_curve_expected"], marker=".", label="expected value")
    right.set_xlabel("error threshold t (years)")
    right.set_ylabel("CS@t = fraction with |error| <= t")
    right.set_ylim(0, 1)
    right.grid(alpha=0.3)
    right.set_title("cumulative score")
    right.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate an age/gender model on a .rec pack or a CSV of images.")
    p.add_argument("--data", required=True, help="a .rec pack of aligned faces, or a CSV path,age,gender[,split]")
    p.add_argument("--model", default=config.DEFAULT_MODEL, help="checkpoint 'prefix,epoch'")
    p.add_argument("--json", default="", help="write the metrics to this JSON file")
    p.add_argument("--plot", default="", help="draw MAE by decade and the cumulative score curve to this picture")
    p.add_argument("--split", default="", help="CSV only: evaluate the rows of this split (train/val/test)")
    p.add_argument("--aligned", action="store_true", help="CSV only: images are already aligned faces")
    p.add_argument("--mtcnn-model", default=config.MTCNN_MODEL_DIR, help="CSV only: MTCNN checkpoint folder")
    p.add_argument("--gpu", type=int, default=-1, help="GPU id (-1: CPU)")
    p.add_argument("--flip", action="store_true", help="average each face with its mirror image")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        model = AgeGenderModel(args.model, ctx=get_context(args.gpu), flip=args.flip)
        if args.data.endswith(".rec") or args.data.endswith(".idx"):
            faces = pack_faces(args.data)
        else:
            faces = csv_faces(args.data, args.split, args.aligned, args.mtcnn_model)
        result = evaluate(model, faces, progress=args.progress)
    except AgeGenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["model"], result["data"], result["flip"] = args.model, args.data, args.flip
    text = json.dumps(result, indent=1)
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.plot:
        plot(result, args.plot, title=f"{args.model} on {os.path.basename(args.data)}")
    summary = {k: result[k] for k in ("n", "n_detected", "mae", "cs5", "gender_acc", "mae_expected", "cs5_expected")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
