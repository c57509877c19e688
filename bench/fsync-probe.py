#!/usr/bin/env python3
"""How long a small log sync waits while the disk takes a bulk write (docs/performance.md, "Stalls").

One thread appends 200-byte records to a journal file and fdatasyncs each (a Raft log append);
another writes 64 MiB files in 1 MiB writes (a flush or compaction writing a table) and syncs
them every SYNC_MIB MiB (64: once per file, as an LSM table is synced when it is complete).
Prints the journal syncs' latency distribution. Run it on the disk a node's data lives on:

    python3 bench/fsync-probe.py DIR [SECONDS] [SYNC_MIB ...]

e.g. `python3 bench/fsync-probe.py /var/lib/tunekv 20 64 16 8` compares three sync intervals;
`0` runs the journal alone (no bulk writer). It writes at most 4 × 64 MiB in DIR and removes it.
"""
import os
import sys
import threading
import time


def run(d, secs, sync_mib):
    stop = threading.Event()

    def bulk():
        buf = os.urandom(1 << 20)
        i = 0
        while not stop.is_set():
            fd = os.open(f"{d}/probe-bulk{i % 4}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            for n in range(64):
                os.write(fd, buf)
                if (n + 1) % sync_mib == 0:
                    os.fdatasync(fd)
                if stop.is_set():
                    break
            os.fsync(fd)
            os.close(fd)
            i += 1

    t = threading.Thread(target=bulk)
    if sync_mib > 0:
        t.start()
    fd = os.open(f"{d}/probe-journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC)
    lat = []
    end = time.time() + secs
    while time.time() < end:
        os.write(fd, b"x" * 200)
        t0 = time.perf_counter()
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t0)
    stop.set()
    if sync_mib > 0:
        t.join()
    os.close(fd)
    for name in os.listdir(d):
        if name.startswith("probe-"):
            os.remove(os.path.join(d, name))
    lat.sort()
    n = len(lat)

    def q(p):
        return lat[min(n - 1, int(p * n))] * 1000

    what = "journal alone" if sync_mib == 0 else f"bulk synced every {sync_mib} MiB"
    print(
        f"{what:32} {n:6} syncs  p50 {q(.5):7.2f} ms  p99 {q(.99):7.2f} ms  "
        f"p99.9 {q(.999):7.2f} ms  max {lat[-1] * 1000:7.1f} ms  >=100 ms: {sum(x >= .1 for x in lat)}"
    )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 20
    for mib in [int(a) for a in sys.argv[3:]] or [0, 64, 8]:
        run(sys.argv[1], secs, mib)
