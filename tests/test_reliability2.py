"""The fault catalogue, second part (docs/FAULTS.md): errors that always reach the user, inputs never
destroyed, outputs complete or absent, usage errors on one line.

Scripts run as real subprocesses on real files; helpers come from tests/test_reliability.py.
"""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

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
from data.records import PackWriter
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


ERRORS_WHILE_DECODING = """
import sys, threading, cv2, numpy as np
from agegender.files import print_error
from agegender.image import decode_image
from agegender.errors import ImageError
jpeg = bytearray(cv2.imencode(".jpg", np.full((256, 256, 3), 90, np.uint8))[1].tobytes())
jpeg[300:400] = bytes(100)
stop = threading.Event()
def decode():
    while not stop.is_set():
        try:
            decode_image(bytes(jpeg), "corrupt")
        except ImageError:
            pass
threads = [threading.Thread(target=decode) for _ in range(3)]
[t.start() for t in threads]
for i in range(300):
    print_error(f"error: line {i}")
stop.set()
[t.join() for t in threads]
"""


def test_errors_printed_while_threads_silence_libjpeg_all_arrive():
    """Decoding threads keep descriptor 2 at /dev/null most of the time; the project's own error lines still
    all reach stderr, and libjpeg's warnings none."""
    result = run_script("-c", ERRORS_WHILE_DECODING, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"error: line {i}" for i in range(300)]


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


# -- test.py: input never destroyed -----------------------------------------------------------------

def run_test_py(*args, **kwargs):
    return run_script(os.path.join(PROJECT_ROOT, "test.py"), "--quiet", *args, **kwargs)


@pytest.fixture()
def photo_folder(face_112, tmp_path):
    """A folder of three aligned faces (JPEG, PNG, WebP); returns it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.png", "c.webp"):
        cv2.imwrite(str(folder / name), face_112)
    return folder


def folder_bytes(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def test_outputs_that_are_or_overwrite_inputs_are_refused(photo_folder, original_model, tmp_path):
    before = folder_bytes(photo_folder)
    a = photo_folder / "a.jpg"
    cases = [([a, "--output", a], "--output"), ([photo_folder, "--output", photo_folder], "is or holds the input"),
             ([photo_folder, "--output", tmp_path], "is or holds the input folder"),
             ([a, photo_folder / "b.png", "--output", photo_folder / "sub"], None),      # allowed: new folder
             ([photo_folder, "--json", a], "--json"), ([photo_folder, "--csv", photo_folder / "b.png"], "--csv"),
             ([photo_folder, "--json", tmp_path / "x", "--csv", tmp_path / "x"], "name the same file"),
             ([photo_folder, "--json", "-", "--csv", "-"], "would mix formats on standard output"),
             ([photo_folder, "--output", tmp_path / "x.webp"], "names one picture, but the inputs give several"),
             ([photo_folder, "--json", photo_folder], "is a folder")]
    for args, words in cases:
        result = run_test_py("--aligned", "--model", original_model, *args, timeout=120)
        if words is None:
            assert result.returncode == 0, result.stderr
            continue
        one_line_usage_error(result, words)
    # the annotated pictures of a.jpg and b.png went to the new folder; no input changed
    assert sorted(os.listdir(photo_folder / "sub")) == ["a.jpg", "b.jpg"]
    after = folder_bytes(photo_folder)
    assert {k: v for k, v in after.items() if k in before} == before


def test_output_with_any_picture_extension_is_one_file(face_112, original_model, tmp_path):
    image = tmp_path / "face.jpg"
    cv2.imwrite(str(image), face_112)
    for ext in (".webp", ".tif", ".png"):
        out = tmp_path / f"annotated{ext}"
        result = run_test_py("--aligned", "--model", original_model, image, "--output", out, timeout=120)
        assert result.returncode == 0 and out.is_file(), result.stderr
        assert cv2.imread(str(out)).shape == (112, 112, 3)


# -- test.py: outputs complete or absent ------------------------------------------------------------

@pytest.fixture(scope="module")
def many_faces(tmp_path_factory, reference_dir):
    """400 small aligned faces: a folder run long enough to be signalled in the middle."""
    folder = tmp_path_factory.mktemp("many")
    face = cv2.imread(os.path.join(reference_dir, "test1_face0_aligned112.png"))
    for i in range(400):
        cv2.imwrite(str(folder / f"{i:04d}.png"), np.roll(face, i, axis=1))
    return folder


def start_test_py(*args):
    return subprocess.Popen([sys.executable, os.path.join(PROJECT_ROOT, "test.py"), "--quiet", *map(str, args)],
                            cwd=PROJECT_ROOT, env=QUIET_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_records(folder, name, process, timeout=120):
    """Wait until the temporary file of output ``name`` in ``folder`` holds at least one record."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"test.py ended early: {process.stderr.read()[-2000:]}")
        temps = [n for n in os.listdir(folder) if n.startswith(f".tmp-{name}.")]
        if temps and os.path.getsize(folder / temps[0]) > 200:
            return
        time.sleep(0.05)
    process.kill()
    pytest.fail("no record written in time")


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_signal_during_a_folder_run_leaves_valid_outputs(many_faces, original_model, tmp_path, signum, status):
    out_json, out_csv = tmp_path / "faces.json", tmp_path / "faces.csv"
    out_json.write_text("previous")
    process = start_test_py("--aligned", "--model", original_model, many_faces, "--images-per-batch", "1",
                            "--json", out_json, "--csv", out_csv)
    wait_for_records(tmp_path, "faces.json", process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if line.strip()]
    assert line.startswith(f"error: interrupted by {signal.Signals(signum).name} after ") and "of 400 inputs" in line
    records = json.loads(out_json.read_text())                     # complete JSON, whole records only
    assert 0 < len(records) < 400 and all(len(r["faces"]) == 1 for r in records)
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [r["image"] for r in records]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


