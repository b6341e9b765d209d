"""ESSH/RetinaFace input-size cap (``max_size``): recall on the golden faces and time per image; prints JSON.

    python -m bench.bench_essh_size [--sizes none,1600,1280,960,800,640,480] [--backend onnx] [--runs 3]

For every sample image with a golden reference (``reference/mtcnn/<stem>.json``: the original MTCNN's
faces), the detector runs with the longer image side capped at each size. A golden face counts as found
when a detection's five landmarks lie within a quarter of the golden box side of the golden ones on
average (box conventions differ between the detectors; landmarks do not). Time: min of ``--runs`` calls
after one warm-up, one thread unless OMP_NUM_THREADS says otherwise. Used to choose config.ESSH_MAX_SIZE.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from agegender import config
from agegender.image import read_image

MATCH_FRACTION = 0.25


def recall(golden_boxes, golden_landmarks, landmarks):
    """Fraction of golden faces with a detection whose landmarks are near theirs (see the module docstring)."""
    if len(golden_boxes) == 0:
        return None
    if len(landmarks) == 0:
        return 0.0
    side = np.maximum(golden_boxes[:, 2] - golden_boxes[:, 0], golden_boxes[:, 3] - golden_boxes[:, 1])
    distance = np.linalg.norm(golden_landmarks[:, None] - landmarks[None], axis=3).mean(axis=2)   # golden x found
    return float(np.mean(distance.min(axis=1) <= MATCH_FRACTION * side))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="none,1600,1280,960,800,640,480")
    parser.add_argument("--backend", default="onnx", choices=("mxnet", "onnx"))
    parser.add_argument("--model", help="detector checkpoint (default: the converted RetinaFace on --backend)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    shared = config.shared_dir()
    if shared is None:
        sys.exit(f"shared data folder not found; set {config.SHARED_ENV}")
    from essh.detector import ESSHDetector
    model = args.model or (config.ONNX_ESSH_DEFAULT_MODEL if args.backend == "onnx" else config.ESSH_DEFAULT_MODEL)
    sizes = [None if s.strip().lower() == "none" else int(s) for s in args.sizes.split(",")]
    reference_dir = os.path.join(shared, "reference", "mtcnn")
    images = sorted(n for n in os.listdir(os.path.join(shared, "sample-images"))
                    if os.path.exists(os.path.join(reference_dir, os.path.splitext(n)[0] + ".json")))
    report = {"backend": args.backend, "model": model, "threads": os.environ.get("OMP_NUM_THREADS"),
              "match": f"mean landmark distance <= {MATCH_FRACTION} x golden box side", "images": {}}
    detectors = {size: ESSHDetector(model, backend=args.backend, max_size=size) for size in sizes}
    for name in images:
        image, _ = read_image(os.path.join(shared, "sample-images", name))
        with open(os.path.join(reference_dir, os.path.splitext(name)[0] + ".json")) as f:
            faces = json.load(f)["faces"]
        golden_boxes = np.array([face["bbox_x1y1x2y2"] for face in faces]).reshape(-1, 4)
        golden_landmarks = np.array([face["landmarks_5x2"] for face in faces]).reshape(-1, 5, 2)
        rows = {}
        for size, detector in detectors.items():
            detector.detect(image)
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                _, landmarks = detector.detect(image)
                times.append((time.perf_counter() - start) * 1000.0)
            rows[str(size)] = {"recall": recall(golden_boxes, golden_landmarks, landmarks),
                               "found": len(landmarks), "ms_min": round(min(times), 1)}
        report["images"][name] = {"hw": list(image.shape[:2]), "golden_faces": len(faces), "by_max_size": rows}
        print(name, {k: (v["recall"], v["ms_min"]) for k, v in rows.items()}, file=sys.stderr)
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
