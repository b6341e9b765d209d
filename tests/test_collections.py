"""Large collections with test.py: --jsonl streaming, --shard K/N, --resume after SIGKILL, the progress bar.

Runs on a folder of a few hundred real UTKFace chips with --aligned, so each run takes seconds.
"""
import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from agegender.config import PROJECT_ROOT
from analysis.inputs import expand_inputs, in_shard

COUNT = 300


@pytest.fixture(scope="module")
def collection(utkface_images_dir, tmp_path_factory):
    """A folder of COUNT UTKFace chips in two subfolders (names with a space in one of them)."""
    source = utkface_images_dir
    names = sorted(os.listdir(source))[:COUNT]
    root = tmp_path_factory.mktemp("collection") / "photos"
    for i, name in enumerate(names):
        folder = root / ("part a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(os.path.join(source, name), folder / name)
    return root


def cli_command(collection, *args):
    return [sys.executable, os.path.join(PROJECT_ROOT, "test.py"), "--aligned", "--gpu", "-1", str(collection),
            *map(str, args)]


def run_cli(collection, *args, **kwargs):
    result = subprocess.run(cli_command(collection, "--quiet", *args), capture_output=True, text=True,
                            timeout=300, cwd=PROJECT_ROOT, **kwargs)
    assert result.returncode == 0, result.stderr
    return result


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text.endswith("\n"), "the last line is cut"
    return [json.loads(line) for line in text.splitlines()]


def by_image(records):
    found = {}
    for record in records:
        assert record["image"] not in found, f"{record['image']} written twice"
        found[record["image"]] = record
    return found


@pytest.fixture(scope="module")
def full_run(collection, tmp_path_factory):
    path = tmp_path_factory.mktemp("full") / "faces.jsonl"
    run_cli(collection, "--jsonl", path, "--json", path.with_suffix(".json"))
    records = read_jsonl(path)
    with open(path.with_suffix(".json")) as f:
        assert json.load(f) == records          # JSON Lines hold the same records as --json
    assert len(records) == COUNT and all(len(r["faces"]) == 1 for r in records)
    return by_image(records)


def test_two_shards_together_equal_one_unsharded_run(collection, full_run, tmp_path):
    shards = []
    for k in range(2):
        run_cli(collection, "--jsonl", tmp_path / f"shard{k}.jsonl", "--shard", f"{k}/2")
        shards.append(by_image(read_jsonl(tmp_path / f"shard{k}.jsonl")))
    assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])
    assert {**shards[0], **shards[1]} == full_run


def test_shards_are_stable_across_places_and_processes(collection, tmp_path):
    moved = tmp_path / "elsewhere" / "photos"
    shutil.copytree(collection, moved)
    here = [in_shard(item, 1, 3) for item in expand_inputs([str(collection)])]
    there = [in_shard(item, 1, 3) for item in expand_inputs([str(moved)])]
    assert here == there and 0 < sum(here) < len(here)
    # Python's own str hash changes per process; the shard must not.
    code = ("import sys; from analysis.inputs import expand_inputs, in_shard; "
            "print(''.join('1' if in_shard(i, 1, 3) else '0' for i in expand_inputs([sys.argv[1]])))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, str(moved)], capture_output=True, text=True, check=True,
                             cwd=PROJECT_ROOT, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        assert out == "".join("1" if v else "0" for v in here)


def test_sigkill_then_resume_equals_an_uninterrupted_run(collection, full_run, tmp_path):
    path = tmp_path / "cut.jsonl"
    process = subprocess.Popen(cli_command(collection, "--quiet", "--jsonl", path, "--images-per-batch", "1"),
                               cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= 40:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    cut = read_jsonl(path)                  # complete lines only
    assert 40 <= len(cut) < COUNT
    assert all(full_run[r["image"]] == r for r in cut)
    result = run_cli(collection, "--jsonl", path, "--resume")
    assert f"{len(cut)} of {COUNT} inputs already done" in result.stderr
    assert by_image(read_jsonl(path)) == full_run


def test_resume_drops_a_cut_last_line(collection, full_run, tmp_path):
    path = tmp_path / "faces.jsonl"
    lines = [json.dumps(record) for record in full_run.values()]
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:50], encoding="utf-8")   # a last line cut short
    result = run_cli(collection, "--jsonl", path, "--resume")
    assert f"{COUNT - 1} of {COUNT} inputs already done" in result.stderr
    assert by_image(read_jsonl(path)) == full_run


def test_resume_refuses_a_file_that_is_not_its_output(collection, tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text('{"image": "a.jpg"}\nnot json\n{"image": "b.jpg"}\n')
    result = subprocess.run(cli_command(collection, "--quiet", "--jsonl", path, "--resume"), capture_output=True,
                            text=True, timeout=300, cwd=PROJECT_ROOT)
    assert result.returncode == 1 and "line 2" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    for bad in (["--resume"], ["--jsonl", path, "--resume", "--json", tmp_path / "x.json"], ["--shard", "2/2"],
                ["--shard", "a/b"]):
        assert subprocess.run(cli_command(collection, *bad), capture_output=True, timeout=120,
                              cwd=PROJECT_ROOT).returncode == 2


def test_progress_bar_on_a_terminal_only(collection, tmp_path):
    small = tmp_path / "small"
    shutil.copytree(collection / "b", small)
    for name in sorted(os.listdir(small))[20:]:
        os.remove(small / name)

    def stderr_of(*args, terminal):
        if not terminal:
            return subprocess.run(cli_command(small, *args), capture_output=True, text=True, timeout=300,
                                  cwd=PROJECT_ROOT).stderr
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        process = subprocess.Popen(cli_command(small, *args), stdout=subprocess.DEVNULL, stderr=follower,
                                   cwd=PROJECT_ROOT)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:                  # the terminal closes when the process ends
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        assert process.wait(300) == 0
        return b"".join(chunks).decode(errors="replace")

    shown = stderr_of("--jsonl", tmp_path / "a.jsonl", terminal=True)
    assert "20/20" in shown and "input/s" in shown and "100%" in shown and "<" in shown     # count, rate, ETA
    assert "20/20" not in stderr_of("--jsonl", tmp_path / "b.jsonl", "--quiet", terminal=True)
    assert "20/20" not in stderr_of("--jsonl", tmp_path / "c.jsonl", terminal=False)


def test_picture_reader_decodes_ahead_in_order_and_raises_at_the_item(sample_images_dir, tmp_path):
    import numpy as np
    from agegender.errors import ImageError
    from agegender.image import read_image
    from analysis.runner import PictureReader
    names = ["test1.jpg", "test2.jpg", "test.jpg"]
    for name in names:
        shutil.copy(os.path.join(sample_images_dir, name), tmp_path / name)
    (tmp_path / "test15.jpg").write_bytes(b"not a jpeg")     # sorts between test1 and test2
    items = expand_inputs([str(tmp_path)])
    assert [os.path.basename(item.path) for item in items] == ["test.jpg", "test1.jpg", "test15.jpg", "test2.jpg"]
    reader = PictureReader(items, depth=2)
    try:
        for index, item in enumerate(items):
            if item.path.endswith("test15.jpg"):
                with pytest.raises(ImageError):
                    reader.read(index)
            else:
                image, scale = reader.read(index)
                expected, expected_scale = read_image(item.path)
                assert scale == expected_scale and np.array_equal(image, expected)
            assert len(reader.pending) <= 2
    finally:
        reader.close()
