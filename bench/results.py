#!/usr/bin/env python3
"""Helpers shared by the bench scripts.

    results.py section RESULTS.md NAME FILE   replace the text between <!-- NAME:begin --> and
                                              <!-- NAME:end --> with FILE's (appended if absent)
    results.py machine                        one line: cores, CPU model, RAM, kernel, rustc, commit
    results.py meta                           the same as JSON
"""
import json
import os
import platform
import re
import subprocess
import sys


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def meta():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        mem_kib = int(open("/proc/meminfo").read().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    rev = sh("git rev-parse --short HEAD") or "unknown"
    dirty = len([l for l in sh("git status --porcelain").splitlines() if l.strip()])
    return {
        "date": sh("date -u +%Y-%m-%dT%H:%MZ"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gib": round(mem_kib / 1048576, 1),
        "kernel": platform.release(),
        "rustc": sh("rustc --version"),
        "commit": rev + ("-dirty" if dirty else ""),
        "dirty_files": dirty,
        "load": open("/proc/loadavg").read().split()[:3],
    }


def machine_line(m):
    return (f"{m['nproc']} cores ({m['cpu']}), {m['mem_gib']:g} GiB RAM, Linux {m['kernel']}, "
            f"{m['rustc']}, commit `{m['commit']}`")


def write_section(results, name, body):
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(results).read() if os.path.exists(results) else "# Benchmark results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    open(results, "w").write(text)


def main(argv):
    if len(argv) >= 2 and argv[1] == "section" and len(argv) == 5:
        write_section(argv[2], argv[3], open(argv[4]).read())
    elif len(argv) == 2 and argv[1] == "machine":
        print(machine_line(meta()))
    elif len(argv) == 2 and argv[1] == "meta":
        print(json.dumps(meta()))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
