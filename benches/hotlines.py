#!/usr/bin/env python3
"""Counts the code a command keeps hot: the distinct 64-byte code lines
executed by (nearly) every command, per object and per module function,
from a callgrind profile taken with instruction-level data.

    valgrind --tool=callgrind --dump-instr=yes --toggle-collect=call \
        --callgrind-out-file=/tmp/cg.acquire \
        redis-server --port 7802 --save '' --appendonly no \
        --loadmodule target/release/liblockwarden.so &
    redis-benchmark -p 7802 -n 5000 -c 4 -P 8 -r 100000000 \
        LOCK.ACQUIRE lock:__rand_int__ owner-host:1234:000000000000001 30000
    redis-cli -p 7802 shutdown nosave
    benches/hotlines.py /tmp/cg.acquire 5000 [target/release/liblockwarden.so]

(Valkey: `valkey-server` and `--toggle-collect=call`, the same.) A line is
hot when one of its instructions ran at least 80% as often as there were
commands. See benches/README.md, "Why (a) moved".
"""
import bisect
import collections
import re
import subprocess
import sys


def executions(path):
    """{object: {instruction address: times executed}}"""
    names, obj, addr, after_calls = {}, None, 0, False
    counts = collections.defaultdict(collections.Counter)
    pos = re.compile(r"^(0x[0-9a-f]+|[+-]\d+|\*)\s+\S+\s+(\d+)")
    for line in open(path):
        m = re.match(r"^(c?ob)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3)
            if m.group(1) == "ob":
                obj = names[m.group(2)]
            continue
        if line.startswith("calls="):
            after_calls = True
            continue
        m = pos.match(line)
        if not m:
            continue
        p = m.group(1)
        addr = int(p, 16) if p.startswith("0x") else addr if p == "*" else addr + int(p)
        if after_calls:  # the cost line of a call is inclusive: not this code
            after_calls = False
            continue
        c = counts[obj]
        c[addr] = max(c[addr], int(m.group(2)))
    return counts


def functions(module):
    out = subprocess.run(["nm", "-C", "--defined-only", module], capture_output=True, text=True).stdout
    table = sorted(
        (int(p[0], 16), p[2])
        for p in (l.split(" ", 2) for l in out.splitlines())
        if len(p) == 3 and p[1] in "tTwW"
    )
    return [a for a, _ in table], [n for _, n in table]


def main():
    path, commands = sys.argv[1], int(sys.argv[2])
    module = sys.argv[3] if len(sys.argv) > 3 else None
    threshold = 0.8 * commands
    hot = {
        obj: {a for a, n in c.items() if n >= threshold}
        for obj, c in executions(path).items()
    }
    print(f"hot 64-byte code lines: {sum(len({a // 64 for a in s}) for s in hot.values())}")
    for obj, addrs in sorted(hot.items(), key=lambda kv: -len(kv[1])):
        lines = {a // 64 for a in addrs}
        if lines:
            print(f"{len(lines):6} {obj}")
    if module:
        starts, names = functions(module)
        per = collections.defaultdict(set)
        for obj, addrs in hot.items():
            if obj and obj.endswith(module.split("/")[-1]):
                for a in addrs:
                    i = bisect.bisect_right(starts, a) - 1
                    per[names[i] if i >= 0 else "?"].add(a // 64)
        print("module functions:")
        for name, lines in sorted(per.items(), key=lambda kv: -len(kv[1])):
            print(f"{len(lines):6} {name[:100]}")


if __name__ == "__main__":
    main()
