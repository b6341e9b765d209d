"""Every script reports errors the same way (agegender/cli.py): one ``error:`` line, exit 1 for a runtime
error, exit 2 for a usage error."""
import ast
import os
import subprocess
import sys

import pytest

from agegender.config import PROJECT_ROOT

# Entry points with the command that runs them; tools/launch.py passes its workers' statuses on instead.
SCRIPTS = {"test.py": ["test.py"], "eval.py": ["eval.py"], "export.py": ["export.py"], "train.py": ["train.py"],
           "serve.py": ["serve.py"], "data/prepare.py": ["-m", "data.prepare"],
           "tools/fetch_weights.py": ["-m", "tools.fetch_weights"],
           "tools/choose_inference.py": ["-m", "tools.choose_inference"]}


def run_script(script, *args):
    return subprocess.run([sys.executable, *SCRIPTS[script], *map(str, args)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)


def one_error_line(result, status, words):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == status and len(lines) == 1 and lines[0].startswith("error: ") \
        and words in lines[0], (result.returncode, result.stderr)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_main_goes_through_the_shared_cli_layer(script):
    tree = ast.parse(open(os.path.join(PROJECT_ROOT, script), encoding="utf-8").read())
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    calls = {node.func.id for node in ast.walk(main) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert "run_main" in calls, f"{script}: main() does not call agegender.cli.run_main"


def test_a_missing_checkpoint_is_a_runtime_error_in_every_script(tmp_path, face_112):
    import cv2
    missing = tmp_path / "nowhere" / "model"
    face = tmp_path / "face.jpg"
    cv2.imwrite(str(face), face_112)
    pack_csv = tmp_path / "faces.csv"
    pack_csv.write_text(f"path,age,gender\n{face},30,1\n")
    runs = {
        "test.py": run_script("test.py", "--aligned", "--gpu", "-1", "--model", f"{missing},0", face),
        "eval.py": run_script("eval.py", "--aligned", "--data", pack_csv, "--model", f"{missing},0"),
        "export.py": run_script("export.py", "--model", f"{missing},0", "--out", tmp_path / "m.onnx"),
        "serve.py": run_script("serve.py", "--gpu", "-1", "--aligned", "--port", "0", "--model", f"{missing},0"),
        "data/prepare.py": run_script("data/prepare.py", pack_csv, "--out", tmp_path / "packs", "--workers", "1",
                                      "--quiet", "--mtcnn-model", tmp_path / "nowhere"),
    }
    for script, result in runs.items():
        one_error_line(result, 1, "nowhere")


def test_usage_errors_are_status_2_in_every_script(tmp_path):
    for script, args in {"test.py": ["--batch-size", "0"], "eval.py": ["--data", tmp_path / "absent.rec"],
                         "export.py": ["--image-size", "64,64", "--model", "x,0", "--out", tmp_path / "x.onnx"],
                         "train.py": ["--lr-steps", "x"], "serve.py": ["--workers", "0"],
                         "data/prepare.py": [tmp_path / "absent.csv", "--out", tmp_path / "o"]}.items():
        result = run_script(script, *args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
            (script, result.returncode, result.stderr)


def test_the_scripts_share_the_gpu_and_image_size_defaults(tmp_path):
    import eval as eval_script
    import export as export_script
    import serve as serve_script
    import test as test_script
    import train as train_script
    from agegender import config
    size = ",".join(map(str, config.IMAGE_SIZE))
    assert eval_script.parse_args(["--data", os.path.join(PROJECT_ROOT, "README.md")]).gpu == config.DEFAULT_GPU
    analyzer_args = [serve_script.build_parser().parse_args([]), test_script.build_parser().parse_args([])]
    assert all(args.gpu == config.DEFAULT_GPU and args.image_size == size for args in analyzer_args)
    assert export_script.build_parser().parse_args([]).image_size == size
    assert train_script.parse_args(["--data-dir", str(tmp_path)]).data_shape == (3,) + config.IMAGE_SIZE
