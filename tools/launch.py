"""Start an MXNet parameter-server job on this machine: one scheduler, servers and workers on 127.0.0.1.

    python tools/launch.py -n 2 [-s 1] [--timeout 3600] -- \
        python train.py --kvstore dist_sync --data-dir work-data/utkface --prefix runs/dist/model ...

Every process runs the same command; ``DMLC_ROLE`` (scheduler, server or worker) decides what it does:
importing mxnet in a scheduler or server process runs that role's loop and exits, and workers train. The
launcher picks a free port, sets ``DMLC_PS_ROOT_URI/PORT``, ``DMLC_NUM_SERVER``, ``DMLC_NUM_WORKER`` and
``DMLC_NODE_HOST``, prefixes every output line with the process's role and index, and exits with 0 only when
every worker exited with 0. If any process fails (or the scheduler/a server dies while workers run, or
``--timeout`` passes), it stops all the others and exits non-zero with a one-line reason; the same on
SIGINT/SIGTERM. Across machines the same variables are set by hand or by a cluster scheduler (README).
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

LOOPBACK = "127.0.0.1"
POLL_SECONDS = 0.2
GRACE_SECONDS = 5.0       # after the workers finish, how long servers and scheduler get to exit on their own


def free_port(host=LOOPBACK):
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def role_environ(role, port, num_servers, num_workers, base=None, verbose=False):
    """The environment of one process of the job: ``base`` (default os.environ) plus the DMLC variables."""
    env = dict(os.environ if base is None else base)
    env.update(DMLC_ROLE=role, DMLC_PS_ROOT_URI=LOOPBACK, DMLC_PS_ROOT_PORT=str(port),
               DMLC_NUM_SERVER=str(num_servers), DMLC_NUM_WORKER=str(num_workers), DMLC_NODE_HOST=LOOPBACK)
    if verbose:
        env["PS_VERBOSE"] = "1"
    return env


class Job:
    """The scheduler, server and worker processes of one run, each in its own process group."""

    def __init__(self, command, num_workers, num_servers=1, port=None, verbose=False):
        self.command = list(command)
        self.num_workers, self.num_servers = num_workers, num_servers
        self.port = port or free_port()
        self.verbose = verbose
        self.procs = []          # (name, Popen)
        self._pipes = []

    def start(self):
        """Start all processes; their output is copied to stdout, line by line, prefixed by the name."""
        roles = [("scheduler", "scheduler")] + [(f"server{i}", "server") for i in range(self.num_servers)]
        roles += [(f"worker{i}", "worker") for i in range(self.num_workers)]
        for name, role in roles:
            env = role_environ(role, self.port, self.num_servers, self.num_workers, verbose=self.verbose)
            proc = subprocess.Popen(self.command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.procs.append((name, proc))
            message(f"started {name} pid {proc.pid}")
            pipe = threading.Thread(target=_copy_lines, args=(proc.stdout, f"[{name}] "), daemon=True)
            pipe.start()
            self._pipes.append(pipe)

    def workers(self):
        return [(name, proc) for name, proc in self.procs if name.startswith("worker")]

    def wait(self, timeout=None):
        """Wait for the workers; returns (exit code, reason) with reason None on success."""
        deadline = time.monotonic() + timeout if timeout else None
        helpers_ended = None       # when the scheduler or a server first exited cleanly
        while True:
            for name, proc in self.procs:
                code = proc.poll()
                if code is not None and code != 0:
                    return 1, f"{name} (pid {proc.pid}) exited with {_describe(code)}; stopping the others"
            if all(proc.poll() == 0 for _, proc in self.workers()):
                break
            # scheduler and servers exit once the workers have finalized, a moment before the workers do
            if helpers_ended is None and any(proc.poll() is not None for name, proc in self.procs
                                             if not name.startswith("worker")):
                helpers_ended = time.monotonic()
            if helpers_ended is not None and time.monotonic() - helpers_ended > GRACE_SECONDS:
                running = ", ".join(name for name, proc in self.workers() if proc.poll() is None)
                return 1, f"scheduler or server ended but {running} still running; stopping the others"
            if deadline and time.monotonic() > deadline:
                return 124, f"--timeout {timeout:g} s passed; stopping all processes"
            time.sleep(POLL_SECONDS)
        end = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < end and any(proc.poll() is None for _, proc in self.procs):
            time.sleep(POLL_SECONDS)
        lingering = [name for name, proc in self.procs if proc.poll() is None]
        if lingering:
            message(f"workers done; stopping {', '.join(lingering)}, still running after {GRACE_SECONDS:g} s")
        return 0, None

    def stop(self):
        """SIGTERM every process group still alive, SIGKILL what is left after a few seconds."""
        for sig, patience in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            alive = [proc for _, proc in self.procs if proc.poll() is None]
            for proc in alive:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + patience
            while alive and time.monotonic() < end:
                alive = [proc for proc in alive if proc.poll() is None]
                time.sleep(0.05)
        for pipe in self._pipes:
            pipe.join(timeout=1.0)


def _describe(code):
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _copy_lines(stream, prefix):
    for raw in iter(stream.readline, b""):
        sys.stdout.write(prefix + raw.decode("utf-8", "replace"))
        sys.stdout.flush()
    stream.close()


def message(text):
    """One line from the launcher itself, on stderr."""
    print(f"launch: {text}", file=sys.stderr, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                usage="%(prog)s -n WORKERS [-s SERVERS] [--timeout S] -- COMMAND ...")
    p.add_argument("-n", "--num-workers", type=int, required=True, help="worker processes")
    p.add_argument("-s", "--num-servers", type=int, default=1, help="server processes")
    p.add_argument("--port", type=int, default=0, help="scheduler port (0: a free one)")
    p.add_argument("--timeout", type=float, default=0, help="stop everything after this many seconds (0: never)")
    p.add_argument("--verbose", action="store_true", help="PS_VERBOSE=1: ps-lite logs its connections")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command every process runs")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to run after --")
    if args.num_workers < 1 or args.num_servers < 1:
        p.error("-n and -s must be at least 1")

    job = Job(command, args.num_workers, args.num_servers, port=args.port, verbose=args.verbose)

    received = []

    def on_signal(signum, _frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code, reason = 1, "launcher failed; stopping all processes"     # unless start/wait say otherwise
    try:
        job.start()
        code, reason = job.wait(args.timeout or None)
    except KeyboardInterrupt:
        signum = received[0] if received else signal.SIGINT
        code, reason = 128 + signum, f"interrupted ({signal.Signals(signum).name}); stopping all processes"
    finally:
        # a second signal must not cut the clean-up short
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        if reason:
            message(reason)
        job.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
