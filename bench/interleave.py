#!/usr/bin/python3
"""Times commands in turns, for benchmarks whose cost drifts with the machine's load.

  interleave.py --runs N --out FILE.json --case NAME PREPARE COMMAND [--case ...]

Each round runs every case once, in the given order: PREPARE (untimed), then COMMAND,
timed from start to exit, with the CPU the command and its children spent (user and
system, from wait4). A minute of load from elsewhere then falls on every case alike,
where running all of one case before the next would charge it to one of them.

FILE.json has hyperfine's layout (results[].command, mean, stddev, median, user, system,
times), so the same reader takes both. A table goes to stdout.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def timed(command):
    started = time.perf_counter()
    process = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"interleave.py: `{command}` failed with {status}")
    return elapsed, usage.ru_utime, usage.ru_stime


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--case", nargs=3, action="append", required=True,
                        metavar=("NAME", "PREPARE", "COMMAND"))
    args = parser.parse_args()

    samples = {name: [] for name, _, _ in args.case}
    for round_number in range(1, args.runs + 1):
        line = []
        for name, prepare, command in args.case:
            subprocess.run(["/bin/sh", "-c", prepare], check=True, stdout=subprocess.DEVNULL)
            sample = timed(command)
            samples[name].append(sample)
            line.append(f"{name} {sample[0]:.3f} s")
        print(f"round {round_number}/{args.runs}: " + ", ".join(line), flush=True)

    results = []
    for name, _, command in args.case:
        times = [s[0] for s in samples[name]]
        results.append({
            "command": name,
            "shell_command": command,
            "mean": statistics.mean(times),
            "stddev": statistics.stdev(times) if len(times) > 1 else 0.0,
            "median": statistics.median(times),
            "min": min(times),
            "max": max(times),
            "user": statistics.mean(s[1] for s in samples[name]),
            "system": statistics.mean(s[2] for s in samples[name]),
            "times": times,
        })
    with open(args.out, "w") as file:
        json.dump({"results": results}, file, indent=2)

    print()
    print("| command | median | mean ± stddev | min … max | user + system CPU |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['command']} | {r['median']:.3f} s | {r['mean']:.3f} ± {r['stddev']:.3f} s "
              f"| {r['min']:.3f} … {r['max']:.3f} s | {r['user']:.3f} + {r['system']:.3f} s |")


if __name__ == "__main__":
    main()
