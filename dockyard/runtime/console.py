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
