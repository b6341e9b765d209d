"""Safe file output and standard streams: atomic writes, special files, silencing native stderr.

Every output of the project goes through :func:`atomic_write`: the data goes to a temporary file next to
the target, which is renamed onto it only once complete, so a crash, a signal or a full disk leaves either
the previous file or nothing, never half a file. A target that is a FIFO or a character device
(``/dev/stdout``, ``/dev/null``) is written in place instead of being replaced by a regular file.
"""
import contextlib
import errno
import glob
import json
import os
import stat
import sys
import tempfile
import threading

from .errors import AgeGenderError

TEMP_PREFIX = ".tmp-"


class OutputError(AgeGenderError):
    """An output file cannot be written."""


def is_special_file(path):
    """True when ``path`` exists and is a FIFO, a character or a block device (written in place)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def check_output_path(path, what="output", error_class=None):
    """Raise OutputError unless ``path`` can be an output file: not a folder, its folder not a file."""
    error_class = error_class or OutputError
    if os.path.isdir(path):
        raise error_class(f"{path}: is a folder, the {what} must be a file")
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    if parent and not os.path.isdir(parent):
        raise error_class(f"{path}: cannot write, {parent} is a file, not a folder")
    if parent and not os.access(parent, os.W_OK | os.X_OK):
        raise error_class(f"{path}: cannot write, no permission to write in {parent}")


def temporary_path(path):
    """A new, empty temporary file next to ``path`` (same file system, so the rename is atomic).

    Its name holds this process's id, so :func:`remove_stale_temporaries` can tell a killed writer's file
    from that of a writer still running.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.path.basename(path)}.{os.getpid()}.", dir=folder)
    os.close(fd)
    return tmp


def remove_stale_temporaries(path):
    """Remove temporary files of ``path`` left by writers that were killed (their process is gone)."""
    folder = os.path.dirname(os.path.abspath(path))
    stem = TEMP_PREFIX + os.path.basename(path) + "."
    for stale in glob.glob(os.path.join(glob.escape(folder), glob.escape(stem) + "*")):
        pid = os.path.basename(stale)[len(stem):].split(".")[0]
        if pid.isdigit() and _process_alive(int(pid)):
            continue
        remove_quietly(stale)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True         # exists, owned by someone else
    return True


def atomic_write(path, write, errors=(OSError,), describe=None, error_class=OutputError, mode=0o644):
    """Run ``write(tmp)`` on a temporary file next to ``path``, then rename it onto ``path``.

    A FIFO or device at ``path`` is passed to ``write`` directly. A failed write (one of ``errors``: full
    disk, file size limit...) raises ``error_class`` naming ``path`` and leaves ``path`` as it was; the
    temporary file is removed on any failure, including KeyboardInterrupt. ``describe(exc)`` gives the reason.
    """
    describe = describe or (lambda exc: getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1])
    if is_special_file(path):
        try:
            write(path)
        except errors as exc:
            raise error_class(f"{path}: cannot be written ({describe(exc)})") from None
        return path
    check_output_path(path, error_class=error_class)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        remove_stale_temporaries(path)
        tmp = temporary_path(path)
    except OSError as exc:
        raise error_class(f"{path}: cannot be written ({describe(exc)})") from None
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except errors as exc:
        remove_quietly(tmp)
        raise error_class(f"{path}: cannot be written ({describe(exc)}); the previous file is unchanged") from None
    except BaseException:
        remove_quietly(tmp)
        raise
    return path


