"""ssh.await_banner: noticing a guest's sshd with overlapping plain-socket probes, against
real local listeners that behave as QEMU's user networking does before and after the guest's
sshd is up (accept and hold, accept and close, answer)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from sigvirt.hosts import ssh

pytestmark = pytest.mark.offline


class Listener(threading.Thread):
    """A loopback listener that treats each accepted connection as `behave(n)` says (n counts
    connections from 0): "hold" (accept and say nothing, as slirp does while the guest doesn't
    answer), "close" (a closed port), "banner", or "slow" (the banner 2.5 s later)."""

    def __init__(self, behave: Callable[[int], str]) -> None:
        super().__init__(daemon=True)
        self.behave = behave
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = 0
        self.slow = 0  # connections that reached the slow sshd
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            what = self.behave(self.accepted)
            self.accepted += 1
            if what == "banner":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
                self.held.append(conn)
            elif what == "hold":
                self.held.append(conn)
            elif what == "slow":  # OpenSSH under TCG: re-executes itself before its banner
                self.held.append(conn)
                self.slow += 1
                timer = threading.Timer(2.5, self._banner, (conn,))
                timer.daemon = True
                timer.start()
            else:
                conn.close()

    @staticmethod
    def _banner(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join()
        for conn in self.held:
            conn.close()
        self.server.close()


@pytest.fixture
def listen() -> Iterator[Callable[[Callable[[int], str]], Listener]]:
    made: list[Listener] = []

    def start(behave: Callable[[int], str]) -> Listener:
        lst = Listener(behave)
        lst.start()
        made.append(lst)
        return lst

    yield start
    for lst in made:
        lst.stop()


def test_a_banner_is_seen_at_once(listen: Callable[[Callable[[int], str]], Listener]) -> None:
    lst = listen(lambda n: "banner")
    t0 = time.monotonic()
    assert ssh.await_banner("127.0.0.1", lst.port, 5.0)
    assert time.monotonic() - t0 < 1.0


def test_held_connections_do_not_hide_a_guest_that_comes_up(
    listen: Callable[[Callable[[int], str]], Listener],
) -> None:
    # slirp holds the first connections; a later one reaches sshd. One socket held for the
    # whole wait would never see it: the probes overlap, a fresh one every PROBE_EVERY.
    up_at = time.monotonic() + 1.5
    lst = listen(lambda n: "banner" if time.monotonic() >= up_at else "hold")
    assert ssh.await_banner("127.0.0.1", lst.port, 10.0)
    late = time.monotonic() - up_at
    assert 0 <= late < ssh.PROBE_EVERY + 0.5, f"seen {late:.2f}s after sshd came up"
    assert lst.accepted >= 1.5 / ssh.PROBE_EVERY - 2  # probes kept coming while held


def test_closed_and_refused_connections_are_not_a_banner(
    listen: Callable[[Callable[[int], str]], Listener],
) -> None:
    lst = listen(lambda n: "close")
    t0 = time.monotonic()
    assert not ssh.await_banner("127.0.0.1", lst.port, 1.0)
    assert 0.9 < time.monotonic() - t0 < 2.0
    assert lst.accepted >= 3
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now: every probe is refused
    assert not ssh.await_banner("127.0.0.1", port, 0.6)


def test_a_guest_that_stopped_ends_the_wait(
    listen: Callable[[Callable[[int], str]], Listener],
) -> None:
    lst = listen(lambda n: "hold")
    t0 = time.monotonic()
    asked = [0]

    def still_booting() -> bool:
        asked[0] += 1
        return asked[0] < 2

    assert not ssh.await_banner("127.0.0.1", lst.port, 30.0, still_booting)
    assert time.monotonic() - t0 < 2.5


def test_no_socket_outlives_the_wait(listen: Callable[[Callable[[int], str]], Listener]) -> None:
    before = len(os.listdir("/proc/self/fd"))
    lst = listen(lambda n: "hold")
    assert not ssh.await_banner("127.0.0.1", lst.port, 1.2)
    assert lst.accepted >= 3
    lst.stop()  # its own ends of the held connections
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_slow_sshd_gets_one_patient_probe_not_a_spray(
    listen: Callable[[Callable[[int], str]], Listener],
) -> None:
    # The guest answers TCP (its port closed: EOF) before sshd listens; then sshd takes 2.5 s
    # to send its banner. The wait must hold a probe that long, and only one at a time.
    up_at = time.monotonic() + 1.0
    lst = listen(lambda n: "slow" if time.monotonic() >= up_at else "close")
    assert ssh.await_banner("127.0.0.1", lst.port, 10.0)
    assert time.monotonic() - up_at < 2.5 + ssh.PROBE_EVERY + 0.5
    assert lst.slow == 1, f"{lst.slow} connections reached the slow sshd"


def test_waiting_on_a_guest_that_does_not_answer_costs_little_cpu(
    listen: Callable[[Callable[[int], str]], Listener],
) -> None:
    # every probe held (a guest not reachable yet): the probe budget is full most of the time,
    # and the wait must sleep then, not spin (the CPU is the booting guests')
    lst = listen(lambda n: "hold")
    cpu = time.process_time()
    assert not ssh.await_banner("127.0.0.1", lst.port, 3.0)
    assert time.process_time() - cpu < 0.3
    assert lst.accepted >= 5


def test_only_the_patient_probe_asks_while_the_guest_is_known_not_to_answer(
    listen: Callable[[Callable[[int], str]], Listener],
) -> None:
    # Every probe given up is retried by slirp and reaches sshd later for nothing: for the
    # first dense_after seconds (a scale set's later boots) one probe, then dense ones.
    up_at = time.monotonic() + 1.6
    lst = listen(lambda n: "banner" if time.monotonic() >= up_at else "hold")
    sparse = 1.5
    counted: list[int] = []
    t0 = time.monotonic()
    threading.Timer(sparse - 0.1, lambda: counted.append(lst.accepted)).start()
    assert ssh.await_banner("127.0.0.1", lst.port, 10.0, dense_after=sparse)
    assert counted == [1], f"{counted} connections during the sparse window"
    late = time.monotonic() - max(up_at, t0 + sparse)
    assert 0 <= late < ssh.PROBE_EVERY + 0.5, f"seen {late:.2f}s after sshd came up"
