"""config.json loading and validation, and the default spec (no root needed)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dockyard
from dockyard.errors import ConfigError, InvalidArgument
from dockyard.spec import runtime as spec
from dockyard.spec.runtime import (
    CAPABILITIES,
    OCI_VERSION,
    RLIMITS,
    default_spec,
    load_bundle_config,
    rootfs_path,
    validate_config,
)

Mutation = Callable[[dict[str, Any]], None]
DELETE = object()


def full_config() -> dict[str, Any]:
    """A valid config that sets every section the validator knows."""
    return {
        "ociVersion": "1.2.0",
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "box",
        "domainname": "example.test",
        "process": {
            "terminal": True,
            "consoleSize": {"height": 24, "width": 80},
            "user": {"uid": 1000, "gid": 1000, "umask": 0o22, "additionalGids": [5, 100]},
            "args": ["/bin/sh", "-c", "true"],
            "env": ["PATH=/usr/bin:/bin", "EMPTY=", "TERM=xterm"],
            "cwd": "/home",
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_CHECKPOINT_RESTORE"],
                "effective": ["CAP_KILL", "CAP_CHOWN"],
                "inheritable": [],
                "permitted": ["CAP_KILL", "CAP_CHOWN"],
                "ambient": ["CAP_KILL"],
            },
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096},
                {"type": "RLIMIT_CORE", "soft": 2**64 - 1, "hard": 2**64 - 1},
            ],
            "noNewPrivileges": True,
            "oomScoreAdj": -500,
            "apparmorProfile": "unconfined",
            "selinuxLabel": "system_u:system_r:container_t:s0",
            "ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 4},
            "scheduler": {"policy": "SCHED_OTHER", "nice": 5, "flags": ["SCHED_FLAG_RECLAIM"]},
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
            {"destination": "/data", "type": "none", "source": "data", "options": ["rbind"]},
            {
                "destination": "/mapped",
                "type": "none",
                "source": "/srv/mapped",
                "options": ["rbind", "idmap"],
                "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            },
        ],
        "hooks": {
            "prestart": [{"path": "/usr/bin/setup", "args": ["setup", "-x"], "env": ["A=1"]}],
            "createRuntime": [{"path": "/usr/bin/net", "timeout": 5}],
            "createContainer": [{"path": "/bin/true"}],
            "startContainer": [{"path": "/bin/true"}],
            "poststart": [{"path": "/bin/true"}],
            "poststop": [{"path": "/usr/bin/cleanup", "args": ["cleanup"]}],
        },
        "annotations": {"com.example.key": "value", "empty": ""},
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/run/netns/box"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "user"},
                {"type": "cgroup"},
                {"type": "time"},
            ],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "timeOffsets": {
                "monotonic": {"secs": 3600, "nanosecs": 0},
                "boottime": {"secs": -60, "nanosecs": 500},
            },
            "devices": [
                {"type": "c", "path": "/dev/fuse", "major": 10, "minor": 229, "fileMode": 0o666},
                {"type": "b", "path": "/dev/sda", "major": 8, "minor": 0, "uid": 0, "gid": 6},
                {"type": "p", "path": "/dev/fifo"},
            ],
            "cgroupsPath": "/dockyard/box",
            "resources": {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"},
                    {"allow": True, "type": "a"},
                ],
                "memory": {
                    "limit": 536870912,
                    "reservation": 268435456,
                    "swap": -1,
                    "kernel": -1,
                    "kernelTCP": -1,
                    "swappiness": 0,
                    "disableOOMKiller": False,
                    "useHierarchy": True,
                    "checkBeforeUpdate": True,
                },
                "cpu": {
                    "shares": 1024,
                    "quota": 50000,
                    "burst": 10000,
                    "period": 100000,
                    "realtimeRuntime": 950000,
                    "realtimePeriod": 1000000,
                    "cpus": "0-1",
                    "mems": "0",
                    "idle": 0,
                },
                "pids": {"limit": 100},
                "blockIO": {
                    "weight": 500,
                    "leafWeight": 300,
                    "weightDevice": [{"major": 8, "minor": 0, "weight": 600}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                    "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                    "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}],
                },
                "hugepageLimits": [
                    {"pageSize": "2MB", "limit": 209715200},
                    {"pageSize": "64KB", "limit": 0},
                ],
                "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]},
                "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}},
                "unified": {"memory.high": "max", "io.weight": "100"},
            },
            "intelRdt": {
                "closID": "guaranteed_group",
                "l3CacheSchema": "L3:0=7f0;1=1f",
                "memBwSchema": "MB:0=20;1=70",
                "enableCMT": True,
                "enableMBM": False,
            },
            "sysctl": {"net.ipv4.ip_forward": "1", "kernel.msgmax": "8192"},
            "seccomp": {
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 38,
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "listenerPath": "/run/seccomp-agent.sock",
                "listenerMetadata": "opaque",
                "syscalls": [
                    {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
                    {
                        "names": ["personality"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}],
                    },
                    {
                        "names": ["clone"],
                        "action": "SCMP_ACT_ERRNO",
                        "errnoRet": 1,
                        "args": [
                            {
                                "index": 5,
                                "value": 0x7E020000,
                                "valueTwo": 0,
                                "op": "SCMP_CMP_MASKED_EQ",
                            }
                        ],
                    },
                ],
            },
            "rootfsPropagation": "slave",
            "maskedPaths": ["/proc/kcore", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys"],
            "mountLabel": "system_u:object_r:container_file_t:s0",
            "personality": {"domain": "LINUX32", "flags": []},
        },
    }


def put(path: str, value: Any) -> Mutation:
    """A mutation that sets (or with DELETE removes) the field at a JSON path."""

    def mutate(cfg: dict[str, Any]) -> None:
        node: Any = cfg
        steps: list[str | int] = []
        for part in path.split("."):
            name, _, rest = part.partition("[")
            if name:
                steps.append(name)
            for index in rest.replace("]", "").split("[") if rest else []:
                steps.append(int(index))
        for step in steps[:-1]:
            node = node[step]
        if value is DELETE:
            del node[steps[-1]]
        else:
            node[steps[-1]] = copy.deepcopy(value)

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(cfg: dict[str, Any]) -> None:
        for m in mutations:
            m(cfg)

    return mutate


# (what is wrong, how to break the full config, the field the error must name)
BAD: list[tuple[str, Mutation, str]] = [
    # ociVersion
    ("no ociVersion", put("ociVersion", DELETE), "ociVersion"),
    ("ociVersion not a string", put("ociVersion", 1), "ociVersion"),
    ("ociVersion not semver", put("ociVersion", "1.0"), "ociVersion"),
    ("ociVersion empty prerelease", put("ociVersion", "1.0.0-"), "ociVersion"),
    # root
    ("no root", put("root", DELETE), "root"),
    ("root not an object", put("root", "rootfs"), "root"),
    ("no root.path", put("root.path", DELETE), "root.path"),
    ("empty root.path", put("root.path", ""), "root.path"),
    ("root.readonly not bool", put("root.readonly", "yes"), "root.readonly"),
    # process
    ("process not an object", put("process", []), "process"),
    ("no cwd", put("process.cwd", DELETE), "process.cwd"),
    ("relative cwd", put("process.cwd", "home"), "process.cwd"),
    ("cwd not a string", put("process.cwd", 1), "process.cwd"),
    ("no args", put("process.args", DELETE), "process.args"),
    ("empty args", put("process.args", []), "process.args"),
    ("args not a list", put("process.args", "sh"), "process.args"),
    ("arg not a string", put("process.args[1]", 1), "process.args[1]"),
    ("arg with NUL", put("process.args[2]", "tr\0ue"), "process.args[2]"),
    ("env not a list", put("process.env", "A=1"), "process.env"),
    ("env entry without =", put("process.env[0]", "PATH"), "process.env[0]"),
    ("env entry without name", put("process.env[2]", "=x"), "process.env[2]"),
    ("env entry not a string", put("process.env[1]", 5), "process.env[1]"),
    ("terminal not bool", put("process.terminal", "true"), "process.terminal"),
    ("terminal as 1", put("process.terminal", 1), "process.terminal"),
    (
        "consoleSize without width",
        put("process.consoleSize.width", DELETE),
        "process.consoleSize.width",
    ),
    ("consoleSize negative", put("process.consoleSize.height", -1), "process.consoleSize.height"),
    ("user not an object", put("process.user", 0), "process.user"),
    ("no uid", put("process.user.uid", DELETE), "process.user.uid"),
    ("no gid", put("process.user.gid", DELETE), "process.user.gid"),
    ("negative uid", put("process.user.uid", -1), "process.user.uid"),
    ("uid above uint32", put("process.user.uid", 2**32), "process.user.uid"),
    ("uid as bool", put("process.user.uid", True), "process.user.uid"),
    ("uid as float", put("process.user.uid", 1.0), "process.user.uid"),
    ("gid as string", put("process.user.gid", "0"), "process.user.gid"),
    ("umask negative", put("process.user.umask", -1), "process.user.umask"),
    (
        "additional gid not int",
        put("process.user.additionalGids[1]", "100"),
        "process.user.additionalGids[1]",
    ),
    (
        "unknown capability",
        put("process.capabilities.bounding[1]", "CAP_FOO"),
        "process.capabilities.bounding[1]",
    ),
    (
        "lowercase capability",
        put("process.capabilities.permitted[0]", "cap_kill"),
        "process.capabilities.permitted[0]",
    ),
    (
        "capability without prefix",
        put("process.capabilities.ambient[0]", "KILL"),
        "process.capabilities.ambient[0]",
    ),
    (
        "capability set not a list",
        put("process.capabilities.effective", "CAP_KILL"),
        "process.capabilities.effective",
    ),
    (
        "capabilities not an object",
        put("process.capabilities", ["CAP_KILL"]),
        "process.capabilities",
    ),
    ("rlimits not a list", put("process.rlimits", {}), "process.rlimits"),
    ("unknown rlimit", put("process.rlimits[0].type", "RLIMIT_FOO"), "process.rlimits[0].type"),
    ("rlimit without type", put("process.rlimits[1].type", DELETE), "process.rlimits[1].type"),
    ("rlimit without soft", put("process.rlimits[0].soft", DELETE), "process.rlimits[0].soft"),
    ("rlimit without hard", put("process.rlimits[0].hard", DELETE), "process.rlimits[0].hard"),
    ("rlimit negative", put("process.rlimits[0].hard", -1), "process.rlimits[0].hard"),
    ("rlimit above uint64", put("process.rlimits[1].soft", 2**64), "process.rlimits[1].soft"),
    ("rlimit soft above hard", put("process.rlimits[0].soft", 8192), "process.rlimits[0].soft"),
    (
        "duplicate rlimit",
        put("process.rlimits[1].type", "RLIMIT_NOFILE"),
        "process.rlimits[1].type",
    ),
    ("oomScoreAdj too high", put("process.oomScoreAdj", 1001), "process.oomScoreAdj"),
    ("oomScoreAdj too low", put("process.oomScoreAdj", -1001), "process.oomScoreAdj"),
    ("oomScoreAdj a string", put("process.oomScoreAdj", "5"), "process.oomScoreAdj"),
    ("noNewPrivileges not bool", put("process.noNewPrivileges", 1), "process.noNewPrivileges"),
    ("apparmorProfile not a string", put("process.apparmorProfile", 5), "process.apparmorProfile"),
    ("selinuxLabel not a string", put("process.selinuxLabel", []), "process.selinuxLabel"),
    (
        "ioPriority without class",
        put("process.ioPriority.class", DELETE),
        "process.ioPriority.class",
    ),
    (
        "unknown ioPriority class",
        put("process.ioPriority.class", "IOPRIO_CLASS_NONE"),
        "process.ioPriority.class",
    ),
    (
        "ioPriority priority too high",
        put("process.ioPriority.priority", 8),
        "process.ioPriority.priority",
    ),
    (
        "scheduler without policy",
        put("process.scheduler.policy", DELETE),
        "process.scheduler.policy",
    ),
    (
        "unknown scheduler policy",
        put("process.scheduler.policy", "SCHED_FAST"),
        "process.scheduler.policy",
    ),
    (
        "unknown scheduler flag",
        put("process.scheduler.flags[0]", "SCHED_FLAG_X"),
        "process.scheduler.flags[0]",
    ),
    ("scheduler nice above int32", put("process.scheduler.nice", 2**31), "process.scheduler.nice"),
    # hostname, domainname
    ("hostname not a string", put("hostname", 5), "hostname"),
    ("domainname not a string", put("domainname", ["a"]), "domainname"),
    # mounts
    ("mounts not a list", put("mounts", {}), "mounts"),
    ("mount not an object", put("mounts[0]", "/proc"), "mounts[0]"),
    ("mount without destination", put("mounts[3].destination", DELETE), "mounts[3].destination"),
    ("mount with empty destination", put("mounts[0].destination", ""), "mounts[0].destination"),
    ("mount destination not a string", put("mounts[1].destination", 1), "mounts[1].destination"),
    ("mount type not a string", put("mounts[0].type", 5), "mounts[0].type"),
    ("mount source not a string", put("mounts[2].source", 5), "mounts[2].source"),
    ("mount options a string", put("mounts[1].options", "nosuid"), "mounts[1].options"),
    ("mount option not a string", put("mounts[1].options[0]", 1), "mounts[1].options[0]"),
    ("mount uidMappings alone", put("mounts[3].gidMappings", DELETE), "mounts[3].gidMappings"),
    ("mount gidMappings alone", put("mounts[3].uidMappings", DELETE), "mounts[3].uidMappings"),
    (
        "mount mapping without size",
        put("mounts[3].uidMappings[0].size", DELETE),
        "mounts[3].uidMappings[0].size",
    ),
    # hooks
    ("hooks not an object", put("hooks", []), "hooks"),
    ("hook list not a list", put("hooks.prestart", {"path": "/bin/true"}), "hooks.prestart"),
    (
        "relative hook path",
        put("hooks.prestart[0].path", "usr/bin/setup"),
        "hooks.prestart[0].path",
    ),
    ("hook without path", put("hooks.poststop[0].path", DELETE), "hooks.poststop[0].path"),
    (
        "hook timeout zero",
        put("hooks.createRuntime[0].timeout", 0),
        "hooks.createRuntime[0].timeout",
    ),
    (
        "hook timeout a string",
        put("hooks.createRuntime[0].timeout", "5"),
        "hooks.createRuntime[0].timeout",
    ),
    ("hook arg not a string", put("hooks.prestart[0].args[1]", 1), "hooks.prestart[0].args[1]"),
    ("hook env entry without =", put("hooks.prestart[0].env[0]", "A"), "hooks.prestart[0].env[0]"),
    (
        "startContainer hook path",
        put("hooks.startContainer[0].path", "true"),
        "hooks.startContainer[0].path",
    ),
    # annotations
    ("annotations not an object", put("annotations", ["a"]), "annotations"),
    (
        "annotation value not a string",
        put("annotations", {"com.example.n": 2}),
        'annotations["com.example.n"]',
    ),
    # linux
    ("linux not an object", put("linux", []), "linux"),
    ("namespaces not a list", put("linux.namespaces", {"type": "pid"}), "linux.namespaces"),
    ("unknown namespace", put("linux.namespaces[2].type", "net"), "linux.namespaces[2].type"),
    ("namespace without type", put("linux.namespaces[0].type", DELETE), "linux.namespaces[0].type"),
    ("duplicate namespace", put("linux.namespaces[5].type", "pid"), "linux.namespaces[5].type"),
    (
        "relative namespace path",
        put("linux.namespaces[1].path", "run/netns/x"),
        "linux.namespaces[1].path",
    ),
    (
        "uid mapping host id negative",
        put("linux.uidMappings[0].hostID", -1),
        "linux.uidMappings[0].hostID",
    ),
    (
        "gid mapping without containerID",
        put("linux.gidMappings[0].containerID", DELETE),
        "linux.gidMappings[0].containerID",
    ),
    (
        "time offset nanosecs negative",
        put("linux.timeOffsets.monotonic.nanosecs", -1),
        "linux.timeOffsets.monotonic.nanosecs",
    ),
    ("unknown device type", put("linux.devices[0].type", "x"), "linux.devices[0].type"),
    ("device without type", put("linux.devices[1].type", DELETE), "linux.devices[1].type"),
    ("device without path", put("linux.devices[0].path", DELETE), "linux.devices[0].path"),
    ("relative device path", put("linux.devices[0].path", "dev/fuse"), "linux.devices[0].path"),
    ("char device without major", put("linux.devices[0].major", DELETE), "linux.devices[0].major"),
    ("block device without minor", put("linux.devices[1].minor", DELETE), "linux.devices[1].minor"),
    (
        "device fileMode too big",
        put("linux.devices[0].fileMode", 0o10000),
        "linux.devices[0].fileMode",
    ),
    ("device uid negative", put("linux.devices[1].uid", -1), "linux.devices[1].uid"),
    ("cgroupsPath not a string", put("linux.cgroupsPath", 1), "linux.cgroupsPath"),
    ("resources not an object", put("linux.resources", []), "linux.resources"),
    (
        "device rule without allow",
        put("linux.resources.devices[1].allow", DELETE),
        "linux.resources.devices[1].allow",
    ),
    (
        "device rule allow not bool",
        put("linux.resources.devices[0].allow", "no"),
        "linux.resources.devices[0].allow",
    ),
    (
        "device rule unknown type",
        put("linux.resources.devices[1].type", "u"),
        "linux.resources.devices[1].type",
    ),
    (
        "device rule bad access",
        put("linux.resources.devices[0].access", "rwx"),
        "linux.resources.devices[0].access",
    ),
    (
        "memory limit a string",
        put("linux.resources.memory.limit", "512m"),
        "linux.resources.memory.limit",
    ),
    (
        "memory limit above int64",
        put("linux.resources.memory.limit", 2**63),
        "linux.resources.memory.limit",
    ),
    (
        "swappiness above 100",
        put("linux.resources.memory.swappiness", 101),
        "linux.resources.memory.swappiness",
    ),
    (
        "disableOOMKiller not bool",
        put("linux.resources.memory.disableOOMKiller", 0),
        "linux.resources.memory.disableOOMKiller",
    ),
    ("cpu shares negative", put("linux.resources.cpu.shares", -1), "linux.resources.cpu.shares"),
    ("cpu quota float", put("linux.resources.cpu.quota", 1.5), "linux.resources.cpu.quota"),
    ("cpu cpus not a string", put("linux.resources.cpu.cpus", 3), "linux.resources.cpu.cpus"),
    (
        "cpu realtimePeriod negative",
        put("linux.resources.cpu.realtimePeriod", -1),
        "linux.resources.cpu.realtimePeriod",
    ),
    ("pids without limit", put("linux.resources.pids", {}), "linux.resources.pids.limit"),
    ("pids limit a string", put("linux.resources.pids.limit", "10"), "linux.resources.pids.limit"),
    (
        "blkio weight too low",
        put("linux.resources.blockIO.weight", 5),
        "linux.resources.blockIO.weight",
    ),
    (
        "blkio weight too high",
        put("linux.resources.blockIO.leafWeight", 1001),
        "linux.resources.blockIO.leafWeight",
    ),
    (
        "blkio weightDevice without weights",
        put("linux.resources.blockIO.weightDevice[0].weight", DELETE),
        "linux.resources.blockIO.weightDevice[0]",
    ),
    (
        "blkio weightDevice without major",
        put("linux.resources.blockIO.weightDevice[0].major", DELETE),
        "linux.resources.blockIO.weightDevice[0].major",
    ),
    (
        "blkio throttle without rate",
        put("linux.resources.blockIO.throttleReadBpsDevice[0].rate", DELETE),
        "linux.resources.blockIO.throttleReadBpsDevice[0].rate",
    ),
    (
        "blkio throttle negative rate",
        put("linux.resources.blockIO.throttleWriteIOPSDevice[0].rate", -5),
        "linux.resources.blockIO.throttleWriteIOPSDevice[0].rate",
    ),
    (
        "hugepage size lowercase",
        put("linux.resources.hugepageLimits[0].pageSize", "2mb"),
        "linux.resources.hugepageLimits[0].pageSize",
    ),
    (
        "hugepage size leading zero",
        put("linux.resources.hugepageLimits[1].pageSize", "064KB"),
        "linux.resources.hugepageLimits[1].pageSize",
    ),
    (
        "hugepage size without number",
        put("linux.resources.hugepageLimits[0].pageSize", "MB"),
        "linux.resources.hugepageLimits[0].pageSize",
    ),
    (
        "hugepage without limit",
        put("linux.resources.hugepageLimits[0].limit", DELETE),
        "linux.resources.hugepageLimits[0].limit",
    ),
    (
        "network classID negative",
        put("linux.resources.network.classID", -1),
        "linux.resources.network.classID",
    ),
    (
        "network priority without name",
        put("linux.resources.network.priorities[0].name", DELETE),
        "linux.resources.network.priorities[0].name",
    ),
    (
        "rdma entry empty",
        put("linux.resources.rdma", {"mlx5_1": {}}),
        'linux.resources.rdma["mlx5_1"]',
    ),
    (
        "rdma handles a string",
        put("linux.resources.rdma", {"mlx5_1": {"hcaHandles": "3"}}),
        'linux.resources.rdma["mlx5_1"].hcaHandles',
    ),
    (
        "unified value not a string",
        put("linux.resources.unified", {"pids.max": 10}),
        'linux.resources.unified["pids.max"]',
    ),
    (
        "memBwSchema without MB:",
        put("linux.intelRdt.memBwSchema", "L3:0=f"),
        "linux.intelRdt.memBwSchema",
    ),
    (
        "memBwSchema two lines",
        put("linux.intelRdt.memBwSchema", "MB:0=20\nL3:0=f"),
        "linux.intelRdt.memBwSchema",
    ),
    (
        "intelRdt enableCMT not bool",
        put("linux.intelRdt.enableCMT", "yes"),
        "linux.intelRdt.enableCMT",
    ),
    (
        "sysctl value not a string",
        put("linux.sysctl", {"net.ipv4.ip_forward": 1}),
        'linux.sysctl["net.ipv4.ip_forward"]',
    ),
    (
        "seccomp without defaultAction",
        put("linux.seccomp.defaultAction", DELETE),
        "linux.seccomp.defaultAction",
    ),
    (
        "bad seccomp default action",
        put("linux.seccomp.defaultAction", "SCMP_ACT_DENY"),
        "linux.seccomp.defaultAction",
    ),
    (
        "seccomp defaultErrnoRet negative",
        put("linux.seccomp.defaultErrnoRet", -1),
        "linux.seccomp.defaultErrnoRet",
    ),
    (
        "unknown seccomp arch",
        put("linux.seccomp.architectures[1]", "SCMP_ARCH_Z80"),
        "linux.seccomp.architectures[1]",
    ),
    (
        "unknown seccomp flag",
        put("linux.seccomp.flags[0]", "SECCOMP_FILTER_FLAG_FAST"),
        "linux.seccomp.flags[0]",
    ),
    (
        "listenerMetadata without listenerPath",
        put("linux.seccomp.listenerPath", DELETE),
        "linux.seccomp.listenerMetadata",
    ),
    (
        "syscall names empty",
        put("linux.seccomp.syscalls[0].names", []),
        "linux.seccomp.syscalls[0].names",
    ),
    (
        "syscall without names",
        put("linux.seccomp.syscalls[1].names", DELETE),
        "linux.seccomp.syscalls[1].names",
    ),
    (
        "syscall name empty",
        put("linux.seccomp.syscalls[0].names[1]", ""),
        "linux.seccomp.syscalls[0].names[1]",
    ),
    (
        "syscall without action",
        put("linux.seccomp.syscalls[0].action", DELETE),
        "linux.seccomp.syscalls[0].action",
    ),
    (
        "bad syscall action",
        put("linux.seccomp.syscalls[2].action", "ALLOW"),
        "linux.seccomp.syscalls[2].action",
    ),
    (
        "syscall errnoRet a string",
        put("linux.seccomp.syscalls[2].errnoRet", "EPERM"),
        "linux.seccomp.syscalls[2].errnoRet",
    ),
    (
        "syscall arg index 6",
        put("linux.seccomp.syscalls[2].args[0].index", 6),
        "linux.seccomp.syscalls[2].args[0].index",
    ),
    (
        "syscall arg without op",
        put("linux.seccomp.syscalls[1].args[0].op", DELETE),
        "linux.seccomp.syscalls[1].args[0].op",
    ),
    (
        "bad syscall arg op",
        put("linux.seccomp.syscalls[1].args[0].op", "SCMP_CMP_IN"),
        "linux.seccomp.syscalls[1].args[0].op",
    ),
    (
        "syscall arg value negative",
        put("linux.seccomp.syscalls[1].args[0].value", -1),
        "linux.seccomp.syscalls[1].args[0].value",
    ),
    (
        "unknown rootfsPropagation",
        put("linux.rootfsPropagation", "recursive"),
        "linux.rootfsPropagation",
    ),
    ("relative masked path", put("linux.maskedPaths[1]", "sys/firmware"), "linux.maskedPaths[1]"),
    ("readonlyPaths not a list", put("linux.readonlyPaths", "/proc/sys"), "linux.readonlyPaths"),
    ("mountLabel not a string", put("linux.mountLabel", 1), "linux.mountLabel"),
    (
        "personality without domain",
        put("linux.personality.domain", DELETE),
        "linux.personality.domain",
    ),
    (
        "unknown personality domain",
        put("linux.personality.domain", "BSD"),
        "linux.personality.domain",
    ),
    # nulls count as absent, so a required null is missing
    ("null cwd", put("process.cwd", None), "process.cwd"),
    ("null root", put("root", None), "root"),
    ("first error wins", both(put("hostname", 1), put("linux.cgroupsPath", 1)), "hostname"),
]


@pytest.mark.parametrize(("mutate", "field"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_names_the_field(mutate: Mutation, field: str) -> None:
    cfg = full_config()
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert err.value.field == field
    assert str(err.value).startswith(f"config.json: {field}: ")
    assert isinstance(err.value, InvalidArgument)


GOOD: list[tuple[str, Mutation]] = [
    ("as is", put("hostname", "box")),
    ("unknown top-level key", put("xFuture", {"any": ["thing"]})),
    ("unknown nested keys", both(put("process.future", 1), put("linux.resources.future", []))),
    ("unknown hook kind", put("hooks.preflight", [{"path": "relative"}])),
    ("other platforms ignored", put("windows", {"layerFolders": None})),
    ("relative mount destination (deprecated)", put("mounts[2].destination", "data")),
    ("relative root path", put("root.path", "../elsewhere/rootfs")),
    ("absolute root path", put("root.path", "/srv/rootfs")),
    ("no process until start", put("process", DELETE)),
    ("no linux section", put("linux", DELETE)),
    ("minimal process", put("process", {"cwd": "/", "args": ["sh"]})),
    ("ociVersion with prerelease", put("ociVersion", "1.0.2-dev")),
    ("ociVersion with build", put("ociVersion", "1.2.0+abc.1")),
    ("recursive propagation as runc takes", put("linux.rootfsPropagation", "rprivate")),
    ("fifo device needs no numbers", put("linux.devices", [{"type": "p", "path": "/dev/f"}])),
    ("unset device rule fields mean all", put("linux.resources.devices", [{"allow": True}])),
    ("empty access", put("linux.resources.devices[0].access", "")),
    (
        "blkio leafWeight alone",
        put("linux.resources.blockIO.weightDevice", [{"major": 8, "minor": 0, "leafWeight": 10}]),
    ),
    ("seccomp without syscalls", put("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW"})),
    ("arch from runtime-spec 1.3", put("linux.seccomp.architectures", ["SCMP_ARCH_LOONGARCH64"])),
    (
        "nulls are absent",
        both(put("hooks", None), put("process.env", None), put("linux.seccomp", None)),
    ),
    ("set-id bits in device mode", put("linux.devices[0].fileMode", 0o2660)),
    ("negative memory limit (unlimited)", put("linux.resources.memory.limit", -1)),
    ("empty hook list", put("hooks.poststop", [])),
]


@pytest.mark.parametrize("mutate", [c[1] for c in GOOD], ids=[c[0] for c in GOOD])
def test_good_config(mutate: Mutation) -> None:
    cfg = full_config()
    mutate(cfg)
    validate_config(cfg)


def test_config_must_be_an_object() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config([])
    assert err.value.field == ""
    assert "must be an object" in str(err.value)


def test_require_process() -> None:
    cfg = full_config()
    del cfg["process"]
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, require_process=True)
    assert err.value.field == "process"


def test_nulls_are_removed() -> None:
    cfg = full_config()
    cfg["hooks"] = None
    cfg["process"]["user"]["additionalGids"] = None
    cfg["x-unknown"] = None
    validate_config(cfg)
    assert "hooks" not in cfg
    assert "additionalGids" not in cfg["process"]["user"]
    assert "x-unknown" in cfg  # unknown properties are left alone


def test_messages_say_what_is_wrong() -> None:
    cfg = full_config()
    cfg["linux"]["namespaces"][5]["type"] = "pid"
    with pytest.raises(
        ConfigError, match=r"duplicate namespace type 'pid' \(also at linux.namespaces\[0\]\)"
    ):
        validate_config(cfg)
    cfg = full_config()
    cfg["linux"]["namespaces"][0]["type"] = "bogus"
    with pytest.raises(ConfigError, match=r"unknown namespace type 'bogus' \(one of: pid, network"):
        validate_config(cfg)
    cfg = full_config()
    cfg["process"]["user"]["uid"] = True
    with pytest.raises(ConfigError, match="must be an integer, not a boolean"):
        validate_config(cfg)


# --- the default spec ----------------------------------------------------------


@pytest.mark.parametrize("rootless", [False, True])
def test_default_spec_validates(rootless: bool) -> None:
    cfg = default_spec(rootless)
    validate_config(cfg, require_process=True)
    assert cfg["ociVersion"] == OCI_VERSION
    assert cfg["process"]["args"] == ["sh"]
    assert cfg["process"]["terminal"] is True
    assert cfg["process"]["noNewPrivileges"] is True
    caps = cfg["process"]["capabilities"]
    assert sorted(caps) == ["bounding", "effective", "permitted"]
    assert caps["bounding"] == ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    assert cfg["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    destinations = [m["destination"] for m in cfg["mounts"]]
    assert destinations == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]
    assert "/proc/kcore" in cfg["linux"]["maskedPaths"]
    assert "/proc/sys" in cfg["linux"]["readonlyPaths"]


def test_default_spec_privileged_shape() -> None:
    cfg = default_spec()
    types = [ns["type"] for ns in cfg["linux"]["namespaces"]]
    assert types[:5] == ["pid", "network", "ipc", "uts", "mount"]
    assert set(types) <= {"pid", "network", "ipc", "uts", "mount", "cgroup"}
    assert cfg["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert "uidMappings" not in cfg["linux"]
    assert cfg["mounts"][5]["type"] == "sysfs"


def test_default_spec_rootless_shape() -> None:
    cfg = default_spec(rootless=True)
    types = [ns["type"] for ns in cfg["linux"]["namespaces"]]
    assert "network" not in types
    assert types[-1] == "user"
    assert cfg["linux"]["uidMappings"] == [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    assert cfg["linux"]["gidMappings"] == [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    assert "resources" not in cfg["linux"]
    sys_mount = cfg["mounts"][5]
    assert sys_mount == {
        "destination": "/sys",
        "type": "none",
        "source": "/sys",
        "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
    }
    assert not any(
        o.startswith(("uid=", "gid=")) for m in cfg["mounts"] for o in m.get("options", [])
    )


def test_default_spec_is_a_fresh_dict() -> None:
    a = default_spec()
    a["process"]["args"].append("-c")
    a["linux"]["maskedPaths"].clear()
    b = default_spec()
    assert b["process"]["args"] == ["sh"]
    assert b["linux"]["maskedPaths"]


def _runc_spec(tmp_path: Path, rootless: bool) -> dict[str, Any]:
    runc = shutil.which("runc")
    if not runc:
        pytest.skip("runc is not installed")
    argv = [runc, "spec"] + (["--rootless"] if rootless else [])
    subprocess.run(argv, cwd=tmp_path, check=True, capture_output=True)
    cfg: dict[str, Any] = json.loads((tmp_path / "config.json").read_text())
    return cfg


@pytest.mark.parametrize("rootless", [False, True])
def test_runc_spec_validates(tmp_path: Path, rootless: bool) -> None:
    validate_config(_runc_spec(tmp_path, rootless), require_process=True)


@pytest.mark.parametrize("rootless", [False, True])
def test_default_spec_matches_runc(tmp_path: Path, rootless: bool) -> None:
    """Same as ``runc spec`` but for our version, our hostname, and no ambient
    capabilities (runc 1.2 stopped writing them: without inheritable ones
    they cannot be raised)."""
    theirs = _runc_spec(tmp_path, rootless)
    ours = default_spec(rootless)
    for cfg in (theirs, ours):
        del cfg["ociVersion"], cfg["hostname"]
        cfg["process"]["capabilities"].pop("ambient", None)
    assert ours == theirs


# --- loading a bundle ------------------------------------------------------------


def write_bundle(path: Path, content: str | bytes) -> str:
    path.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    (path / "config.json").write_bytes(data)
    return str(path)


def test_load_bundle_config(tmp_path: Path) -> None:
    cfg = full_config()
    bundle = write_bundle(tmp_path / "b", json.dumps(cfg, indent=2))
    assert load_bundle_config(bundle) == cfg
    assert rootfs_path(bundle, cfg) == str(tmp_path / "b" / "rootfs")


def test_rootfs_path_absolute(tmp_path: Path) -> None:
    cfg = {"root": {"path": "/srv/x/../rootfs"}}
    assert rootfs_path(str(tmp_path), cfg) == "/srv/rootfs"


def test_load_requires_process(tmp_path: Path) -> None:
    cfg = full_config()
    del cfg["process"]
    bundle = write_bundle(tmp_path, json.dumps(cfg))
    with pytest.raises(ConfigError) as err:
        load_bundle_config(bundle)
    assert err.value.field == "process"
    assert load_bundle_config(bundle, require_process=False)["root"]["path"] == "rootfs"


def test_load_reports_field_errors(tmp_path: Path) -> None:
    cfg = full_config()
    cfg["mounts"][3].pop("destination")
    bundle = write_bundle(tmp_path, json.dumps(cfg))
    with pytest.raises(ConfigError) as err:
        load_bundle_config(bundle)
    assert err.value.field == "mounts[3].destination"


def test_load_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config\.json in bundle") as err:
        load_bundle_config(str(tmp_path))
    assert err.value.field == ""


def test_load_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such directory"):
        load_bundle_config(str(tmp_path / "nope"))


def test_load_unreadable_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").mkdir()
    with pytest.raises(ConfigError, match=r"read .*config\.json.*: is a directory"):
        load_bundle_config(str(tmp_path))


def test_load_bad_json_gives_line_and_column(tmp_path: Path) -> None:
    bundle = write_bundle(
        tmp_path, '{\n  "ociVersion": "1.2.0",\n  "root": {"path": "rootfs"}\n  "x": 1\n}\n'
    )
    with pytest.raises(ConfigError, match="invalid JSON at line 4, column 3: expecting ','") as err:
        load_bundle_config(bundle)
    assert err.value.field == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "invalid JSON at line 1, column 1"),
        ("[]", "must be an object, not an array"),
        ("null", "must be an object, not null"),
        ('{"ociVersion": "1.2.0", "root": {"path": "rootfs"}', "invalid JSON at line 1"),
        (b'{"hostname": "\xff"}', "not valid UTF-8"),
        ("[" * 100000, "invalid JSON"),
    ],
    ids=["empty", "array", "null", "truncated", "not utf-8", "nested too deep"],
)
def test_load_malformed(tmp_path: Path, content: str | bytes, message: str) -> None:
    bundle = write_bundle(tmp_path, content)
    with pytest.raises(ConfigError, match=message):
        load_bundle_config(bundle)


# --- the tables ------------------------------------------------------------------


def test_capabilities_match_kernel_header() -> None:
    header = Path("/usr/include/linux/capability.h")
    if not header.exists():
        pytest.skip("no kernel headers")
    found: dict[str, int] = {}
    for line in header.read_text().splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "#define" and words[1].startswith("CAP_"):
            found[words[1]] = int(words[2]) if words[2].isdigit() else -1
    found.pop("CAP_LAST_CAP")
    assert found == CAPABILITIES
    assert max(CAPABILITIES.values()) == CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40


def test_rlimits_match_resource_module() -> None:
    import resource

    for name, number in RLIMITS.items():
        if hasattr(resource, name):
            assert getattr(resource, name) == number, name
    assert len(RLIMITS) == 16


def test_constant_tables() -> None:
    assert spec.NAMESPACE_TYPES == (
        "pid",
        "network",
        "mount",
        "ipc",
        "uts",
        "user",
        "cgroup",
        "time",
    )
    assert spec.HOOK_NAMES[0] == "prestart" and spec.HOOK_NAMES[-1] == "poststop"
    assert len(spec.HOOK_NAMES) == 6
    assert "SCMP_ACT_NOTIFY" in spec.SECCOMP_ACTIONS
    assert "SCMP_ARCH_X86_64" in spec.SECCOMP_ARCHES
    assert "SCMP_CMP_MASKED_EQ" in spec.SECCOMP_OPERATORS


def test_import_stays_small() -> None:
    """The runtime imports this module on every start: no typing, json or re."""
    root = os.path.dirname(os.path.dirname(dockyard.__file__))
    code = (
        "import sys, dockyard.spec.runtime\n"
        "heavy = {'typing', 'json', 're', 'jsonschema', 'collections'} & set(sys.modules)\n"
        "print(' '.join(sorted(heavy)))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={**os.environ, "PYTHONPATH": root},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert out == ""
