"""train.py end to end on a tiny pack of real UTKFace faces: train, stop at --max-steps, resume, evaluate."""
import csv
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

import train
from agegender.checkpoint import checkpoint_paths
from agegender.model import AgeGenderModel
from agegender.training import find_resume_epoch, load_trainer_state, state_paths
from data.records import PackWriter, encode_face

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN, N_VAL, BATCH = 64, 24, 16          # 4 batches per epoch
STEPS_PER_EPOCH = N_TRAIN // BATCH


def utkface_rows(shared, split, count):
    """``count`` rows of one split of the shared UTKFace labels, spread over the file."""
    with open(os.path.join(shared, "data", "utkface", "labels.csv"), newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["split"] == split]
    return rows[:: max(len(rows) // count, 1)][:count]


@pytest.fixture(scope="module")
def packs(shared, tmp_path_factory):
    """train/val packs of 112x112 faces (the 200x200 UTKFace crops resized), labels from labels.csv."""
    folder = tmp_path_factory.mktemp("packs")
    for split, count in (("train", N_TRAIN), ("val", N_VAL)):
        with PackWriter(str(folder / split)) as writer:
            for row in utkface_rows(shared, split, count):
                image = cv2.imread(os.path.join(shared, "data", "utkface", row["path"]))
                writer.write(encode_face(cv2.resize(image, (112, 112), interpolation=cv2.INTER_AREA)),
                             int(row["gender"]), int(row["age"]))
    return folder


def train_args(data_dir, prefix, *extra):
    return train.parse_args(["--data-dir", str(data_dir), "--prefix", prefix, "--network", "m1",
                             "--multiplier", "0.125", "--per-batch-size", str(BATCH), "--lr", "0.05",
                             "--lr-steps", "1000", "--frequent", "1", "--seed", "3", *extra])


def logged_age_losses(log_path):
    """Per-batch (cumulative over the epoch) training age losses from the log, in order."""
    with open(log_path) as f:
        return [float(m.group(1)) for m in re.finditer(r"Batch\[\d+/\d+\].* age_loss ([\d.]+)", f.read())]


def test_train_stop_resume_evaluate(packs, tmp_path):
    prefix = str(tmp_path / "run" / "model")

    # 1) stops at --max-steps in the middle of epoch 2 and saves epochs 1 and 2
    first = train.train(train_args(packs, prefix, "--end-epoch", "3", "--max-steps", "6"))
    assert first["epoch"] == 2 and first["global_step"] == 6
    assert find_resume_epoch(prefix) == 2
    for epoch in (1, 2):
        for path in checkpoint_paths(prefix, epoch) + state_paths(prefix, epoch):
            assert os.path.isfile(path), path
    state = load_trainer_state(prefix, 2)
    assert state["epoch"] == 2 and state["global_step"] == 6
    assert state["schedule"]["total_steps"] == 3 * STEPS_PER_EPOCH   # --max-steps does not shorten the schedule
    assert state["val"]["n"] == N_VAL and np.isfinite(state["val"]["mae"])
    losses = logged_age_losses(prefix + ".log")
    assert len(losses) == 6
    assert losses[-1] < losses[0], f"training age loss did not fall: {losses}"

    # 2) --resume continues from epoch 2 / step 6 with the saved schedule
    second = train.train(train_args(packs, prefix, "--end-epoch", "3", "--resume"))
    assert second["epoch"] == 3 and second["global_step"] == 6 + STEPS_PER_EPOCH
    resumed = load_trainer_state(prefix, 3)
    assert resumed["global_step"] == 10 and resumed["schedule"] == state["schedule"]
    with open(prefix + ".log") as f:
        log_text = f.read()
    assert "resuming from" in log_text and "Epoch[3] Batch[1/4] step 7 " in log_text
    assert "best epoch by val MAE" in log_text

    # 3) the checkpoint is an inference model: fc1 cut, 202 finite outputs per face
    model = AgeGenderModel(f"{prefix},3")
    faces = [cv2.imread(os.path.join(ROOT, "sample-images", "astronaut.jpg"))]
    faces = [cv2.resize(faces[0], (112, 112))] * 2
    results, fc1 = model.predict(faces)
    assert fc1.shape == (2, 202) and np.isfinite(fc1).all()
    assert 0 <= results[0]["age"] <= 100 and results[0]["gender"] in ("F", "M")

    # 4) eval.py on the val pack as a separate process, with the plot
    out_json, out_png = tmp_path / "val.json", tmp_path / "val.png"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--data", str(packs / "val.rec"),
                           "--model", f"{prefix},3", "--json", str(out_json), "--plot", str(out_png)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out_json.read_text())
    assert result["n"] == result["n_detected"] == N_VAL
    for key in ("mae", "cs5", "gender_acc", "mae_expected", "cs5_expected"):
        assert np.isfinite(result[key]), key
    assert 0 <= result["cs5"] <= 1 and 0 <= result["gender_acc"] <= 1
    assert set(result["gender_acc_by_gender"]) == {"female", "male"}
    assert result["mae_by_decade"] and set(result["mae_by_decade"]) == set(result["mae_by_decade_expected"])
    assert out_png.stat().st_size > 1000


def test_eval_csv_counts_unreadable_images(packs, shared, tmp_path):
    """A CSV of images: a missing image is a reported bad item (exit 1), counted in n and n_unreadable."""
    prefix = str(tmp_path / "model")
    train.train(train_args(packs, prefix, "--end-epoch", "1", "--max-steps", "1"))
    csv_path = tmp_path / "faces.csv"
    rows = utkface_rows(shared, "val", 3)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "age", "gender"])
        for row in rows:
            writer.writerow([os.path.join(shared, "data", "utkface", row["path"]), row["age"], row["gender"]])
        writer.writerow([str(tmp_path / "missing.jpg"), 30, 1])
    out_json = tmp_path / "csv.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--data", str(csv_path), "--aligned",
                           "--model", f"{prefix},1", "--json", str(out_json)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors[0] == f"error: {tmp_path / 'missing.jpg'}: file not found" and len(errors) == 2, done.stderr
    result = json.loads(out_json.read_text())
    assert result["n"] == 4 and result["n_detected"] == 3 and result["n_unreadable"] == 1


