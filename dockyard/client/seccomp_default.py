"""Docker's default seccomp profile, as data.

The profile Docker applies to every container that is neither privileged nor
given a profile of its own (moby's ``profiles/seccomp``, as of Docker 29.7).
It is an allow-list: a syscall that no rule lets through fails with EPERM.
Some rules hold only on some architectures, with some capabilities in the
container's bounding set, or from some kernel version on; ``oci.seccomp_profile``
turns this data into the ``linux.seccomp`` section of a runtime config for one
architecture and one capability set.

Architectures are named as libseccomp names them natively (``amd64``, ``x86``,
``x32``, ``arm``, ``arm64``, ``s390x``, ...), which is what the rules' arch
conditions use; capabilities as in the runtime spec (``CAP_SYS_ADMIN``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_ACTION = "SCMP_ACT_ERRNO"
# EPERM: what a process sees for a syscall its capabilities do not allow,
# rather than ENOSYS, which would make libraries fall back to older calls.
DEFAULT_ERRNO_RET = 1

# The filter of the native architecture also accepts these compat ABIs
# (32-bit binaries on a 64-bit kernel); keyed by the native SCMP_ARCH_*.
SUB_ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "SCMP_ARCH_X86_64": ("SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "SCMP_ARCH_AARCH64": ("SCMP_ARCH_ARM",),
    "SCMP_ARCH_MIPS64": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"),
    "SCMP_ARCH_MIPS64N32": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"),
    "SCMP_ARCH_MIPSEL64": ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"),
    "SCMP_ARCH_MIPSEL64N32": ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"),
    "SCMP_ARCH_S390X": ("SCMP_ARCH_S390",),
    "SCMP_ARCH_RISCV64": (),
    "SCMP_ARCH_LOONGARCH64": (),
}


@dataclass(frozen=True)
class Arg:
    """A condition on one syscall argument (config-linux.md "Seccomp" args)."""

    index: int
    value: int
    op: str

    def to_spec(self) -> dict[str, Any]:
        return {"index": self.index, "value": self.value, "op": self.op}


class Rule:
    """Syscalls with one action, and the conditions under which the rule applies.

    ``arches``/``caps``/``min_kernel`` must all hold for the rule to apply
    (every listed capability in the bounding set, the architecture among
    ``arches``); ``unless_arches``/``unless_caps`` drop the rule when the
    architecture is listed or any listed capability is held.
    """

    __slots__ = (
        "action",
        "arches",
        "args",
        "caps",
        "errno_ret",
        "min_kernel",
        "names",
        "unless_arches",
        "unless_caps",
    )

    def __init__(
        self,
        names: str,
        *,
        action: str = "SCMP_ACT_ALLOW",
        errno_ret: int | None = None,
        args: tuple[Arg, ...] = (),
        arches: tuple[str, ...] = (),
        caps: tuple[str, ...] = (),
        min_kernel: tuple[int, int] | None = None,
        unless_arches: tuple[str, ...] = (),
        unless_caps: tuple[str, ...] = (),
    ) -> None:
        self.names = tuple(names.split())
        self.action = action
        self.errno_ret = errno_ret
        self.args = args
        self.arches = arches
        self.caps = caps
        self.min_kernel = min_kernel
        self.unless_arches = unless_arches
        self.unless_caps = unless_caps

    def applies(self, arch: str, caps: frozenset[str], kernel: tuple[int, int]) -> bool:
        if self.unless_arches and arch in self.unless_arches:
            return False
        if any(c in caps for c in self.unless_caps):
            return False
        if self.arches and arch not in self.arches:
            return False
        if not all(c in caps for c in self.caps):
            return False
        return self.min_kernel is None or kernel >= self.min_kernel


# clone(2) flags a container without CAP_SYS_ADMIN may not pass: every
# CLONE_NEW* namespace flag (NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
# NEWNET), which would let it build namespaces of its own.
CLONE_NAMESPACE_FLAGS = 0x7E020000

# socket(2) address families refused: AF_ALG (38), the kernel crypto API, and
# AF_VSOCK (40), a way out to the hypervisor or host. The rules allow the rest.
AF_ALG = 38
AF_VSOCK = 40

# personality(2) values allowed: PER_LINUX, PER_LINUX32, UNAME26,
# PER_LINUX32|UNAME26, and 0xffffffff (a query that changes nothing).
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

_ALWAYS = """
    _llseek _newselect accept accept4 access adjtimex alarm bind brk cachestat capget capset
    chdir chmod chown chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64
    clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range
    connect copy_file_range creat dup dup2 dup3

    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
    epoll_wait_old eventfd eventfd2 execve execveat exit exit_group

    faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat
    fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork
    fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
    ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat

    get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid getegid32
    geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid
    getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32
    getrlimit getrusage getsid getsockname getsockopt gettid gettimeofday getuid getuid32
    getxattr getxattrat

    inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy
    io_getevents io_pgetevents io_pgetevents_time64 io_setup io_submit ioctl ioprio_get
    ioprio_set ipc kill

    landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr
    link linkat listen listmount listxattr listxattrat llistxattr lremovexattr lseek lsetxattr
    lstat lstat64

    madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod
    mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open
    mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap
    mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap

    name_to_handle_at nanosleep newfstatat open openat openat2 pause pidfd_open
    pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64
    prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64
    pwritev pwritev2

    read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
    remap_file_pages removexattr removexattrat rename renameat renameat2 restart_syscall
    riscv_hwprobe rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
    rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo

    sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr
    sched_getparam sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
    sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp
    select semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg
    sendmsg sendto set_robust_list set_thread_area set_tid_address setfsgid setfsgid32
    setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
    setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
    setrlimit setsid setsockopt setuid setuid32 setxattr setxattrat shmat shmctl shmdt shmget
    shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice
    stat stat64 statfs statfs64 statmount statx symlink symlinkat sync sync_file_range syncfs
    sysinfo

    tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
    timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64
    timerfd_settime timerfd_settime64 times tkill truncate truncate64

    ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat utimensat_time64 utimes
    vfork vmsplice wait4 waitid waitpid write writev
