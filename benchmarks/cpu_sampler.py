"""A node under a CPU-time sampler: where its CPU goes per request, under real load.

    python -m benchmarks.cpu_sampler OUT [p2pinfer node arguments ...]
    python -m benchmarks.cpu_sampler OUT floor [benchmarks.serving_floor arguments ...]

Runs ``p2pinfer node`` (or the serving floor) in this process. ``SIGUSR1`` arms a ``SIGPROF`` interval timer, which
the kernel fires per slice of the process's CPU time (user + system, every thread), and the
handler records the main thread's Python stack (the event loop's: a node's requests run
there); ``SIGUSR2`` disarms it and writes ``OUT``: one line per distinct stack, py-spy's
"collapsed" format (``frame;frame;... count``), for ``summarize``. The driver
(``benchmarks.overhead --sample-cpu``) sends both around the load it measures.

Why not cProfile or py-spy (``benchmarks.overhead --profile`` keeps cProfile): cProfile
inflates every call (~3.7x at this grain, session 14) and profiles sequential requests;
py-spy samples wall time, so on a saturated 2-core host a thread waiting for the CPU is
counted where it was preempted (in session 16 it put 19 % of the node into a socket write that
took 4 % of its CPU). Samples taken on CPU time, under the 8-client load the figures of issue
17 are about, say what a request costs. A sample lands when the kernel's timer tick fires (250
Hz here, whatever the interval asked): 20 s of load gives ~5,000 samples. Time inside a C call
(ONNX Runtime, a socket write) is counted on the Python line that made the call.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import sys
from pathlib import Path
from types import FrameType

INTERVAL_S = 0.0005
SIDE_BY_SIDE_MIN_US = 0.5  # a function below this per request is left out of ``functions``


class CpuSampler:
    """Collapsed main-thread stacks, one per ``SIGPROF`` (install from the main thread)."""

    def __init__(self) -> None:
        self.stacks: collections.Counter[str] = collections.Counter()
        signal.signal(signal.SIGPROF, self._sample)

    def _sample(self, signal_number: int, frame: FrameType | None) -> None:
        names = []
        while frame is not None:
            code = frame.f_code
            names.append(f"{code.co_qualname} ({code.co_filename}:{frame.f_lineno})")
            frame = frame.f_back
        self.stacks[";".join(reversed(names))] += 1

    def control(self, out: Path) -> None:
        """``SIGUSR1`` starts sampling, ``SIGUSR2`` stops it and writes ``out``."""

        def start(signal_number: int, frame: FrameType | None) -> None:
            self.stacks.clear()
            signal.setitimer(signal.ITIMER_PROF, INTERVAL_S, INTERVAL_S)

        def stop(signal_number: int, frame: FrameType | None) -> None:
            signal.setitimer(signal.ITIMER_PROF, 0, 0)
            written = out.with_name(out.name + ".partial")  # renamed whole: ``out`` appears complete
            written.write_text("".join(f"{stack} {count}\n" for stack, count in self.stacks.items()))
            os.replace(written, out)

        signal.signal(signal.SIGUSR1, start)
        signal.signal(signal.SIGUSR2, stop)


FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*):(?P<line>[^:)]*)\)$")


def _function(frame: str) -> str:
    """``qualname (file)`` without the line: a function's samples counted together."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    file = match["file"]
    for marker in ("site-packages/", "/p2pinfer/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{match['function']} ({file})"


def summarize(collapsed: str, cpu_us_per_request: float, top: int = 40) -> dict[str, object]:
    """Per function: its inclusive and its own CPU (its lines, and the C calls they make) in
    µs per request, from the stacks' share of the samples and the process's CPU per request."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        functions = [_function(frame) for frame in stack.split(";")]
        total += count
        for function in set(functions):
            inclusive[function] += count
        own[functions[-1]] += count
    scale = cpu_us_per_request / max(total, 1)
    rows = [{"function": function, "inclusive_us_per_request": round(count * scale, 1),
             "own_us_per_request": round(own[function] * scale, 1)}
            for function, count in inclusive.most_common()]
    return {"samples": total, "cpu_us_per_request": round(cpu_us_per_request, 1),
            # every function of at least SIDE_BY_SIDE_MIN_US per request: [inclusive, own]
            "functions": {function: [round(count * scale, 1), round(own[function] * scale, 1)]
                          for function, count in inclusive.items() if count * scale >= SIDE_BY_SIDE_MIN_US},
            "top_inclusive": rows[:top],
            "top_own": sorted(rows, key=lambda row: -float(str(row["own_us_per_request"])))[:top]}


def main(argv: list[str] | None = None) -> None:
    """``OUT [node arguments ...]`` samples a node; ``OUT floor [floor arguments ...]`` the
    serving floor (``benchmarks.serving_floor``), to compare the same functions in both."""
    arguments = sys.argv[1:] if argv is None else argv
    sampler = CpuSampler()
    sampler.control(Path(arguments[0]))
    if arguments[1:2] == ["floor"]:
        from benchmarks.serving_floor import main as floor_main

        floor_main(arguments[2:])
        return
    from p2pinfer.cli.main import main as p2pinfer_main

    sys.exit(p2pinfer_main(["node", *arguments[1:]]))


if __name__ == "__main__":
    main()
