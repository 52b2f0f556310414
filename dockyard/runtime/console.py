"""The container's terminal: a pty opened inside it, master sent to --console-socket.

As with runc, the runtime connects to the console socket on the host and the
process inside the container opens /dev/ptmx of its own devpts, sends the
master over that connection with SCM_RIGHTS, and makes the slave its
controlling terminal and stdio.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
import termios

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# <asm-generic/ioctls.h>; not exported by the termios module
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431


def setup_console(console_fd: int, size: dict[str, Any] | None) -> None:
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"))[0]
    slave_path = f"/dev/pts/{n}"
    slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
    if size:
        winsize = struct.pack("HHHH", int(size.get("height", 0)), int(size.get("width", 0)), 0, 0)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize)
    sock = socket.socket(fileno=console_fd)
    try:
        sock.sendmsg(
            [slave_path.encode()],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [master]).tobytes())],
        )
    finally:
        sock.close()
        os.close(master)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def connect(path: str) -> int:
    """Connect to the console socket on the host; the fd goes to the container process."""
    from dockyard.errors import SystemFailure

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        s.close()
        raise SystemFailure(
            f"connect to console socket {path}: {os.strerror(e.errno or 0).lower()}"
        ) from None
    return s.detach()


class TerminalProxy:
    """The foreground ``run``'s side of a container pty: receive the master, copy.

    Our stdin goes to the master, the master's output to our stdout; if our
    stdin is a terminal it is put in raw mode (restored at the end) and its
    size follows SIGWINCH.
    """

    def __init__(self) -> None:
        self.local, remote = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.remote_fd = remote.detach()
        self.master = -1
        self.saved: list[Any] | None = None
        self.threads: list[Any] = []

    def receive_master(self) -> None:
        os.close(self.remote_fd)
        self.remote_fd = -1
        fds = array.array("i")
        _, anc, _, _ = self.local.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        if not fds:
            from dockyard.errors import SystemFailure

            raise SystemFailure("terminal: the container did not send its pty")
        self.master = fds[0]
        self.local.close()
        if os.isatty(0):
            self._resize()  # before start: the program may ask at once

    def start(self, pid: int) -> None:
        import signal
        import threading

        if os.isatty(0):
            import tty

            self.saved = termios.tcgetattr(0)
            tty.setraw(0)
            signal.signal(signal.SIGWINCH, lambda *_: self._resize())
        for src, dst in ((self.master, 1), (0, self.master)):
            t = threading.Thread(target=_copy, args=(src, dst), daemon=True)
            t.start()
            self.threads.append(t)

    def _resize(self) -> None:
        try:
            size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
        except OSError:
            pass

    def serve(self, pid: int) -> int:
        """Copy until ``pid`` exits, signals forwarded to it; its exit code.
        The terminal is restored and the proxy closed, also on failure."""
        from dockyard.runtime.children import wait_forwarding_signals

        try:
            self.start(pid)
            code = wait_forwarding_signals(pid)
            # the output thread ends when the pty's last user closes it
            self.threads[0].join(timeout=2)
        finally:
            self.close()
        return code

    def close(self) -> None:
        if self.saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, self.saved)
            self.saved = None
        for fd in (self.remote_fd, self.master):
            if fd >= 0:
                os.close(fd)
        self.remote_fd = self.master = -1
        self.local.close()


def _copy(src: int, dst: int) -> None:
    while True:
        try:
            data = os.read(src, 65536)
        except OSError:
            return
        if not data:
            return
        try:
            os.write(dst, data)
        except OSError:
            return
