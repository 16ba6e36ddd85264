"""Long fuzz runs of the sans-I/O cores: SMTP server, SMTP client, POP3, SASL (issue 8).

    python bench/fuzz_cores.py                                   # 10^6 inputs per core, 2 processes
    python bench/fuzz_cores.py --inputs 20000 --cores pop3,sasl  # a quick look
    python bench/fuzz_cores.py --seed 7 --processes 4

Each input is one generated session from the grammar-aware generators the unit tests use
(tests/unit/*/fuzz_inputs.py, sasl_inputs.py), cut at random points, played against a fresh core with
every decision answered at random, and checked exactly as in the tests: only well-formed replies, the
buffer within its bound, no exception. Input i of a run is generated from seed (seed, core, i), so any
failure printed here is reproduced with --reproduce. Printed per core: inputs/s, exceptions by type and
place with one example each, the largest buffer seen, and the slowest input.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import multiprocessing
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.unit.auth.sasl_inputs import RandomChooser

# core name -> module, function making a case from a chooser, function playing and checking it. Imported
# only for the cores asked for, so the script also runs against older code for some of them.
CORES = {
    "smtp-server": ("tests.unit.smtp.fuzz_inputs", "server_case", "play_server"),
    "smtp-client": ("tests.unit.smtp.fuzz_inputs", "client_case", "play_client"),
    "pop3": ("tests.unit.pop3.fuzz_inputs", "pop3_case", "play_pop3"),
    "sasl": ("tests.unit.auth.sasl_inputs", "sasl_case", "play_sasl"),
}


def functions(core: str) -> tuple[Callable[[RandomChooser], Any], Callable[[Any], Any]]:
    module_name, make, play = CORES[core]
    module = importlib.import_module(module_name)
    return getattr(module, make), getattr(module, play)
BATCH = 5_000


@dataclass
class Tally:
    inputs: int = 0
    input_bytes: int = 0
    seconds: float = 0.0
    max_buffered: int = 0
    slowest_s: float = 0.0
    slowest_size: int = 0
    slowest_index: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    examples: dict[str, tuple[int, str]] = field(default_factory=dict)  # place -> (input index, detail)

    def add(self, other: Tally) -> None:
        self.inputs += other.inputs
        self.input_bytes += other.input_bytes
        self.seconds += other.seconds
        self.max_buffered = max(self.max_buffered, other.max_buffered)
        if other.slowest_s > self.slowest_s:
            self.slowest_s, self.slowest_size, self.slowest_index = (
                other.slowest_s, other.slowest_size, other.slowest_index)  # fmt: skip
        for place, count in other.failures.items():
            self.failures[place] = self.failures.get(place, 0) + count
            self.examples.setdefault(place, other.examples[place])


def chooser(seed: int, core: str, index: int) -> RandomChooser:
    return RandomChooser(random.Random(f"{seed}/{core}/{index}"))


def place_of(exc: BaseException) -> str:
    """The exception's type and the innermost frame in Kartero (or in the checks, for a failed one)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/kartero/" in f.filename] or frames
    frame = ours[-1]
    return f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"


def run_batch(args: tuple[str, int, int, int]) -> Tally:
    core, seed, start, count = args
    make, play = functions(core)
    tally = Tally()
    started = time.perf_counter()
    for index in range(start, start + count):
        case = make(chooser(seed, core, index))
        one = time.perf_counter()
        try:
            run = play(case)
        except Exception as exc:
            place = place_of(exc)
            tally.failures[place] = tally.failures.get(place, 0) + 1
            tally.examples.setdefault(place, (index, f"{exc!r:.200} on input {case.data[:300]!r}"))
        else:
            tally.max_buffered = max(tally.max_buffered, getattr(run, "max_buffered", 0))
        took = time.perf_counter() - one
        if took > tally.slowest_s:
            tally.slowest_s, tally.slowest_size, tally.slowest_index = took, len(case.data), index
        tally.input_bytes += len(case.data)
        tally.inputs += 1
    tally.seconds = time.perf_counter() - started
    return tally


def fuzz(core: str, inputs: int, seed: int, processes: int) -> tuple[Tally, float]:
    batches = [(core, seed, start, min(BATCH, inputs - start)) for start in range(0, inputs, BATCH)]
    total = Tally()
    started = time.perf_counter()
    with multiprocessing.Pool(processes) as pool:
        for done, tally in enumerate(pool.imap_unordered(run_batch, batches), 1):
            total.add(tally)
            if done % 20 == 0 or done == len(batches):
                print(f"  {core}: {total.inputs:,} inputs, {len(total.failures)} failure kinds", file=sys.stderr)
    return total, time.perf_counter() - started


def retime(core: str, seed: int, index: int) -> float:
    """The best of three runs of one input: the slowest input of a run on a shared machine is often
    just the one a scheduler hiccup or a garbage collection fell on."""
    make, play = functions(core)
    case = make(chooser(seed, core, index))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        with contextlib.suppress(Exception):  # counted in the run already
            play(case)
        best = min(best, time.perf_counter() - started)
    return best


def report(core: str, tally: Tally, wall_s: float, processes: int, seed: int) -> None:
    print(f"## {core}")
    print(f"inputs: {tally.inputs:,} ({tally.input_bytes / 1e6:.0f} MB), {wall_s:.0f} s wall with {processes} "
          f"processes: {tally.inputs / wall_s:,.0f} inputs/s ({tally.inputs / tally.seconds:,.0f} per process)")
    print(f"max buffered bytes: {tally.max_buffered:,}" if core != "sasl" else "max buffered bytes: - (no buffer)")
    again = retime(core, seed, tally.slowest_index)
    print(f"slowest input: {tally.slowest_s * 1000:.1f} ms ({tally.slowest_size:,} bytes, input "
          f"{tally.slowest_index}; {again * 1000:.1f} ms when run again)")
    if not tally.failures:
        print("exceptions: none")
    for place, count in sorted(tally.failures.items(), key=lambda item: -item[1]):
        index, detail = tally.examples[place]
        print(f"exception: {count:,} x {place}; e.g. input {index}: {detail}")
    print()


def reproduce(core: str, seed: int, index: int) -> None:
    make, play = functions(core)
    case = make(chooser(seed, core, index))
    print(repr(case))
    play(case)
    print("passed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per core")
    parser.add_argument("--cores", default=",".join(CORES), help="comma-separated: " + ", ".join(CORES))
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reproduce", type=int, metavar="INDEX", help="replay one input of the first core")
    args = parser.parse_args()
    cores = args.cores.split(",")
    if unknown := set(cores) - set(CORES):
        parser.error(f"unknown cores: {', '.join(sorted(unknown))}")
    if args.reproduce is not None:
        reproduce(cores[0], args.seed, args.reproduce)
        return
    print(f"# Fuzzing {', '.join(cores)}: {args.inputs:,} inputs each, seed {args.seed}\n")
    for core in cores:
        tally, wall_s = fuzz(core, args.inputs, args.seed, args.processes)
        report(core, tally, wall_s, args.processes, args.seed)


if __name__ == "__main__":
    main()