@pytest.fixture(scope="module")
def long_video(tmp_path_factory, reference_dir):
    """A 600-frame 320x240 video: one input that takes seconds."""
    path = str(tmp_path_factory.mktemp("video") / "long.avi")
    face = cv2.resize(cv2.imread(os.path.join(reference_dir, "test1_face0_aligned112.png")), (320, 240))
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
    for i in range(600):
        writer.write(np.roll(face, i, axis=1))
    writer.release()
    return path


def test_second_signal_abandons_the_current_item_and_still_closes_the_outputs(long_video, original_model, tmp_path):
    out_json = tmp_path / "faces.json"
    process = start_test_py("--aligned", "--model", original_model, long_video, "--images-per-batch", "1000",
                            "--json", out_json)
    while process.poll() is None and not any(n.startswith(".tmp-faces.json.") for n in os.listdir(tmp_path)):
        time.sleep(0.02)                            # the output is open...
    time.sleep(0.5)                                 # ...and the video is being read (that takes seconds)
    process.send_signal(signal.SIGINT)              # stop after the video...
    process.send_signal(signal.SIGTERM)             # ...no: now (a different signal, so the two never merge)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines() == ["error: interrupted by SIGTERM after 0 of 1 inputs; the outputs hold the "
                                           "inputs done"]
    assert json.loads(out_json.read_text()) == []           # the video was abandoned, the JSON closed


def test_two_runs_writing_one_json_give_one_complete_file(photo_folder, many_faces, original_model, tmp_path):
    out = tmp_path / "faces.json"
    small = start_test_py("--aligned", "--model", original_model, photo_folder, "--json", out)
    large = start_test_py("--aligned", "--model", original_model, many_faces, "--json", out)
    for process in (small, large):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    records = json.loads(out.read_text())
    assert len(records) in (3, 400)                 # one run's complete output, never a mix
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_model_giving_non_finite_outputs_is_an_error_per_item(original_model, face_112, tmp_path):
    prefix, epoch = original_model.rsplit(",", 1)
    sym, args, auxs = load_checkpoint(prefix, int(epoch))
    args = dict(args, pre_fc1_weight=args["pre_fc1_weight"] * 1e38)    # finite weights, outputs overflow
    save_checkpoint(str(tmp_path / "huge"), 0, sym, args, auxs)
    images = [tmp_path / "one.jpg", tmp_path / "two.jpg"]
    for image in images:
        cv2.imwrite(str(image), face_112)
    result = run_test_py("--aligned", "--model", f"{tmp_path / 'huge'},0", *images, "--json", tmp_path / "out.json",
                         timeout=120)
    assert result.returncode == 1
    errors = error_lines(result)
    assert len(errors) == 2 and all("NaN or infinite outputs" in e for e in errors), errors
    assert json.loads((tmp_path / "out.json").read_text()) == []


# -- test.py: bounded memory, no silent partial results ---------------------------------------------

