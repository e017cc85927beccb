"""Who answers SSH, sampled while something runs: one thread per guest port, each probe a TCP
connection to 127.0.0.1:PORT that counts as up when the server's `SSH-` banner arrives.

A port counts as down from the start of a failing probe to the start of the last failing
probe of that run: sshd answering at a probe's start would have sent its banner at once, but
through QEMU's user-mode forward a probe begun while the guest was down can time out although
the guest came up meanwhile (measured: a probe from 10.9 s timed out at 13.9 s, while the
rollout had found that guest healthy and stopped the next one at 12.4 s). That is the time
each port was surely down; `most_down()` is the largest number of ports surely down at one
moment.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from types import TracebackType


def answers(port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4) == b"SSH-"
    except OSError:
        return False


def down_spans(rows: list[tuple[float, float, bool]]) -> list[tuple[float, float]]:
    """(first, last) start of each run of failing probes, from (start, end, up) probes in
    order."""
    spans: list[tuple[float, float]] = []
    opened: tuple[float, float] | None = None
    for start, _end, up in rows:
        if up:
            if opened is not None:
                spans.append(opened)
            opened = None
        else:
            opened = (opened[0] if opened else start, start)
    if opened is not None:
        spans.append(opened)
    return spans


def most_at_once(spans: Iterable[tuple[float, float]]) -> int:
    """The most spans (closed intervals) covering one moment."""
    spans = list(spans)
    return max((sum(a <= t <= b for a, b in spans) for t, _ in spans), default=0)


class Sampler:
    """`with Sampler(ports) as s: ...` then `s.most_down()`, `s.ever_down()`."""

    def __init__(self, ports: Iterable[int], interval: float = 0.2) -> None:
        self.ports = list(ports)
        self.interval = interval
        self.samples: dict[int, list[tuple[float, float, bool]]] = {p: [] for p in self.ports}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, args=(p,), daemon=True) for p in self.ports
        ]
        self._t0 = time.monotonic()

    def _watch(self, port: int) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            up = answers(port)
            self.samples[port].append((began, time.monotonic(), up))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def spans(self) -> dict[int, list[tuple[float, float]]]:
        return {p: down_spans(rows) for p, rows in self.samples.items()}

    def most_down(self) -> int:
        """The most ports surely down at one moment."""
        return most_at_once(s for spans in self.spans().values() for s in spans)

    def timeline(self) -> list[str]:
        """Each port's down spans in seconds from the start ("23001 down 0.7-8.1 s"), in
        order: for a failing assertion."""
        rows = [(a - self._t0, b - self._t0, p) for p, spans in self.spans().items()
                for a, b in spans]  # fmt: skip
        return [f"{p} down {a:.1f}-{b:.1f} s" for a, b, p in sorted(rows)]

    def ever_down(self) -> set[int]:
        return {p for p, spans in self.spans().items() if spans}
