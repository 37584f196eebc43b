"""Peak resident memory of a process tree: this process and every process it started, added up.

A single process's ru_maxrss says nothing about an ingest spread over worker processes, and adding up each
process's own peak overstates it (they peak at different times). So the tree is sampled: its processes are
listed every half second and their resident sizes read every 20 ms (Linux /proc).

Two sums: `mb`, the memory the tree occupies, shared pages counted once (each process's proportional set size,
Linux PSS: the libraries every worker maps, ~90 MB of pyarrow, delta-rs and librdkafka, are resident once);
and `rss_sum_mb`, the plain sum of resident sizes, which counts those pages once per process. PSS is costly
to read (the kernel walks the page tables), so it is read only when the cheap resident sum reaches a new peak by
more than PSS_STEP_BYTES.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")
# PSS is read again once the resident sum grew this much since the last read: reading it at every new peak
# (most samples while workers grow) cost the sampled processes ~6% of their speed (the kernel walks their page
# tables under their memory lock). The PSS peak is so exact to within this step.
PSS_STEP_BYTES = 8 << 20


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        parent = int(stat[stat.rindex(")") + 2:].split()[1])  # the name in parentheses may hold spaces
        children.setdefault(parent, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    children = _children_by_parent()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _resident_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _proportional_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return _resident_bytes(pid)  # no smaps_rollup (kernels before 4.14): the plain resident size


class PeakTreeRss:
    """`with PeakTreeRss() as peak: ...` then `peak.mb` (shared pages once) and `peak.rss_sum_mb`: the largest
    sums seen while the block ran."""

    def __init__(self, sample_s: float = 0.02, relist_s: float = 0.5):
        self.sample_s, self.relist_s = sample_s, relist_s
        self.peak_bytes = 0  # proportional (PSS) sum
        self.peak_rss_sum_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    @property
    def mb(self) -> int:
        return round(self.peak_bytes / 2**20)

    @property
    def rss_sum_mb(self) -> int:
        return round(self.peak_rss_sum_bytes / 2**20)

    def _run(self) -> None:
        root, pids, listed = os.getpid(), [os.getpid()], 0.0
        pss_read_at = -PSS_STEP_BYTES - 1  # the resident sum when PSS was last read
        while not self._stop.is_set():
            if time.monotonic() - listed > self.relist_s:
                pids, listed = process_tree(root), time.monotonic()
            resident = sum(map(_resident_bytes, pids))
            self.peak_rss_sum_bytes = max(self.peak_rss_sum_bytes, resident)
            if resident > pss_read_at + PSS_STEP_BYTES:
                pss_read_at = resident
                self.peak_bytes = max(self.peak_bytes, sum(map(_proportional_bytes, pids)))
            self._stop.wait(self.sample_s)

    def __enter__(self) -> PeakTreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
