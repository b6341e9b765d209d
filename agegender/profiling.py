"""Per-stage wall-time accounting for the detectors (used by bench/, off by default).

A detector holds ``timer = NO_TIMER``; a benchmark sets ``detector.timer = StageTimer()`` and reads
``timer.ms`` after its calls. Stages may nest; each name accumulates over calls.
"""
import contextlib
import time


class StageTimer:
    """Accumulates milliseconds per stage name: ``with timer("pnet"): ...``.

    ``clock`` is wall time by default; ``time.process_time`` (CPU time of the whole process) is steadier
    on a machine shared with other work.
    """

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.ms = {}

    @contextlib.contextmanager
    def __call__(self, name):
        start = self.clock()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (self.clock() - start) * 1000.0

    def reset(self):
        self.ms = {}


def _no_stage(name):
    return contextlib.nullcontext()


NO_TIMER = _no_stage
