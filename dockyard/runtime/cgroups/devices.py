"""cgroup v2 device control: OCI device rules as a BPF_PROG_TYPE_CGROUP_DEVICE program.

cgroup v2 has no ``devices.allow``; the kernel instead runs BPF programs
attached to the cgroup (BPF_CGROUP_DEVICE) for every open and mknod of a
device node. The rules are first run through the v1 ``Emulator`` so the
program gives the verdicts v1 would; the program then tests the exceptions
one after the other and returns the default when none matches.

The program sees ``struct bpf_cgroup_dev_ctx { u32 access_type; u32 major;
u32 minor; }`` in r1, where ``access_type`` is ``(access << 16) | type``.

Imported only when a v2 cgroup gets device rules: it loads ctypes and struct.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import struct

from dockyard.errors import SystemFailure
from dockyard.runtime.cgroups.device_rules import ACC_ALL, DeviceRule, Emulator, emulate
from dockyard.runtime.cgroups.files import strerror

DEV_BLOCK = 1  # BPF_DEVCG_DEV_BLOCK
DEV_CHAR = 2  # BPF_DEVCG_DEV_CHAR

# Instruction classes, operations and sources (linux/bpf_common.h, linux/bpf.h).
_LDX, _ALU, _JMP = 0x01, 0x04, 0x05
_W, _MEM = 0x00, 0x60
_K, _X = 0x00, 0x08
_AND, _RSH, _MOV = 0x50, 0x70, 0xB0
_JEQ, _JSET, _JNE, _EXIT = 0x10, 0x40, 0x50, 0x90

LDXW = _LDX | _MEM | _W  # dst = *(u32 *)(src + off)
AND32 = _ALU | _AND | _K  # dst &= imm (32 bit)
RSH32 = _ALU | _RSH | _K  # dst >>= imm (32 bit)
MOV32 = _ALU | _MOV | _K  # dst = imm (32 bit)
MOV32_REG = _ALU | _MOV | _X  # dst = src (32 bit)
JEQ = _JMP | _JEQ | _K  # if dst == imm: pc += off
JNE = _JMP | _JNE | _K  # if dst != imm: pc += off
JSET = _JMP | _JSET | _K  # if dst & imm: pc += off
EXIT = _JMP | _EXIT

R0, R1, R2, R3, R4, R5 = range(6)


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One ``struct bpf_insn`` (little-endian: dst_reg in the low nibble)."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _exception_block(kind: str, major: int, minor: int, bits: int, default_allow: bool) -> bytes:
    """Return ``not default`` when the access matches this exception, else fall through."""
    tests: list[tuple[int, int, int, int]] = [(JNE, R2, 0, DEV_CHAR if kind == "c" else DEV_BLOCK)]
    if bits != ACC_ALL:
        if default_allow:
            # A deny exception matches when the access asks for any of its bits.
            tests += [(MOV32_REG, R1, R3, 0), (AND32, R1, 0, bits), (JEQ, R1, 0, 0)]
        else:
            # An allow exception matches only when it covers every bit asked for.
            tests.append((JSET, R3, 0, ACC_ALL & ~bits))
    if major >= 0:
        tests.append((JNE, R4, 0, major))
    if minor >= 0:
        tests.append((JNE, R5, 0, minor))
    verdict = [insn(MOV32, R0, imm=0 if default_allow else 1), insn(EXIT)]
    out = []
    for i, (code, dst, src, imm) in enumerate(tests):
        if code in (MOV32_REG, AND32):
            out.append(insn(code, dst, src, imm=imm))
        else:
            # Jump over the remaining tests and the verdict to the next block.
            out.append(insn(code, dst, off=len(tests) - i - 1 + len(verdict), imm=imm))
    return b"".join(out + verdict)


def compile_emulator(emu: Emulator) -> bytes:
    prologue = [
        insn(LDXW, R2, R1, 0),
        insn(AND32, R2, imm=0xFFFF),  # r2 = device type
        insn(LDXW, R3, R1, 0),
        insn(RSH32, R3, imm=16),  # r3 = access requested
        insn(LDXW, R4, R1, 4),  # r4 = major
        insn(LDXW, R5, R1, 8),  # r5 = minor
    ]
    blocks = [
        _exception_block(kind, major, minor, bits, emu.default_allow)
        for (kind, major, minor), bits in emu.exceptions.items()
    ]
    epilogue = [insn(MOV32, R0, imm=1 if emu.default_allow else 0), insn(EXIT)]
    return b"".join(prologue + blocks + epilogue)


def compile_rules(rules: list[DeviceRule]) -> bytes:
    """The BPF program (raw ``bpf_insn`` array) enforcing ``rules`` as v1 would."""
    return compile_emulator(emulate(rules))


# bpf(2)
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
_ATTR_SIZE = 128  # larger than every command's part of union bpf_attr that we fill
_LICENSE = b"Apache\0"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf: unsupported architecture {os.uname().machine}")
    ret = _libc.syscall(
        ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(ctypes.sizeof(attr))
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def load(program: bytes) -> int:
    """BPF_PROG_LOAD; returns the program's fd. The verifier's log goes into errors."""
    code = ctypes.create_string_buffer(program, len(program))
    license = ctypes.create_string_buffer(_LICENSE, len(_LICENSE))
    log = ctypes.create_string_buffer(65536)

    def attempt(log_level: int) -> int:
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into(
            "<IIQQIIQII16s",
            attr,
            0,
            BPF_PROG_TYPE_CGROUP_DEVICE,
            len(program) // 8,
            ctypes.addressof(code),
            ctypes.addressof(license),
            log_level,
            len(log) if log_level else 0,
            ctypes.addressof(log) if log_level else 0,
            0,
            0,
            b"dockyard_dev",
        )
        return _bpf(BPF_PROG_LOAD, attr)

    try:
        return attempt(0)
    except OSError as e:
        if e.errno == errno.EPERM:
            # Before 5.11 BPF memory counts against RLIMIT_MEMLOCK: raise it to the hard limit.
            soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            if soft != hard:
                try:
                    resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
                    return attempt(0)
                except (OSError, ValueError):
                    pass
        try:
            return attempt(1)
        except OSError as e2:
            detail = log.value.decode(errors="replace").strip().replace("\n", "; ")
            msg = f"load device filter program: {strerror(e2)}"
            raise SystemFailure(msg + (f" (verifier: {detail})" if detail else "")) from e


def query(cgroup_fd: int) -> tuple[list[int], int]:
    """The ids of the device programs attached to the cgroup, and their attach flags."""
    count = 64
    while True:
        ids = (ctypes.c_uint32 * count)()
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into(
            "<IIIIQI", attr, 0, cgroup_fd, BPF_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), count
        )
        try:
            _bpf(BPF_PROG_QUERY, attr)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                count = struct.unpack_from("<I", attr, 24)[0]
                continue
            raise
        flags, _, got = struct.unpack_from("<IQI", attr, 12)
        return list(ids[:got]), flags


def _prog_fd(prog_id: int) -> int:
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<I", attr, 0, prog_id)
    return _bpf(BPF_PROG_GET_FD_BY_ID, attr)


def _attach_op(cmd: int, cgroup_fd: int, prog_fd: int, flags: int) -> None:
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<IIII", attr, 0, cgroup_fd, prog_fd, BPF_CGROUP_DEVICE, flags)
    _bpf(cmd, attr)


def attach(cgroup_dir: str, program: bytes) -> None:
    """Load ``program`` and make it the cgroup's only device filter.

    It is attached with BPF_F_ALLOW_MULTI, so that cgroups below may add
    their own filters (nested containers), and then the filters attached
    before it are detached: during the swap both apply, never neither.
    """
    try:
        dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise SystemFailure(f"open cgroup {cgroup_dir}: {strerror(e)}") from e
    prog_fd = -1
    try:
        try:
            old_ids, old_flags = query(dir_fd)
        except OSError as e:
            raise SystemFailure(f"query device filters of {cgroup_dir}: {strerror(e)}") from e
        prog_fd = load(program)
        flags = BPF_F_ALLOW_MULTI
        if old_ids and not old_flags & BPF_F_ALLOW_MULTI:
            # A filter attached in single mode is replaced by attaching in that mode.
            flags, old_ids = old_flags, []
        try:
            _attach_op(BPF_PROG_ATTACH, dir_fd, prog_fd, flags)
        except OSError as e:
            raise SystemFailure(f"attach device filter to {cgroup_dir}: {strerror(e)}") from e
        for prog_id in old_ids:
            try:
                old_fd = _prog_fd(prog_id)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    continue
                raise SystemFailure(
                    f"detach old device filter {prog_id} from {cgroup_dir}: {strerror(e)}"
                ) from e
            try:
                _attach_op(BPF_PROG_DETACH, dir_fd, old_fd, 0)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise SystemFailure(
                        f"detach old device filter {prog_id} from {cgroup_dir}: {strerror(e)}"
                    ) from e
            finally:
                os.close(old_fd)
    finally:
        if prog_fd >= 0:
            os.close(prog_fd)
        os.close(dir_fd)
