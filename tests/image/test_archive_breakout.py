"""The breakout table: hostile layers must change nothing outside the root.

Modelled on the cases containerd's archive tests cover (symlinks absolute,
up-and-out, to the parent, over a directory; hardlinks relative, absolute,
down-and-out, to a symlink; whiteouts of the root, the parent, ``.``, through
a symlink; ``..`` and absolute names) plus the two-layer symlink attack. Each
case runs in both whiteout modes; a sentinel directory next to the root (and
reachable through ``..`` from it) is compared before and after, entry by
entry with content hashes.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dockyard.errors import InvalidArgument
from dockyard.image.archive import apply_layer
from tests.image.archive_helpers import (
    Entry,
    dir,
    file,
    link,
    opaque,
    read_in_root,
    snapshot,
    stat_in_root,
    symlink,
    tar,
    whiteout,
)

OUT = "@OUT@"  # replaced by the sentinel directory's absolute path


@dataclass
class Sandbox:
    top: Path
    root: Path
    outside: Path

    def sub(self, text: str) -> str:
        return text.replace(OUT, str(self.outside))


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    top = tmp_path / "sandbox"
    root = top / "root"
    outside = top / "outside"
    root.mkdir(parents=True)
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "passwd").write_bytes(b"outside passwd")
    (outside / "secret").write_bytes(b"outside secret")
    os.chmod(outside / "secret", 0o400)
    (outside / "sub").mkdir()
    (outside / "sub" / "keep").write_bytes(b"keep me")
    os.symlink("secret", outside / "secretlink")
    yield Sandbox(top, root, outside)


Check = Callable[[Path, str], None]


@dataclass
class Case:
    name: str
    layers: list[list[Entry]]  # applied in order; the last is the hostile one
    error: bool = False  # the last layer must be refused
    check: Check | None = None
    either: bool = False  # refused or applied, both fine
    modes: tuple[str, ...] = ("direct", "overlay")
    extra: dict[str, object] = field(default_factory=dict)


BASE = [dir("etc"), file("etc/passwd", b"inside passwd")]


def content(rel: str, data: bytes) -> Check:
    def check(root: Path, mode: str) -> None:
        assert read_in_root(str(root), rel) == data

    return check


def same_file(a: str, b: str) -> Check:
    def check(root: Path, mode: str) -> None:
        sa, sb = stat_in_root(str(root), a), stat_in_root(str(root), b)
        assert (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)

    return check


def is_symlink(rel: str, target: str | None = None) -> Check:
    def check(root: Path, mode: str) -> None:
        assert (root / rel).is_symlink()
        if target is not None:
            assert os.readlink(root / rel) == target

    return check


def gone(rel: str) -> Check:
    def check(root: Path, mode: str) -> None:
        p = root / rel
        if mode == "overlay":
            st = os.lstat(p)
            assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        else:
            assert not os.path.lexists(p)

    return check


def regular(rel: str) -> Check:
    def check(root: Path, mode: str) -> None:
        assert stat.S_ISREG(os.lstat(root / rel).st_mode)

    return check


def all_of(*checks: Check) -> Check:
    def check(root: Path, mode: str) -> None:
        for c in checks:
            c(root, mode)

    return check


CASES = [
    # -- symlinks followed while writing ---------------------------------
    Case(
        "symlink-absolute",
        [[*BASE, symlink("localetc", "/etc"), file("localetc/unbroken", b"unbroken")]],
        check=content("etc/unbroken", b"unbroken"),
    ),
    Case(
        "symlink-absolute-to-sentinel",
        [[symlink("evil", f"{OUT}/sub"), file("evil/pwned", b"x")]],
        either=True,
    ),
    Case(
        "symlink-up-and-out",
        [[*BASE, symlink("localetc", "../../../../../../etc"), file("localetc/unbroken", b"u")]],
        check=content("etc/unbroken", b"u"),
    ),
    Case(
        "symlink-up-and-out-to-sentinel",
        [[dir("a"), symlink("a/evil", "../../outside/sub"), file("a/evil/pwned", b"x")]],
        either=True,
    ),
    Case(
        "symlink-dummy-up-and-out",
        [[*BASE, dir("dummy"), symlink("localetc", "/dummy/../../etc"), file("localetc/u", b"u")]],
        check=content("etc/u", b"u"),
    ),
    Case(
        "symlink-chain-absolute",
        [
            [
                *BASE,
                dir("dummy"),
                symlink("dummy/etc", "/etc"),
                symlink("localetc", "/dummy/etc"),
                file("localetc/u", b"u"),
            ]
        ],
        check=content("etc/u", b"u"),
    ),
    Case(
        "symlink-empty-file-through",
        [[*BASE, symlink("localetc", "/etc"), file("localetc/passwd", b"")]],
        check=content("etc/passwd", b""),
    ),
    Case(
        "symlink-named-parent-directory",
        [[*BASE, symlink("..", "/etc/"), link("localpasswd", "/etc/passwd")]],
        error=True,  # a name climbing above the root is refused
    ),
    Case(
        "symlink-parent-relative-name",
        [
            [
                *BASE,
                symlink("localetc/sub/..", "/etc/"),
                link("localetc/localpasswd", "/etc/passwd"),
            ]
        ],
        check=same_file("localetc/localpasswd", "etc/passwd"),
    ),
    Case(
        "symlink-override-directory",
        [
            [*BASE, dir("localetc")],
            [symlink("localetc", "/etc"), link("localetc/localpasswd", "/etc/passwd")],
        ],
        check=same_file("localetc/localpasswd", "etc/passwd"),
        modes=("direct",),
    ),
    Case(
        "symlink-override-directory-to-sentinel",
        [
            [dir("localetc")],
            [symlink("localetc", OUT), file("localetc/pwned", b"x")],
        ],
        either=True,
    ),
    Case(
        "directory-override-symlink",
        [
            [*BASE, symlink("localetc", OUT)],
            [dir("localetc"), file("localetc/inside", b"i")],
        ],
        check=all_of(content("localetc/inside", b"i")),
    ),
    Case(
        "file-over-symlink-to-outside",
        [[symlink("evil", f"{OUT}/secret")], [file("evil", b"overwritten")]],
        check=all_of(regular("evil"), content("evil", b"overwritten")),
    ),
    Case(
        "file-over-relative-symlink-to-outside",
        [[symlink("evil", "../outside/secret")], [file("evil", b"overwritten")]],
        check=all_of(regular("evil"), content("evil", b"overwritten")),
    ),
    # -- hardlinks -------------------------------------------------------
    Case(
        "hardlink-relative",
        [
            [
                *BASE,
                dir("breakouts"),
                symlink("breakouts/d1", "../../etc"),
                link("breakouts/mypasswd", "breakouts/d1/passwd"),
            ]
        ],
        check=same_file("breakouts/mypasswd", "etc/passwd"),
    ),
    Case(
        "hardlink-down-and-out",
        [
            [
                *BASE,
                dir("breakouts"),
                dir("downandout"),
                symlink("breakouts/d1", "../downandout/../../etc"),
                link("breakouts/mypasswd", "breakouts/d1/passwd"),
            ]
        ],
        check=same_file("breakouts/mypasswd", "etc/passwd"),
    ),
    Case(
        "hardlink-absolute",
        [[*BASE, symlink("localetc", "/etc"), link("localpasswd", "/localetc/passwd")]],
        check=same_file("localpasswd", "etc/passwd"),
    ),
    Case(
        "hardlink-relative-long",
        [[*BASE, symlink("localetc", "../../../../../../../etc"), link("lp", "localetc/passwd")]],
        check=same_file("lp", "etc/passwd"),
    ),
    Case(
        "hardlink-direct-absolute",
        [[*BASE, link("localpasswd", "/etc/passwd")]],
        check=same_file("localpasswd", "etc/passwd"),
    ),
    Case(
        "hardlink-direct-up-and-out",
        [[*BASE, link("localpasswd", "../../../../etc/passwd")]],
        error=True,
    ),
    Case(
        "hardlink-to-sentinel-absolute",
        [[link("stolen", f"{OUT}/secret")]],
        error=True,
    ),
    Case(
        "hardlink-to-sentinel-relative",
        [[link("stolen", "../outside/secret")]],
        error=True,
    ),
    Case(
        "hardlink-through-symlink-to-sentinel",
        [[symlink("d", OUT), link("stolen", "d/secret", mode=0o777)]],
        error=True,
    ),
    Case(
        "hardlink-to-symlink-pointing-out",
        [[symlink("passwdlink", f"{OUT}/secret"), link("localpasswd", "passwdlink", mode=0o777)]],
        check=all_of(is_symlink("localpasswd"), same_file("localpasswd", "passwdlink")),
    ),
    Case(
        "hardlink-to-symlink-before-target",
        [
            [
                dir("etc"),
                symlink("localpasswd", "/etc/passwd"),
                link("localpasswd-dup", "localpasswd"),
                file("etc/passwd", b"after"),
            ]
        ],
        check=all_of(is_symlink("localpasswd-dup", "/etc/passwd")),
    ),
    # -- whiteouts -------------------------------------------------------
    Case("whiteout-root-parent", [BASE, [file(".wh...")]], error=True),
    Case("whiteout-parent", [BASE, [file("etc/.wh...")]], error=True),
    Case("whiteout-root", [BASE, [file(".wh..")]], error=True),
    Case("whiteout-current-directory", [BASE, [file("etc/.wh..")]], error=True),
    Case("whiteout-empty-name", [BASE, [file("etc/.wh.")]], error=True),
    Case(
        "whiteout-symlink",
        [[*BASE, symlink("localetc", OUT)], [whiteout("localetc")]],
        check=all_of(gone("localetc"), content("etc/passwd", b"inside passwd")),
    ),
    Case(
        "whiteout-through-symlink-to-sentinel",
        [[symlink("localetc", OUT)], [file("localetc/.wh.secret"), file("localetc/.wh.sub")]],
        either=True,
    ),
    Case(
        "whiteout-through-relative-symlink",
        [[dir("a"), symlink("a/b", "../../outside")], [file("a/b/.wh.secret")]],
        either=True,
    ),
    Case(
        "opaque-through-symlink-to-sentinel",
        [[symlink("evil", OUT)], [opaque("evil")]],
        either=True,
    ),
    Case(
        "whiteout-through-symlink-inside",
        [
            [*BASE, file("etc/whitedout", b"w"), symlink("localetc", "/etc")],
            [whiteout("localetc/whitedout")],
        ],
        check=all_of(content("etc/passwd", b"inside passwd"), gone("etc/whitedout")),
        modes=("direct",),
    ),
    Case(
        "whiteout-directory-name-is-not-a-whiteout",
        [[*BASE], [file(".wh.etc/somefile", b"non-empty")]],
        check=all_of(
            content("etc/passwd", b"inside passwd"), content(".wh.etc/somefile", b"non-empty")
        ),
        modes=("direct",),
    ),
    Case(
        "whiteout-dead-symlink-parent",
        [[*BASE, symlink("localetc", "/dne")], [file("localetc/.wh.etc")]],
        check=content("etc/passwd", b"inside passwd"),
        either=True,
    ),
    Case(
        "whiteout-relative-name",
        [[*BASE], [file("dne/../.wh.etc")]],
        check=gone("etc"),
    ),
    # -- names -----------------------------------------------------------
    Case("name-dotdot", [[file("../pwned", b"x")]], error=True),
    Case("name-dotdot-deep", [[file("a/../../outside/pwned", b"x")]], error=True),
    Case("name-dotdot-inside", [[file("a/../b", b"x")]], check=content("b", b"x")),
    # absolute entry names are bad input (issue 3): refused, nothing written
    Case("name-absolute", [[file("/pwned", b"x")]], error=True),
    Case("name-absolute-sentinel", [[file(f"{OUT}/pwned", b"x")]], error=True),
    Case("name-root-dot", [[dir("."), dir("./"), file("./a", b"a")]], check=content("a", b"a")),
    # -- the two-layer attack --------------------------------------------
    Case(
        "two-layer-absolute",
        [[symlink("evil", OUT)], [file("evil/pwned", b"x")]],
        either=True,
    ),
    Case(
        "two-layer-relative",
        [[symlink("evil", "../../")], [file("evil/outside/pwned", b"x")]],
        either=True,
    ),
    Case(
        "two-layer-relative-to-sentinel",
        [[symlink("evil", "../outside")], [file("evil/secret", b"x"), dir("evil/sub")]],
        either=True,
    ),
    Case(
        "two-layer-nested",
        [[dir("a"), symlink("a/evil", "../../outside/sub")], [file("a/evil/keep", b"x")]],
        either=True,
    ),
    Case(
        "two-layer-dir-entry",
        [[symlink("evil", f"{OUT}/sub")], [dir("evil/newdir"), file("evil/newdir/f", b"x")]],
        either=True,
    ),
    Case(
        "two-layer-hardlink",
        [[symlink("evil", OUT)], [link("stolen", "evil/secret")]],
        error=True,
    ),
    Case(
        "two-layer-symlink-over-symlink",
        [[symlink("evil", "/tmp")], [symlink("evil/x", OUT)]],
        either=True,
    ),
]


def _subst(sb: Sandbox, entries: list[Entry]) -> list[Entry]:
    out = []
    for e in entries:
        copy = Entry(**{**e.__dict__, "name": sb.sub(e.name), "target": sb.sub(e.target)})
        out.append(copy)
    return out


@pytest.mark.parametrize("mode", ["direct", "overlay"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_breakout(sandbox: Sandbox, case: Case, mode: str) -> None:
    if mode not in case.modes:
        pytest.skip(f"{case.name} needs the layers below in the same directory")
    host_etc = set(os.listdir("/etc"))
    before = snapshot(str(sandbox.outside))
    *lower, last = case.layers
    for layer in lower:
        apply_layer(str(sandbox.root), io.BytesIO(tar(_subst(sandbox, layer))), whiteouts=mode)  # type: ignore[arg-type]
    data = tar(_subst(sandbox, last))
    failed: InvalidArgument | None = None
    try:
        apply_layer(str(sandbox.root), io.BytesIO(data), whiteouts=mode)  # type: ignore[arg-type]
    except InvalidArgument as e:
        failed = e
    assert snapshot(str(sandbox.outside)) == before, "the sentinel outside the root changed"
    assert sorted(os.listdir(sandbox.top)) == ["outside", "root"]
    assert set(os.listdir("/etc")) == host_etc
    if case.error:
        assert failed is not None, "the layer should have been refused"
        return
    if not case.either:
        assert failed is None, f"the layer should apply: {failed}"
    if failed is None and case.check is not None:
        case.check(sandbox.root, mode)