VMPEAK_WRAPPER = ("import atexit, resource, runpy, sys\n"
                  "limit = int(sys.argv.pop(1))\n"
                  "if limit:\n"
                  "    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
                  "def report():\n"
                  "    with open('/proc/self/status') as f:\n"
                  "        kb = next(line.split()[1] for line in f if line.startswith('VmPeak:'))\n"
                  "    sys.stderr.write('vmpeak ' + kb + '\\n')\n"
                  "atexit.register(report)\n"
                  "sys.argv = sys.argv[1:]\n"
                  "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def test_input_that_runs_out_of_memory_is_a_bad_item_and_the_batch_goes_on(face_112, original_model, tmp_path):
    from tests.test_reliability import write_png_rows
    small = [tmp_path / "one.png", tmp_path / "two.png"]
    for path in small:
        cv2.imwrite(str(path), face_112)
    huge = tmp_path / "huge.png"
    write_png_rows(huge, 7700, 7700, 1, 0, bytes(7700 // 8 + 1))      # 59 Mpixels (within the limit): 178 MB
    argv = [os.path.join(PROJECT_ROOT, "test.py"), "--quiet", "--aligned", "--model", original_model]

    def run_limited(limit, *inputs):
        result = run_script("-c", VMPEAK_WRAPPER, limit, *argv, *inputs, "--json", tmp_path / "out.json", timeout=120)
        peak = [int(line.split()[1]) * 1024 for line in result.stderr.splitlines() if line.startswith("vmpeak ")]
        assert peak, result.stderr[-3000:]
        return result, peak[0]
    baseline, peak = run_limited(0, *small)
    assert baseline.returncode == 0, baseline.stderr
    # address space for what the small images need and 120 MB more: the huge one cannot be decoded
    # (the huge one first: pictures are decoded one ahead in a background thread, and the decoding of the
    # huge one must not overlap the network run of a small one, which the limit leaves no room for)
    result, _ = run_limited(peak + 120 * 2 ** 20, huge, *small)
    assert result.returncode == 1, result.stderr
    assert error_lines(result) == [f"error: {huge}: out of memory decoding its 7700x7700 pixels"]
    assert [r["image"] for r in json.loads((tmp_path / "out.json").read_text())] == [str(p) for p in small]


def write_video(path, count, size=(320, 240)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    base = np.zeros((size[1], size[0], 3), np.uint8)
    for i in range(count):
        base[:] = (i * 5) % 256
        writer.write(cv2.putText(base.copy(), str(i), (10, size[1] // 2), cv2.FONT_HERSHEY_SIMPLEX, 2,
                                 (255, 255, 255), 3))
    writer.release()
    return path.read_bytes()


def test_corrupt_or_truncated_videos_are_reported_with_their_good_frames(original_model, tmp_path):
    good, cut, broken = tmp_path / "good.avi", tmp_path / "cut.avi", tmp_path / "broken.avi"
    data = write_video(good, 40)
    cut.write_bytes(data[: len(data) * 12 // 40])                    # ends after about 12 frames
    damaged = bytearray(data)
    start = len(data) * 12 // 40
    damaged[start: start + len(data) // 10] = np.random.RandomState(0).bytes(len(data) // 10)
    broken.write_bytes(bytes(damaged))                               # undecodable frames in the middle
    result = run_test_py("--aligned", "--model", original_model, good, cut, broken, "--json", tmp_path / "out.json",
                         timeout=180)
    assert result.returncode == 1
    errors = one_error_per_file(result, [cut, broken])
    assert all("video is corrupt or truncated" in e for e in errors), errors
    assert "undecodable data before frame" in [e for e in errors if str(broken) in e][0]
    frames = {}
    records = json.loads((tmp_path / "out.json").read_text())
    for record in records:
        if "tracks" not in record:                  # a video's closing track summary
            frames.setdefault(record["image"], []).append(record["frame"])
    assert frames[str(good)] == list(range(40))
    assert [r["image"] for r in records if "tracks" in r] == [str(good)]     # only complete videos get one
    assert 8 <= len(frames[str(cut)]) <= 13 and frames[str(cut)] == list(range(len(frames[str(cut)])))
    assert 20 <= len(frames[str(broken)]) < 40               # the frames after the damage were processed too


def one_error_per_file(result, paths):
    errors = error_lines(result)
    assert len(errors) == len(paths), result.stderr
    for path in paths:
        assert sum(str(path) in line for line in errors) == 1, (path, errors)
    return errors


def test_video_frames_above_the_pixel_limit_are_refused_before_decoding(original_model, tmp_path):
    huge = tmp_path / "huge.avi"
    write_video(huge, 2, size=(7800, 7800))                          # 60.8 Mpixels per frame
    small = tmp_path / "small.avi"
    write_video(small, 3)
    from tests.test_reliability import run_cli
    result = run_cli("--aligned", "--model", original_model, huge, small, "--json", "-")
    assert result.returncode == 1
    assert error_lines(result) == [f"error: {huge}: video of 7800x7800 frames refused, more than 60000000 pixels "
                                   f"per frame"]
    assert [r["frame"] for r in json.loads(result.stdout) if "tracks" not in r] == [0, 1, 2]
    assert result.peak_rss < 1024 ** 3, result.peak_rss


def make_unlistable_subfolder(folder, jpeg):
    """A sub-folder os.walk cannot list, even as root: its path is longer than PATH_MAX (made with dir_fd).
    Without root, a folder without read permission as well. Returns the number of such folders."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    length = len(str(folder))
    while length <= 4200:
        os.mkdir("d" * 200, dir_fd=fd)
        inner = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd, length = inner, length + 201
    with open(os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
        f.write(jpeg)
    os.close(fd)
    if os.geteuid() == 0:
        return 1
    locked = folder / "locked"
    locked.mkdir()
    (locked / "x.jpg").write_bytes(jpeg)
    locked.chmod(0)
    return 2


def test_unreadable_subfolder_is_reported_and_the_rest_processed(face_112, original_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    jpeg = cv2.imencode(".jpg", face_112)[1].tobytes()
    (folder / "a.jpg").write_bytes(jpeg)
    unreadable = make_unlistable_subfolder(folder, jpeg)
    try:
        result = run_test_py("--aligned", "--model", original_model, folder, "--json", tmp_path / "out.json",
                             timeout=120)
    finally:
        if (folder / "locked").exists():
            (folder / "locked").chmod(0o755)
    assert result.returncode == 1
    errors = error_lines(result)
    assert len(errors) == unreadable and all("folder cannot be read" in e for e in errors), errors
    assert [r["image"] for r in json.loads((tmp_path / "out.json").read_text())] == [str(folder / "a.jpg")]


# -- test.py: errors always reach the user, odd names and pipes -------------------------------------

def test_reader_closing_the_pipe_early_is_one_error_line(photo_folder, original_model):
    for option in ("--json", "--csv"):
        process = subprocess.Popen([sys.executable, os.path.join(PROJECT_ROOT, "test.py"), "--quiet", "--aligned",
                                    "--model", original_model, *[str(photo_folder)] * 30, "--raw", option, "-"],
                                   cwd=PROJECT_ROOT, env=QUIET_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert len(process.stdout.read(1)) == 1                     # `| head -c1`
        process.stdout.close()
        stderr = process.stderr.read().decode()
        process.wait(120)
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
        assert process.returncode == 1 and stderr.strip().splitlines() == [
            "error: standard output was closed by the reader (broken pipe)"], stderr


def test_file_names_that_are_not_utf8_are_written_to_csv_and_json(face_112, original_model, tmp_path):
    folder = tmp_path / "latin1"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9 \xff.jpg")                         # Latin-1 bytes: not UTF-8
    cv2.imwrite(str(folder / "plain.jpg"), face_112)
    with open(os.path.join(str(folder), name), "wb") as f:
        f.write(cv2.imencode(".jpg", face_112)[1].tobytes())
    for target in (tmp_path / "out.csv", "-"):
        result = run_script(os.path.join(PROJECT_ROOT, "test.py"), "--quiet", "--aligned", "--model",
                            original_model, folder, "--csv", target, "--json", tmp_path / "out.json", timeout=120)
        assert result.returncode == 0 and not error_lines(result), result.stderr
    rows = (tmp_path / "out.csv").read_bytes().splitlines()
    assert len(rows) == 3 and any(row.startswith(os.fsencode(folder) + b"/caf\xe9 \xff.jpg,") for row in rows)
    images = [r["image"] for r in json.loads((tmp_path / "out.json").read_text())]
    assert sorted(os.fsencode(image) for image in images) == sorted(os.fsencode(folder / n)
                                                                   for n in (name, "plain.jpg"))


@pytest.mark.parametrize("closed", [1, 2])
def test_closed_stdout_or_stderr_does_not_crash(face_112, original_model, tmp_path, closed):
    image = tmp_path / "face.jpg"
    cv2.imwrite(str(image), face_112)

    def run_closed(*args):
        process = subprocess.run([sys.executable, os.path.join(PROJECT_ROOT, "test.py"), "--quiet", "--aligned",
                                  "--model", original_model, *map(str, args)], cwd=PROJECT_ROOT, env=QUIET_ENV,
                                 capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.close(closed))
        return process
    done = run_closed(image, tmp_path / "missing.jpg", "--json", tmp_path / "out.json")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert [r["image"] for r in json.loads((tmp_path / "out.json").read_text())] == [str(image)]
    if closed == 1:
        done = run_closed(image, "--json", "-")
        assert done.returncode == 1 and done.stderr.strip() == "error: standard output is closed, cannot write '-' to it"