def test_settled_aux_params_hold_the_last_steps_batchnorm_update(shared):
    """MXNet's CPU BatchNorm writes its moving statistics in the backward operator without telling the engine,
    so a plain copy right after a step reads the statistics from before it; the settled copy must not."""
    import mxnet as mx
    from agegender.training import settled_aux_params
    row = utkface_rows(shared, "train", 1)[0]
    face = cv2.resize(cv2.imread(os.path.join(shared, "data", "utkface", row["path"])), (112, 112))
    batch = np.repeat(face[None].transpose(0, 3, 1, 2).astype(np.float32), 32, axis=0)
    data = mx.sym.Variable("data")
    x = data
    for i in range(5):   # enough work in the backward pass for the copy to overtake it
        x = mx.sym.Convolution(x, num_filter=64, kernel=(3, 3), pad=(1, 1), name=f"conv{i}")
    x = mx.sym.BatchNorm(x, fix_gamma=False, momentum=0.9, name="bn")
    module = mx.mod.Module(mx.sym.MakeLoss(mx.sym.mean(x * x)), data_names=["data"], label_names=None,
                           context=mx.cpu())
    module.bind(data_shapes=[("data", batch.shape)])
    module.init_params(mx.init.Xavier())
    module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.0})
    before = module.get_params()[1]["bn_moving_mean"].asnumpy()
    module.forward_backward(mx.io.DataBatch([mx.nd.array(batch)]))
    module.update()
    settled = settled_aux_params(module)["bn_moving_mean"].asnumpy()
    mx.nd.waitall()
    on_device = module._exec_group.execs[0].aux_dict["bn_moving_mean"].asnumpy()
    np.testing.assert_array_equal(settled, on_device)
    assert np.abs(settled - before).max() > 1e-3      # the step's update is in it