def write_json(path, value, **options):
    """Write ``value`` as JSON (``json.dump`` options) to ``path``: the ``write`` of :func:`atomic_write`."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, **options)


def remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def same_file(a, b):
    """True when paths ``a`` and ``b`` name the same existing file (links and ``..`` resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# -- standard streams ------------------------------------------------------------------------------

_closed_at_start = set()


def ensure_standard_streams():
    """Give file descriptors 0, 1 and 2 an open file (/dev/null) when the process started with them closed.

    Otherwise the next file opened would get number 1 or 2 and native libraries' messages, or the
    results, would land in it. ``sys.stdout``/``sys.stderr`` (None then) write to /dev/null too.
    Uncaught exceptions are printed only while no thread silences stderr (:func:`stderr_clear`).
    Returns the set of descriptors that were closed (see :func:`stream_was_closed`).
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            _closed_at_start.add(fd)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)
    sys.excepthook = _clear_excepthook       # a traceback is never printed into a silenced stderr
    return set(_closed_at_start)


def stream_was_closed(fd):
    """True when descriptor ``fd`` (1 stdout, 2 stderr) was closed when the process started."""
    return fd in _closed_at_start


class _StderrGate:
    """Who may touch descriptor 2: any number of threads in quiet windows (fd 2 then points at /dev/null),
    or one writer of the project's own messages, which waits until no window is open (fd 2 is real)."""
    condition = threading.Condition()
    quiet = 0                   # threads inside quiet windows
    writers = 0                 # writers waiting or writing: new windows wait for them
    saved = None                # the real stderr while redirected
    local = threading.local()   # this thread's window depth


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence what native libraries (libpng, libjpeg, FFmpeg, MXNet's C++ log) print on stderr, for a moment.

    File descriptor 2 is process-wide: it is redirected while at least one thread is inside (counted under
    a lock, so overlapping threads restore the real stderr at the end, never each other's /dev/null), and
    the project's own messages (:func:`stderr_clear`) wait until no thread is inside, so they always reach
    the user. Keep the calls inside short. Does nothing when descriptor 2 cannot be duplicated.
    """
    gate, depth = _StderrGate, getattr(_StderrGate.local, "depth", 0)
    with gate.condition:
        while gate.writers and not depth:
            gate.condition.wait()
        if gate.quiet == 0:
            try:
                if sys.stderr is not None:
                    sys.stderr.flush()
            except (OSError, ValueError):
                pass
            try:
                saved = os.dup(2)
            except OSError:
                saved = None
            if saved is not None:
                try:
                    null = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(null, 2)
                    os.close(null)
                    gate.saved = saved
                except OSError:
                    os.close(saved)
        gate.quiet += 1
    gate.local.depth = depth + 1
    try:
        yield
    finally:
        gate.local.depth = depth
        with gate.condition:
            gate.quiet -= 1
            if gate.quiet == 0 and gate.saved is not None:
                os.dup2(gate.saved, 2)
                os.close(gate.saved)
                gate.saved = None
            gate.condition.notify_all()


@contextlib.contextmanager
def stderr_clear():
    """Inside, descriptor 2 is the real stderr: no thread silences natives meanwhile (see
    :func:`quiet_native_stderr`). Wrap every write of the project's own errors and notes in it."""
    gate = _StderrGate
    if getattr(gate.local, "depth", 0):     # this thread is in a quiet window itself: cannot wait for it
        yield
        return
    with gate.condition:
        gate.writers += 1
        try:
            while gate.quiet:
                gate.condition.wait()
            yield
        finally:
            gate.writers -= 1
            gate.condition.notify_all()


def print_error(message):
    """Print ``message`` as one line on the real stderr (after any native-silencing window has closed)."""
    with stderr_clear():
        try:
            print(message, file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass


def _clear_excepthook(*exc_info):
    with stderr_clear():
        sys.__excepthook__(*exc_info)


class TextOutput:
    """A text output that is complete or absent: ``"-"`` (standard output), a FIFO or device (written in
    place), or a file written under a temporary name that :meth:`commit` renames onto ``path``.

    :meth:`discard` drops the temporary file (the previous ``path``, if any, stays as it was). Names that
    are not UTF-8 (surrogate escapes from the file system) are written as their original bytes. Write
    failures raise OutputError naming ``path`` (``"standard output"`` for ``-``).
    """

    def __init__(self, path, newline=None):
        self.path, self.tmp = path, None
        if path == "-":
            if stream_was_closed(1):
                raise OutputError("standard output is closed, cannot write '-' to it")
            self.file = sys.stdout
            return
        try:
            if is_special_file(path):
                target = path
            else:
                check_output_path(path)
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                remove_stale_temporaries(path)
                self.tmp = target = temporary_path(path)
            self.file = open(target, "w", encoding="utf-8", errors="surrogateescape", newline=newline)
        except OSError as exc:
            if self.tmp:
                remove_quietly(self.tmp)
            raise self.error(exc) from None

    def error(self, exc):
        """The OutputError for a failed write; after a broken pipe on stdout, stdout is muted for a clean exit."""
        if self.path == "-" and getattr(exc, "errno", None) == errno.EPIPE:
            mute_stdout()
            return OutputError("standard output was closed by the reader (broken pipe)")
        return OutputError(f"{self.path}: cannot write ({getattr(exc, 'strerror', None) or exc})")

    def write(self, text):
        try:
            try:
                self.file.write(text)
            except UnicodeEncodeError:      # stdout in another encoding, or a name that is not UTF-8
                self.file.flush()
                self.file.buffer.write(text.encode(self.file.encoding or "utf-8", "surrogateescape"))
        except (OSError, ValueError) as exc:
            raise self.error(exc) from None

    def commit(self):
        """Finish the output: flush stdout, or close the file and rename it onto ``path``."""
        try:
            if self.file is sys.stdout:
                self.file.flush()
                return
            self.file.flush()
            if self.tmp:
                os.fsync(self.file.fileno())
            self.file.close()
            if self.tmp:
                os.chmod(self.tmp, 0o644)
                os.replace(self.tmp, self.path)
                self.tmp = None
        except (OSError, ValueError) as exc:
            self.discard()
            raise self.error(exc) from None

    def discard(self):
        """Give up the output: the temporary file is removed (stdout is only flushed)."""
        try:
            if self.file is sys.stdout:
                self.file.flush()
            else:
                self.file.close()
        except (OSError, ValueError):
            pass
        if self.tmp:
            remove_quietly(self.tmp)
            self.tmp = None


def mute_stdout():
    """Point descriptor 1 at /dev/null (after the reader of a pipe went away), so exiting flushes nothing."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass
