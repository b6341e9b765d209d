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


# -- outputs never replace FIFOs, devices or inputs -------------------------------------------------

def test_export_out_refuses_folders_inputs_and_unchecked_fifos(original_model, tmp_path):
    prefix = original_model[:-2]
    export = os.path.join(PROJECT_ROOT, "export.py")
    params = prefix + "-0000.params"
    before = open(params, "rb").read()
    one_line_usage_error(run_script(export, "--model", original_model, "--out", params, timeout=120),
                         "is the checkpoint being exported")
    assert open(params, "rb").read() == before
    one_line_usage_error(run_script(export, "--model", original_model, "--out", tmp_path, timeout=120),
                         "is a folder")
    one_line_usage_error(run_script(export, "--model", original_model, "--out", tmp_path, "--image-size", "64,64",
                                    timeout=120), "--image-size 64,64: aligned faces are '112,112' or '112,96'")
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    one_line_usage_error(run_script(export, "--model", original_model, "--out", fifo, timeout=120),
                         "is a FIFO or a device")
    # unchecked, the FIFO is written in place: its reader gets the whole model, the FIFO stays a FIFO
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(open(fifo, "rb").read()))
    reader.start()
    result = run_script(export, "--model", original_model, "--out", fifo, "--no-check", timeout=120)
    reader.join(60)
    assert result.returncode == 0, result.stderr
    import onnx
    assert onnx.load_from_string(bytes(received)).graph.name == "agegender"
    assert stat_is_fifo(fifo)


def stat_is_fifo(path):
    import stat
    return stat.S_ISFIFO(os.lstat(path).st_mode)


def test_pack_writer_never_replaces_a_fifo_or_folder(face_112, tmp_path):
    os.mkfifo(tmp_path / "train.rec")
    (tmp_path / "val.idx").mkdir()
    for name, target in (("train", "train.rec"), ("val", "val.idx")):
        with pytest.raises(Exception) as caught:
            PackWriter(str(tmp_path / name))
        assert f"{tmp_path / target}: is not a regular file" in str(caught.value)
    assert stat_is_fifo(tmp_path / "train.rec") and (tmp_path / "val.idx").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["train.rec", "val.idx"]          # no temporary file left


# -- usage errors and odd inputs of eval.py / data.prepare ------------------------------------------

def test_prepare_usage_errors_are_one_line(tmp_path):
    source = tmp_path / "labels.csv"
    source.write_text("path,age,gender\nx.jpg,30,1\n")
    blocker = tmp_path / "a file"
    blocker.write_text("")
    prepare = ["-m", "data.prepare"]
    for extra, words in (([source, "--out", tmp_path / "o", "--val-fraction", "1.5"], "--val-fraction 1.5: must be"),
                         ([source, "--out", blocker], f"--out {blocker}: is a file, not a folder"),
                         ([tmp_path / "nothing.csv", "--out", tmp_path / "o"], "nothing.csv: source not found"),
                         ([source, "--out", tmp_path / "o", "--workers", "0"], "--workers 0: must be at least 1")):
        one_line_usage_error(run_script(*prepare, *extra, timeout=60), words)


def test_csv_with_a_byte_order_mark_is_read(shared, original_model, tmp_path):
    with open(os.path.join(shared, "data", "utkface", "labels.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val"][:3]
    source = tmp_path / "bom.csv"
    with open(source, "w", newline="", encoding="utf-8-sig") as f:       # as Excel saves "CSV UTF-8"
        writer = csv.writer(f)
        writer.writerow(["path", "age", "gender"])
        for row in rows:
            writer.writerow([os.path.join(shared, "data", "utkface", row["path"]), row["age"], row["gender"]])
    assert source.read_bytes().startswith(b"\xef\xbb\xbfpath,")
    result = run_script(os.path.join(PROJECT_ROOT, "eval.py"), "--data", source, "--aligned", "--model",
                        original_model, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["n_detected"] == 3


def test_eval_usage_errors_are_one_line(original_model, tmp_path):
    source = tmp_path / "labels.csv"
    source.write_text("path,age,gender\nx.jpg,30,1\n")
    blocker = tmp_path / "a file"
    blocker.write_text("")
    eval_py = os.path.join(PROJECT_ROOT, "eval.py")
    for extra, words in ((["--data", tmp_path], "is a folder; give a .rec pack or a CSV file"),
                         (["--data", tmp_path / "none.csv"], "none.csv: file not found"),
                         (["--data", source, "--json", blocker / "m.json"], f"{blocker} is a file, not a folder"),
                         (["--data", source, "--plot", tmp_path], "is a folder"),
                         (["--data", source, "--plot", tmp_path / "p.xyz"], "unknown picture type")):
        one_line_usage_error(run_script(eval_py, "--model", original_model, *extra, timeout=60), words)


def test_webp_exif_orientation_is_honoured_like_jpeg(face_112, tmp_path):
    from PIL import Image, ImageOps
    from agegender.image import read_image
    rgb = Image.fromarray(cv2.cvtColor(face_112[:, :80], cv2.COLOR_BGR2RGB))
    for orientation in range(1, 9):
        exif = rgb.getexif()
        exif[0x0112] = orientation
        paths = [tmp_path / f"o{orientation}.webp", tmp_path / f"o{orientation}.jpg"]
        rgb.save(paths[0], lossless=True, exif=exif.tobytes())
        rgb.save(paths[1], quality=98, exif=exif.tobytes())
        with Image.open(paths[0]) as stored:
            upright = cv2.cvtColor(np.asarray(ImageOps.exif_transpose(stored).convert("RGB")), cv2.COLOR_RGB2BGR)
        webp, jpeg = (read_image(str(p))[0] for p in paths)
        assert np.array_equal(webp, upright), orientation
        assert jpeg.shape == webp.shape and np.abs(jpeg.astype(int) - webp).mean() < 4, orientation
