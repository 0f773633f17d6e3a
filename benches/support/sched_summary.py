"""Summarises `perf sched timehist` (stdin) for tail_probe.sh: the proxy's threads (argv[2] = pid)
against everything else that ran on the recorded CPU. Prints key=value pairs:
  wait_max_ms   the proxy's main thread's worst scheduling delay (runnable, not running)
  waits_over_1ms  how many times it waited more than 1 ms
  others_ms     CPU time other tasks (not idle), the proxy's other threads included, took on that CPU
  top_other     the task that took most of it (name:ms)
"""
import collections
import re
import sys

pid = sys.argv[2]
row = re.compile(r"^\s*\d+\.\d+\s+\[\d+\]\s+(\S.*?)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")
wait_max = 0.0
waits = 0
others = collections.Counter()
for line in sys.stdin:
    m = row.match(line)
    if not m:
        continue
    name, tid, tpid, _wait, delay, run = m.groups()
    delay, run = float(delay), float(run)
    if tid == pid:  # the proxy's main thread (its event loop)
        wait_max = max(wait_max, delay)
        waits += delay > 1.0
    elif not name.startswith("<idle>"):
        others[name] += run
top = others.most_common(1)
top = f"{top[0][0]}:{top[0][1]:.1f}" if top else "-"
print(f"wait_max_ms={wait_max:.2f} waits_over_1ms={waits} others_ms={sum(others.values()):.1f}", file=sys.stdout)
print(f"top_other={top} (of: {', '.join(f'{n}:{t:.1f}' for n, t in others.most_common(4))})", file=sys.stderr)
