"""The command-line layer every script shares: one-line errors, the same exit statuses, the shared options.

Exit statuses: 0 done, 1 a runtime error or a bad item, 2 a usage error (argparse's or :class:`UsageError`),
130 interrupted with Ctrl-C (scripts that catch other signals exit 128 + the signal's number).

    def main(argv=None):
        return run_main(lambda: _main(argv))
"""
import sys

from . import config
from .checkpoint import first_line
from .errors import AgeGenderError, UsageError
from .files import ensure_standard_streams, print_error

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def run_main(body, interrupted="interrupted"):
    """Call ``body()`` and return its exit status; an error it raises becomes one ``error: ...`` line on stderr.

    ``interrupted`` is the line printed on Ctrl-C (say what was kept and how to go on)."""
    ensure_standard_streams()
    try:
        status = body()
    except UsageError as exc:
        print_error(f"error: {exc}")
        return EXIT_USAGE
    except AgeGenderError as exc:
        print_error(f"error: {exc}")
        return EXIT_FAILED
    except MemoryError:
        print_error("error: out of memory")
        return EXIT_FAILED
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print_error(f"error: {where}{exc.strerror or exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        print_error(interrupted)
        return EXIT_INTERRUPTED
    except Exception as exc:
        mxnet = sys.modules.get("mxnet")     # imported only when a script uses it
        if mxnet is not None and isinstance(exc, mxnet.base.MXNetError):
            print_error(f"error: MXNet: {first_line(exc)}")
            return EXIT_FAILED
        raise
    return EXIT_OK if status is None else status


def add_gpu_option(parser):
    """``--gpu``: one GPU id for the scripts that run a model (default :data:`config.DEFAULT_GPU`)."""
    parser.add_argument("--gpu", type=int, default=config.DEFAULT_GPU,
                        help="GPU id, used only if this MXNet build sees that GPU; < 0 forces the CPU")


def add_image_size_option(parser, help="aligned face size 'height,width'"):
    """``--image-size`` with the default of :data:`config.IMAGE_SIZE` (parse it with ``align.parse_face_size``)."""
    parser.add_argument("--image-size", default=",".join(map(str, config.IMAGE_SIZE)), help=help)