"""

_S390 = ("s390", "s390x")

# In the order of the profile: the runtime adds rules to the filter in this
# order, and the syscall names of one rule in theirs.
RULES: tuple[Rule, ...] = (
    Rule(_ALWAYS),
    # Reading another process's memory leaked ASLR through ptrace before 4.8.
    Rule("process_vm_readv process_vm_writev ptrace", min_kernel=(4, 8)),
    Rule("socket", args=(Arg(0, AF_ALG, "SCMP_CMP_LT"),)),
    Rule("socket", args=(Arg(0, AF_ALG + 1, "SCMP_CMP_EQ"),)),  # AF_NFC (39)
    Rule("socket", args=(Arg(0, AF_VSOCK, "SCMP_CMP_GT"),)),
    *(Rule("personality", args=(Arg(0, p, "SCMP_CMP_EQ"),)) for p in PERSONALITIES),
    # Calls that exist on one architecture only.
    Rule("sync_file_range2 swapcontext", arches=("ppc64le",)),
    Rule(
        "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls",
        arches=("arm", "arm64"),
    ),
    Rule("arch_prctl", arches=("amd64", "x32")),
    Rule("modify_ldt", arches=("amd64", "x32", "x86")),
    Rule("s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr", arches=_S390),
    Rule("riscv_flush_icache", arches=("riscv64",)),
    # Calls that the kernel would refuse anyway without the capability; with
    # it, the filter lets them through.
    Rule("open_by_handle_at", caps=("CAP_DAC_READ_SEARCH",)),
    Rule(
        """
        bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie
        lsm_get_self_attr lsm_list_modules lsm_set_self_attr mount mount_setattr move_mount
        open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname setns syslog
        umount umount2 unshare
        """,
        caps=("CAP_SYS_ADMIN",),
    ),
    # Without CAP_SYS_ADMIN, clone may not create namespaces; s390 passes the
    # flags as the second argument.
    Rule(
        "clone",
        args=(Arg(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ"),),
        unless_caps=("CAP_SYS_ADMIN",),
        unless_arches=_S390,
    ),
    Rule(
        "clone",
        args=(Arg(1, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ"),),
        arches=_S390,
        unless_caps=("CAP_SYS_ADMIN",),
    ),
    # clone3 passes its flags in memory, out of the filter's sight: ENOSYS
    # makes libc fall back to clone, whose flags the rule above checks.
    Rule("clone3", action="SCMP_ACT_ERRNO", errno_ret=38, unless_caps=("CAP_SYS_ADMIN",)),
    Rule("reboot", caps=("CAP_SYS_BOOT",)),
    Rule("chroot", caps=("CAP_SYS_CHROOT",)),
    Rule("delete_module init_module finit_module", caps=("CAP_SYS_MODULE",)),
    Rule("acct", caps=("CAP_SYS_PACCT",)),
    Rule(
        "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
        caps=("CAP_SYS_PTRACE",),
    ),
    Rule("iopl ioperm", caps=("CAP_SYS_RAWIO",)),
    Rule("settimeofday stime clock_settime clock_settime64", caps=("CAP_SYS_TIME",)),
    Rule("vhangup", caps=("CAP_SYS_TTY_CONFIG",)),
    Rule("get_mempolicy mbind set_mempolicy set_mempolicy_home_node", caps=("CAP_SYS_NICE",)),
    Rule("syslog", caps=("CAP_SYSLOG",)),
    Rule("bpf", caps=("CAP_BPF",)),
    Rule("perf_event_open", caps=("CAP_PERFMON",)),
)
