"""The fault catalogue (docs/FAULTS.md): bad inputs, faults and resource limits, each tried for real.

test.py, train.py and data.prepare run as subprocesses with the original checkpoints; peak memory is the
child's own ``ru_maxrss`` from ``os.wait4``. Every failure must be one ``error:`` line naming the file,
with the documented exit status and no traceback, and the other items of a batch must still be done.
"""
import csv
import json
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from typing import NamedTuple

import cv2
import mxnet as mx
import numpy as np
import pytest
from PIL import Image, ImageOps

import symbols
from agegender.checkpoint import checkpoint_paths, load_checkpoint, load_params, load_symbol, save_checkpoint
from agegender.config import PROJECT_ROOT
from agegender.errors import CheckpointError, ImageError
from agegender.image import read_image
from agegender.model import AgeGenderModel
from agegender.training import find_resume_epoch, load_optimizer_states
from data.records import PackReader

QUIET_ENV = dict(os.environ, OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1", PYTHONPATH=PROJECT_ROOT)
GIB = 1024 ** 3


class Finished(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int       # bytes; 0 unless measured


# Runs a script and writes its own peak RSS (VmHWM, kB) to a file at exit. The kernel's ru_maxrss of a child
# cannot be used: it starts from the parent's high-water mark at fork, and pytest itself grows large.
PEAK_WRAPPER = ("import atexit, runpy, sys\n"
                "out = sys.argv.pop(1)\n"
                "def report():\n"
                "    with open('/proc/self/status') as f:\n"
                "        kb = next(line.split()[1] for line in f if line.startswith('VmHWM:'))\n"
                "    with open(out, 'w') as f:\n"
                "        f.write(kb)\n"
                "atexit.register(report)\n"
                "sys.argv = sys.argv[1:]\n"
                "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def run_measured(argv, timeout=300, stdout=None, peak_file=None):
    """Run ``argv`` in the project root; returns its exit status, output and the peak RSS in ``peak_file``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=QUIET_ENV, stdout=out if stdout is None else stdout,
                                   stderr=err)
        deadline = time.time() + timeout
        while True:
            pid, status, _ = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                process.kill()
                pytest.fail(f"{argv[:3]} ran past {timeout} s")
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        peak = 0
        if peak_file is not None and os.path.exists(peak_file):
            with open(peak_file) as f:
                peak = int(f.read()) * 1024
        return Finished(process.returncode, out.read().decode("utf-8", "replace"),
                        err.read().decode("utf-8", "replace"), peak)


def run_cli(*args, **kwargs):
    """Run test.py; the result's ``peak_rss`` is test.py's own peak memory."""
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = os.path.join(scratch, "peak_kb")
        return run_measured([sys.executable, "-c", PEAK_WRAPPER, peak_file, os.path.join(PROJECT_ROOT, "test.py"),
                             "--quiet", *map(str, args)], peak_file=peak_file, **kwargs)


def error_lines(result):
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def one_error_per_file(result, paths):
    """Exactly one ``error:`` line per path, each naming its file."""
    errors = error_lines(result)
    assert len(errors) == len(paths), result.stderr
    for path in paths:
        assert sum(str(path) in line for line in errors) == 1, (path, errors)
    return errors


def write_png_rows(path, width, height, bit_depth, color_type, row):
    """A real PNG whose every scanline is ``row``, compressed row by row (never held whole in memory)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(b"\0" + row) for _ in range(height)] + [compressor.flush()]
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type,
                                                                    0, 0, 0)))
        f.write(chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def write_flat_jpeg(path, width, height, sof=0xC0):
    """A real grey JPEG (every 8x8 block DC 0, i.e. value 128) written compactly: one-symbol Huffman
    tables make each block two zero bits, so 20,000 x 20,000 pixels take 1.5 MB."""
    def segment(marker, body):
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body
    one_symbol_table = [segment(0xC4, bytes([table]) + b"\x01" + bytes(15) + b"\x00") for table in (0x00, 0x10)]
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    with open(path, "wb") as f:
        f.write(b"\xff\xd8" + segment(0xDB, b"\x00" + b"\x01" * 64)
                + segment(sof, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
                + b"".join(one_symbol_table) + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00"))
        f.write(bytes((2 * blocks + 7) // 8) + b"\xff\xd9")


# -- 1. images ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def odd_images(tmp_path_factory, face_112):
    """Readable images in unusual layouts and names; returns {kind: path}."""
    folder = tmp_path_factory.mktemp("odd images")
    grey = cv2.cvtColor(face_112, cv2.COLOR_BGR2GRAY)
    paths = {"grey": folder / "grey.png", "rgba": folder / "rgba.png", "16-bit": folder / "sixteen.png",
             "1x1": folder / "one.png", "spaces": folder / "with some spaces.jpg",
             "non-ascii": folder / "visage ünïcødé 顔.jpg", "exif": folder / "rotated.jpg"}
    cv2.imwrite(str(paths["grey"]), grey)
    cv2.imwrite(str(paths["rgba"]), np.dstack([face_112, np.full(grey.shape, 77, np.uint8)]))
    cv2.imwrite(str(paths["16-bit"]), face_112.astype(np.uint16) * 257)
    cv2.imwrite(str(paths["1x1"]), face_112[:1, :1])
    for kind in ("spaces", "non-ascii"):
        paths[kind].write_bytes(cv2.imencode(".jpg", face_112)[1].tobytes())
    rgb = Image.fromarray(cv2.cvtColor(face_112[:, :80], cv2.COLOR_BGR2RGB))
    exif = rgb.getexif()
    exif[0x0112] = 6            # Orientation: rotate 90 degrees clockwise to display
    rgb.save(paths["exif"], quality=95, exif=exif.tobytes())
    return paths


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory, face_112):
    """Unusable inputs; returns {kind: path}."""
    folder = tmp_path_factory.mktemp("bad")
    jpeg = cv2.imencode(".jpg", face_112)[1].tobytes()
    png = cv2.imencode(".png", face_112)[1].tobytes()
    paths = {"missing": folder / "missing.jpg", "directory": folder / "a folder.jpg", "empty": folder / "zero.jpg",
             "truncated jpeg": folder / "cut.jpg", "truncated png": folder / "cut.png", "text": folder / "notes.jpg"}
    paths["directory"].mkdir()
    paths["empty"].write_bytes(b"")
    paths["truncated jpeg"].write_bytes(jpeg[: len(jpeg) * 2 // 3])
    paths["truncated png"].write_bytes(png[: len(png) * 2 // 3])
    paths["text"].write_text("this is not an image\n")
    return paths


def test_odd_layouts_decode_like_the_pixels_they_hold(odd_images, face_112):
    grey, _ = read_image(str(odd_images["grey"]))
    assert grey.shape == (112, 112, 3) and (grey[..., 0] == grey[..., 2]).all()
    assert np.array_equal(read_image(str(odd_images["rgba"]))[0], face_112)
    assert np.array_equal(read_image(str(odd_images["16-bit"]))[0], face_112)
    assert read_image(str(odd_images["1x1"]))[0].shape == (1, 1, 3)
    for kind in ("spaces", "non-ascii"):
        assert read_image(str(odd_images[kind]))[0].shape == (112, 112, 3)


def test_exif_orientation_is_honoured(odd_images):
    path = str(odd_images["exif"])
    with Image.open(path) as stored:
        assert stored.size == (80, 112)
        upright = cv2.cvtColor(np.asarray(ImageOps.exif_transpose(stored)), cv2.COLOR_RGB2BGR)
    image, scale = read_image(path)
    assert image.shape == (80, 112, 3) and scale == 1.0
    assert np.abs(image.astype(int) - upright).mean() < 3
    # also when decoded at reduced size: the scale is measured along the same (longer) side
    reduced, scale = read_image(path, max_pixels=80 * 112 // 4)
    assert reduced.shape == (40, 56, 3) and scale == 2.0
    assert np.abs(reduced.astype(int) - cv2.resize(upright, (56, 40), interpolation=cv2.INTER_AREA)).mean() < 6


def test_each_bad_image_is_one_clear_error(bad_images):
    expected = {"missing": "file not found", "directory": "is a directory", "empty": "empty file",
                "truncated jpeg": "truncated JPEG", "truncated png": "not a readable image",
                "text": "not a readable image"}
    for kind, path in bad_images.items():
        with pytest.raises(ImageError) as caught:
            read_image(str(path))
        message = str(caught.value)
        assert message.startswith(str(path)) and expected[kind] in message and "\n" not in message, message


def test_oversized_file_is_refused_unread(odd_images):
    path = str(odd_images["spaces"])
    with pytest.raises(ImageError, match=r"file of \d+ bytes refused \(limit 1000 bytes\)"):
        read_image(path, max_bytes=1000)


def test_batch_reports_bad_items_and_processes_the_rest(odd_images, bad_images, original_model, tmp_path):
    good = list(odd_images.values())
    bad = list(bad_images.values())
    mixed = [p for pair in zip(bad, good) for p in pair] + good[len(bad):]
    result = run_cli("--aligned", "--model", original_model, *mixed, "--json", tmp_path / "faces.json",
                     "--csv", tmp_path / "faces.csv", "--output", tmp_path / "annotated")
    assert result.returncode == 1
    one_error_per_file(result, bad)
    records = json.loads((tmp_path / "faces.json").read_text(encoding="utf-8"))
    assert [r["image"] for r in records] == [str(p) for p in good]
    assert all(len(r["faces"]) == 1 for r in records)
    by_name = {os.path.basename(r["image"]): r for r in records}
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == (112, 80)
    assert (by_name["one.png"]["width"], by_name["one.png"]["height"]) == (1, 1)
    assert sorted(os.listdir(tmp_path / "annotated")) == sorted(os.path.splitext(p.name)[0] + ".jpg" for p in good)


def test_all_good_odd_images_exit_0_with_the_detector(odd_images, original_model, original_mtcnn_dir):
    result = run_cli("--model", original_model, "--mtcnn-model", original_mtcnn_dir, *odd_images.values(),
                     "--json", "-")
    assert result.returncode == 0 and not error_lines(result)
    assert len(json.loads(result.stdout)) == len(odd_images)


def test_huge_images_are_downscaled_or_refused_with_bounded_memory(tmp_path, original_model):
    jpeg, png, progressive = tmp_path / "huge.jpg", tmp_path / "huge.png", tmp_path / "huge progressive.jpg"
    write_flat_jpeg(jpeg, 20_000, 20_000)
    write_png_rows(png, 20_000, 20_000, 1, 0, bytes(2_500))      # 1-bit grey: 1.2 GB once decoded to BGR
    write_flat_jpeg(progressive, 20_000, 20_000, sof=0xC2)      # header only matters: refused before decoding
    assert jpeg.stat().st_size < 2e6 and png.stat().st_size < 2e6
    result = run_cli("--aligned", "--model", original_model, png, jpeg, progressive, "--json", "-")
    assert result.returncode == 1
    errors = one_error_per_file(result, [png, progressive])
    assert all("20000x20000" in e and "refused" in e for e in errors), errors
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and str(jpeg) in notes[0] and "decoded at 1/4 size (5000x5000)" in notes[0]
    [record] = json.loads(result.stdout)
    assert (record["width"], record["height"]) == (20_000, 20_000)
    assert record["faces"][0]["bbox"] == [0.0, 0.0, 20_000.0, 20_000.0]
    print(f"peak RSS with the 20,000 x 20,000 images: {result.peak_rss / 1024 ** 2:.0f} MiB")
    assert result.peak_rss < 1.0 * GIB, f"peak RSS {result.peak_rss / GIB:.2f} GiB"


# -- 2. checkpoints -----------------------------------------------------------------------------------

@pytest.fixture()
def model_copy(original_model, tmp_path):
    """A writable copy of the original checkpoint; returns its prefix (epoch 0)."""
    prefix, _ = original_model.rsplit(",", 1)
    for path in checkpoint_paths(prefix, 0):
        shutil.copy(path, tmp_path)
    return str(tmp_path / os.path.basename(prefix))


def assert_checkpoint_error(spec, path, words):
    with pytest.raises(CheckpointError) as caught:
        AgeGenderModel(spec)
    message = str(caught.value)
    assert message.startswith(path) and words in message and "\n" not in message, message


def test_truncated_params_is_a_clear_error(model_copy):
    params = checkpoint_paths(model_copy, 0)[1]
    data = open(params, "rb").read()
    with open(params, "wb") as f:
        f.write(data[: len(data) // 2])
    assert_checkpoint_error(f"{model_copy},0", params, "truncated or not an MXNet params file")
    result = run_cli("--aligned", "--model", f"{model_copy},0", os.path.join(PROJECT_ROOT, "sample-images"))
    assert result.returncode == 1 and len(error_lines(result)) == 1 and params in result.stderr


def test_params_of_another_shape_do_not_match_the_symbol(model_copy):
    sym, args, auxs = load_checkpoint(model_copy, 0)
    name = sorted(args)[0]
    args[name] = mx.nd.zeros(tuple(args[name].shape[:-1]) + (args[name].shape[-1] + 1,))
    save_checkpoint(model_copy, 1, sym, args, auxs)
    assert_checkpoint_error(f"{model_copy},1", checkpoint_paths(model_copy, 1)[1], f"'{name}' has shape")
    del args[name]
    save_checkpoint(model_copy, 2, sym, args, auxs)
    assert_checkpoint_error(f"{model_copy},2", checkpoint_paths(model_copy, 2)[1], f"'{name}' is missing")


def test_checkpoint_of_another_network_is_refused(original_mtcnn_dir, tmp_path):
    det1 = os.path.join(original_mtcnn_dir, "det1")
    assert_checkpoint_error(f"{det1},1", det1 + "-symbol.json", "not an age/gender network")
    # a network with an fc1 layer of the wrong width
    fc1 = symbols.get_symbol("m1", num_classes=10, multiplier=0.125)
    module = mx.mod.Module(fc1, data_names=["data"], label_names=None)
    module.bind(data_shapes=[("data", (1, 3, 112, 112))], for_training=False)
    module.init_params()
    prefix = str(tmp_path / "other")
    save_checkpoint(prefix, 1, fc1, *module.get_params())
    assert_checkpoint_error(f"{prefix},1", checkpoint_paths(prefix, 1)[1], "gives 10 outputs per face")


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: the test checks that nothing ever unpickles it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickle_payloads_are_rejected_without_being_run(model_copy, tmp_path):
    marker = tmp_path / "payload-was-executed"
    payload = pickle.dumps(_Payload(str(marker)))
    sym_path, params_path = checkpoint_paths(model_copy, 0)
    with open(params_path, "wb") as f:
        f.write(payload)
    with pytest.raises(CheckpointError, match="not an MXNet params file"):
        load_params(params_path)
    with open(sym_path, "wb") as f:
        f.write(payload)
    with pytest.raises(CheckpointError, match="not a valid MXNet symbol JSON"):
        load_symbol(sym_path)
    with pytest.raises(CheckpointError):
        AgeGenderModel(f"{model_copy},0")
    assert not marker.exists()


def test_optimizer_state_pickle_payload_is_refused(tmp_path):
    data = mx.sym.var("data")
    net = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(data, num_hidden=3, name="fc"), name="softmax")
    module = mx.mod.Module(net, context=mx.cpu())
    module.bind([("data", (2, 4))], [("softmax_label", (2,))])
    module.init_params()
    module.init_optimizer(optimizer="sgd", optimizer_params={"momentum": 0.9})
    module.forward(mx.io.DataBatch([mx.nd.ones((2, 4))], [mx.nd.zeros((2,))]), is_train=True)
    module.backward()
    module.update()
    genuine = str(tmp_path / "genuine.states")
    module.save_optimizer_states(genuine)
    load_optimizer_states(module, genuine)                      # a real state file loads
    marker = tmp_path / "payload-was-executed"
    evil = tmp_path / "evil.states"
    evil.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError, match="evil.states: not a valid optimizer state file"):
        load_optimizer_states(module, str(evil))
    assert not marker.exists()


@pytest.fixture()
def file_size_limit():
    """``limit(n)`` caps the size of files this process writes at n bytes (writes beyond fail with EFBIG,
    as on a full disk) until the test ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # else the kernel kills the writer
    yield lambda n: resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, file_size_limit):
    prefix = str(tmp_path / "run" / "model")
    sym = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=8, name="fc")
    save_checkpoint(prefix, 1, sym, {"fc_weight": mx.nd.zeros((8, 4)), "fc_bias": mx.nd.zeros(8)}, {})
    before = {name: (tmp_path / "run" / name).read_bytes() for name in os.listdir(tmp_path / "run")}
    file_size_limit(100_000)
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(prefix, 1, sym, {"fc_weight": mx.nd.ones((8, 50_000)), "fc_bias": mx.nd.ones(8)}, {})
    message = str(caught.value)
    assert message.startswith(checkpoint_paths(prefix, 1)[1]) and "previous file is unchanged" in message
    assert "\n" not in message
    after = {name: (tmp_path / "run" / name).read_bytes() for name in os.listdir(tmp_path / "run")}
    assert after == before          # byte-identical, and no temporary file left
    load_checkpoint(prefix, 1)


def test_stale_temporary_files_of_a_killed_save_are_cleared(tmp_path):
    prefix = str(tmp_path / "model")
    stale = tmp_path / ".tmp-model-0001.params.abc123"
    stale.write_bytes(b"half a checkpoint")
    sym = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=2, name="fc")
    save_checkpoint(prefix, 1, sym, {"fc_weight": mx.nd.ones((2, 3)), "fc_bias": mx.nd.ones(2)}, {})
    assert sorted(os.listdir(tmp_path)) == ["model-0001.params", "model-symbol.json"]


# -- 3. killed runs -----------------------------------------------------------------------------------

def wait_for(condition, process, timeout, what):
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process ended (status {process.returncode}) before {what}")
        if time.time() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.02)


def test_training_killed_mid_epoch_resumes_from_the_last_checkpoint(tiny_pack, tmp_path):
    prefix = str(tmp_path / "run" / "model")
    argv = [sys.executable, os.path.join(PROJECT_ROOT, "train.py"), "--data-dir", str(tiny_pack), "--prefix", prefix,
            "--network", "m1", "--multiplier", "0.125", "--per-batch-size", "16", "--lr", "0.05", "--frequent", "1",
            "--seed", "1", "--lr-steps", "1000"]
    log_path = prefix + ".log"
    with open(os.devnull, "wb") as devnull:
        process = subprocess.Popen(argv + ["--end-epoch", "8"], cwd=PROJECT_ROOT, env=QUIET_ENV, stdout=devnull,
                                   stderr=devnull)

        def in_epoch_2():
            return os.path.exists(log_path) and "Epoch[2] Batch[1/2]" in open(log_path).read()
        wait_for(in_epoch_2, process, 240, "epoch 2")
        process.send_signal(signal.SIGKILL)             # normally before epoch 2 ends (2 batches per epoch)
        process.wait()
    last = find_resume_epoch(prefix)
    assert last is not None and last < 8
    result = run_measured(argv + ["--end-epoch", str(last + 2), "--resume"], timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    log_text = open(log_path).read()
    assert f"resuming from {prefix}-{last:04d}: epoch {last} done, global step {2 * last}" in log_text
    assert f"Epoch[{last + 1}] Batch[1/2] step {2 * last + 1} " in log_text
    assert f"Epoch[{last + 2}] Batch[2/2] step {2 * last + 4} " in log_text
    for epoch in range(1, last + 3):
        AgeGenderModel(f"{prefix},{epoch}")                       # symbol + params load and match
        state = json.loads(open(f"{prefix}-{epoch:04d}.trainer.json").read())
        assert state["epoch"] == epoch and state["global_step"] == 2 * epoch
    assert not [n for n in os.listdir(tmp_path / "run") if n.startswith(".tmp-")]


def test_prepare_killed_mid_run_finishes_with_one_record_per_image(shared, original_mtcnn_dir, tmp_path):
    folder = os.path.join(shared, "data", "utkface", "images")
    names = sorted(os.listdir(folder))[::1500][:14]
    rows = [("path", "age", "gender")]
    ages = {}
    for i, name in enumerate(names):
        ages[os.path.join(folder, name)] = 10 + i              # a distinct age per source identifies its record
        rows.append((os.path.join(folder, name), 10 + i, i % 2))
    (tmp_path / "notes.jpg").write_text("not an image")
    cv2.imwrite(str(tmp_path / "blank.jpg"), np.full((200, 200, 3), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "noise.jpg"), np.random.RandomState(0).randint(0, 256, (200, 200, 3)).astype(np.uint8))
    bad = {"notes.jpg": "unreadable", "missing.jpg": "unreadable", "blank.jpg": "no face found",
           "noise.jpg": "no face found"}
    rows[3:3] = [(name, 50 + i, 0) for i, name in enumerate(bad)]  # mixed in among the faces
    with open(tmp_path / "source.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "data.prepare", str(tmp_path / "source.csv"), "--out", str(out), "--workers", "1",
            "--mtcnn-model", original_mtcnn_dir, "--val-fraction", "0.25", "--quiet"]
    journal = out / ".prepare" / "journal.bin"
    with open(os.devnull, "wb") as devnull:
        process = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=QUIET_ENV, stdout=devnull, stderr=devnull)
        wait_for(lambda: journal.exists() and journal.stat().st_size > 0, process, 240, "journal entry")
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (out / "train.rec").exists()
    result = run_measured(argv, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["resumed_from"] < len(rows) - 1 and summary["processed_now"] == len(rows) - 1 - \
        summary["resumed_from"]
    recorded = []
    for split in ("train", "val"):
        reader = PackReader(str(out / f"{split}.rec"))
        recorded += [int(age) for _, age in reader.labels]
        for key in reader.keys:
            assert reader.read_image(key)[1].shape == (112, 112, 3)
    with open(out / "skipped.csv", newline="") as f:
        skipped = {row["path"]: row["reason"] for row in csv.DictReader(f)}
    for name, expected in bad.items():
        reason = skipped.pop(str(tmp_path / name))
        assert reason.startswith(expected) and (expected != "unreadable" or name in reason), reason
    assert all(reason == "no face found" for reason in skipped.values())     # faces MTCNN missed, if any
    assert sorted(recorded) == sorted(age for path, age in ages.items() if path not in skipped)
    assert len(recorded) >= len(names) - 2 and not (out / ".prepare").exists()


# -- 4. resource bounds -------------------------------------------------------------------------------

def test_memory_stays_flat_over_1000_images(tmp_path, original_model):
    rng = np.random.RandomState(0)
    peaks = {}
    for count in (100, 1000):
        folder = tmp_path / f"n{count}"
        folder.mkdir()
        for i in range(count):
            cv2.imwrite(str(folder / f"{i:04d}.png"), rng.randint(0, 256, (16, 16, 3)).astype(np.uint8))
        result = run_cli("--aligned", "--model", original_model, folder, "--json", tmp_path / f"n{count}.json",
                         "--output", tmp_path / f"annotated{count}", "--images-per-batch", "32", timeout=400)
        assert result.returncode == 0, result.stderr
        assert len(json.loads((tmp_path / f"n{count}.json").read_text())) == count
        peaks[count] = result.peak_rss
    print("peak RSS MiB by image count:", {k: round(v / 1024 ** 2) for k, v in peaks.items()})
    assert peaks[1000] - peaks[100] < 40 * 1024 ** 2, {k: v / 1024 ** 2 for k, v in peaks.items()}


def test_video_frames_are_streamed(tmp_path, face_112, original_model):
    base = cv2.resize(face_112, (640, 480))
    peaks = {}
    for count in (10, 160):
        path = str(tmp_path / f"clip{count}.avi")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 480))
        for i in range(count):
            writer.write(np.roll(base, 4 * i, axis=1))
        writer.release()
        result = run_cli("--aligned", "--model", original_model, path, "--json", tmp_path / f"v{count}.json",
                         timeout=400)
        assert result.returncode == 0, result.stderr
        assert len(json.loads((tmp_path / f"v{count}.json").read_text())) == count + 1     # + track summary
        peaks[count] = result.peak_rss
    print("peak RSS MiB by frame count:", {k: round(v / 1024 ** 2) for k, v in peaks.items()})
    # 160 frames of 640x480 BGR are 147 MB: none of that may accumulate
    assert peaks[160] - peaks[10] < 50 * 1024 ** 2, {k: v / 1024 ** 2 for k, v in peaks.items()}


# -- 5. outputs and paths -----------------------------------------------------------------------------

def test_output_paths_never_leave_the_output_folder(tmp_path, face_112, original_model):
    inputs, out, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    for folder in (inputs / "sub", out, outside / "linked"):
        folder.mkdir(parents=True)
    jpeg = cv2.imencode(".jpg", face_112)[1].tobytes()
    for path in (inputs / "..x.jpg", inputs / "sub" / "..jpg", inputs / "sub" / "a.jpg", outside / "linked" / "b.jpg",
                 tmp_path / "up.jpg"):
        path.write_bytes(jpeg)
    os.symlink(outside / "linked", inputs / "linked")            # symlinked subfolder inside the input folder
    os.symlink(outside, out / "sub")                             # and one inside the output folder
    crafted = os.path.join(str(inputs), "sub", "..", "..", "up.jpg")
    result = run_cli("--aligned", "--model", original_model, inputs, crafted, "--output", out, "--json", "-")
    written = [os.path.join(root, name) for root, _, names in os.walk(out) for name in names]
    for path in written:
        assert os.path.realpath(path).startswith(str(out.resolve()) + os.sep), path
    assert sorted(os.path.relpath(p, out) for p in written) == ["..x.jpg", "up.jpg"]
    assert sorted(os.listdir(outside)) == ["linked"] and os.listdir(outside / "linked") == ["b.jpg"]
    # sub/..jpg and sub/a.jpg would go through out/sub -> outside: refused, one line each
    assert result.returncode == 1
    errors = error_lines(result)
    assert len(errors) == 2 and all("symbolic link" in e for e in errors), errors
    assert len(json.loads(result.stdout)) == 4


def test_unwritable_outputs_are_one_error_line(tmp_path, face_112, original_model):
    image = tmp_path / "face.jpg"
    cv2.imwrite(str(image), face_112)
    blocker = tmp_path / "a file"
    blocker.write_text("")
    result = run_cli("--aligned", "--model", original_model, image, "--json", blocker / "out.json")
    assert result.returncode == 2 and len(error_lines(result)) == 1 and str(blocker / "out.json") in result.stderr
    read_end, write_end = os.pipe()
    os.close(read_end)                                              # e.g. `test.py ... --json - | head -0`
    try:
        result = run_cli("--aligned", "--model", original_model, image, image, "--json", "-", stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == 1 and error_lines(result) == [
        "error: standard output was closed by the reader (broken pipe)"], result.stderr


def test_file_size_limit_on_json_output_stops_the_run_cleanly(tmp_path, face_112, original_model):
    image = tmp_path / "face.jpg"
    cv2.imwrite(str(image), face_112)
    limited = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)); sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = run_measured([sys.executable, "-c", limited, os.path.join(PROJECT_ROOT, "test.py"), "--quiet",
                           "--aligned", "--model", original_model, *[str(image)] * 40, "--raw",
                           "--json", str(tmp_path / "out.json")])
    assert result.returncode == 1
    assert error_lines(result) == [f"error: {tmp_path / 'out.json'}: cannot write (File too large)"]
