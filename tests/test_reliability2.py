"""The fault catalogue, second part (docs/FAULTS.md): errors that always reach the user, inputs never
destroyed, outputs complete or absent, usage errors on one line.

Scripts run as real subprocesses on real files; helpers come from tests/test_reliability.py.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import threading

import cv2
import mxnet as mx
import numpy as np
import pytest

from agegender.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint
from agegender.config import PROJECT_ROOT
from agegender.errors import CheckpointError, ImageError
from agegender.files import quiet_native_stderr
from agegender.image import decode_image
from agegender.model import AgeGenderModel
from data.records import PackWriter, encode_face
from tests.test_reliability import QUIET_ENV, error_lines, run_measured

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def run_script(*argv, timeout=240, **kwargs):
    """Run a project script (``train.py``, ``-m data.prepare``...) with this Python."""
    return run_measured([sys.executable, *map(str, argv)], timeout=timeout, **kwargs)


def one_line_usage_error(result, words):
    """Exit 2, exactly one line on stderr: ``error: ...`` containing ``words``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("error: ") and words in lines[0], lines[0]


@pytest.fixture(scope="module")
def face_112(reference_dir):
    return cv2.imread(os.path.join(reference_dir, "test1_face0_aligned112.png"))


@pytest.fixture(scope="module")
def tiny_pack(shared, tmp_path_factory):
    """train (32) / val (16) packs of resized UTKFace chips: 2 batches of 16 per epoch."""
    folder = tmp_path_factory.mktemp("pack")
    with open(os.path.join(shared, "data", "utkface", "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    for split, count in (("train", 32), ("val", 16)):
        chosen = [r for r in rows if r["split"] == split][::89][:count]
        with PackWriter(str(folder / split)) as writer:
            for row in chosen:
                image = cv2.imread(os.path.join(shared, "data", "utkface", row["path"]))
                writer.write(encode_face(cv2.resize(image, (112, 112), interpolation=cv2.INTER_AREA)),
                             int(row["gender"]), int(row["age"]))
    return folder


def train_argv(data_dir, prefix, *extra):
    return [os.path.join(PROJECT_ROOT, "train.py"), "--data-dir", data_dir, "--prefix", prefix, "--network", "m1",
            "--multiplier", "0.125", "--per-batch-size", "16", "--lr", "0.05", "--frequent", "1", "--seed", "1",
            "--lr-steps", "1000", *extra]


@pytest.fixture(scope="module")
def trained_run(tiny_pack, tmp_path_factory):
    """A training run of 2 epochs; returns its prefix (tests change copies, see ``copy_run``)."""
    prefix = str(tmp_path_factory.mktemp("trained") / "model")
    result = run_script(*train_argv(tiny_pack, prefix, "--end-epoch", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    return prefix


def copy_run(prefix, tmp_path):
    """A copy of a run's folder; returns the copy's prefix."""
    target = tmp_path / "run"
    shutil.copytree(os.path.dirname(prefix), target)
    return str(target / os.path.basename(prefix))


# -- every error reaches stderr ---------------------------------------------------------------------

def test_native_stderr_silencing_never_leaves_descriptor_2_redirected(face_112):
    """Decoding threads and the main thread silencing libjpeg at once: fd 2 is the original afterwards."""
    before = os.fstat(2)
    corrupt = bytearray(cv2.imencode(".jpg", face_112)[1].tobytes())
    corrupt[600:700] = bytes(100)                   # libjpeg warns ("Corrupt JPEG data") but decodes
    errors = []

    def decode_many():
        try:
            for _ in range(200):
                decode_image(bytes(corrupt), "corrupt")
        except ImageError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=decode_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(200):
        with quiet_native_stderr():
            with quiet_native_stderr():         # nested: a no-op
                pass
    for thread in threads:
        thread.join()
    after = os.fstat(2)
    assert not errors and (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_resume_passes_over_a_broken_newest_epoch(tiny_pack, trained_run, tmp_path):
    prefix = copy_run(trained_run, tmp_path)
    params2 = checkpoint_paths(prefix, 2)[1]
    open(params2, "wb").close()                                    # zero-length newest .params
    result = run_script(*train_argv(tiny_pack, prefix, "--end-epoch", "2", "--resume"))
    assert result.returncode == 0, result.stderr[-2000:]
    log_text = open(prefix + ".log").read()
    assert f"--resume: epoch 2 cannot be used: {params2}: cannot be read" in log_text
    assert f"resuming from {prefix}-0001: epoch 1 done, global step 2" in log_text
    AgeGenderModel(f"{prefix},2")                                  # epoch 2 trained again and saved


def test_resume_with_no_loadable_epoch_names_the_broken_file(tiny_pack, trained_run, tmp_path):
    prefix = copy_run(trained_run, tmp_path)
    for epoch in (1, 2):
        with open(f"{prefix}-{epoch:04d}.trainer.json", "w") as f:
            f.write('{"epoch": %d, "global_step": "two"' % epoch)        # cut short
    result = run_script(*train_argv(tiny_pack, prefix, "--end-epoch", "3", "--resume"))
    assert result.returncode == 1
    [line] = error_lines(result)
    assert line.startswith(f"error: --resume: no saved epoch under {prefix} can be loaded") and \
        f"{prefix}-0002.trainer.json: not a trainer state JSON" in line, line


LIMITED = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           "limit = int(sys.argv.pop(1)); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
           "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def test_full_disk_while_training_is_one_error_line(tiny_pack, tmp_path):
    prefix = str(tmp_path / "run" / "model")
    # the iterator's threads have decoded many images (and silenced libjpeg) when the first save fails
    result = run_script("-c", LIMITED, 60_000, *train_argv(tiny_pack, prefix, "--end-epoch", "1"))
    assert result.returncode == 1
    [line] = error_lines(result)
    assert line.startswith(f"error: {prefix}-0001.params: cannot be written (") and \
        line.endswith("); the previous file is unchanged"), line
    assert not [name for name in os.listdir(tmp_path / "run") if name.startswith(".tmp-")]


@pytest.mark.parametrize("option, value, words", [
    ("--image-size", "0,0", "--image-size 0,0: must be a square size"),
    ("--image-size", "112", "--image-size 112: must be a square size"),
    ("--gpus", "abc", "--gpus abc: expected GPU ids"),
    ("--lr-steps", "x", "--lr-steps x: expected whole numbers"),
    ("--lr", "nan", "--lr nan: must be a finite number"),
    ("--frequent", "0", "--frequent 0: must be at least 1"),
    ("--end-epoch", "x", "argument --end-epoch: invalid int value: 'x'"),
])
def test_train_usage_errors_are_one_line(tmp_path, option, value, words):
    result = run_script(os.path.join(PROJECT_ROOT, "train.py"), "--data-dir", tmp_path, option, value, timeout=60)
    one_line_usage_error(result, words)


# -- non-finite models and outputs ------------------------------------------------------------------

@pytest.fixture()
def nan_model(original_model, tmp_path):
    """A copy of the original checkpoint with one NaN weight, written as MXNet writes params; its spec."""
    prefix, epoch = original_model.rsplit(",", 1)
    sym, args, auxs = load_checkpoint(prefix, int(epoch))
    name = sorted(args)[3]
    poisoned = args[name].asnumpy()
    poisoned.flat[0] = np.nan
    args[name] = mx.nd.array(poisoned)
    copy = str(tmp_path / "nan-model")
    sym.save(copy + "-symbol.json")
    mx.nd.save(copy + "-0000.params", {**{"arg:" + k: v for k, v in args.items()},
                                       **{"aux:" + k: v for k, v in auxs.items()}})
    return copy + ",0", name


def test_nan_model_is_refused_at_load_export_and_save(nan_model, face_112, tmp_path):
    spec, name = nan_model
    params = spec[:-2] + "-0000.params"
    with pytest.raises(CheckpointError, match=f"'{name}' holds NaN or infinite values"):
        AgeGenderModel(spec)
    out = tmp_path / "nan.onnx"
    result = run_script(os.path.join(PROJECT_ROOT, "export.py"), "--model", spec, "--out", out)
    assert result.returncode == 1 and not out.exists()
    assert error_lines(result) == [f"error: {params}: parameter '{name}' holds NaN or infinite values, "
                                   f"not a usable model"]
    image = tmp_path / "face.jpg"
    cv2.imwrite(str(image), face_112)
    result = run_script(os.path.join(PROJECT_ROOT, "test.py"), "--quiet", "--aligned", "--model", spec, image,
                        "--json", tmp_path / "out.json")
    assert result.returncode == 1 and len(error_lines(result)) == 1 and not (tmp_path / "out.json").exists()
    # a diverged training never overwrites a good checkpoint with NaN weights
    sym = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=2, name="fc")
    good = str(tmp_path / "good")
    save_checkpoint(good, 1, sym, {"fc_weight": mx.nd.ones((2, 3)), "fc_bias": mx.nd.ones(2)}, {})
    before = open(checkpoint_paths(good, 1)[1], "rb").read()
    with pytest.raises(CheckpointError, match="'fc_bias' holds NaN or infinite values .* previous file is unchanged"):
        save_checkpoint(good, 1, sym, {"fc_weight": mx.nd.ones((2, 3)), "fc_bias": mx.nd.array([1, np.inf])}, {})
    assert open(checkpoint_paths(good, 1)[1], "rb").read() == before
