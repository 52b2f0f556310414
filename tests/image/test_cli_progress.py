"""dockyard-image's per-layer progress: bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import io

from dockyard.image.cli import Progress

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def test_plain_lines_once_per_layer() -> None:
    out = io.StringIO()
    p = Progress(out, tty=False)
    p(A, 10, 100)
    p(A, 100, 100)
    p(A, 100, 100)
    p(B, 5, 5)
    assert out.getvalue().splitlines() == [f"{A}: fetched 100 bytes", f"{B}: fetched 5 bytes"]


def test_bars_redrawn_in_place_one_row_per_layer() -> None:
    out = io.StringIO()
    p = Progress(out, tty=True)
    p(A, 0, 4 << 20)
    p(B, 1 << 20, 2 << 20)
    p(A, 4 << 20, 4 << 20)
    text = out.getvalue()
    # the second and third redraws move the cursor up over the rows drawn before
    assert "\x1b[1F" in text and "\x1b[2F" in text
    last = text.rsplit("\x1b[2F", 1)[1].split("\n")
    assert last[0].endswith("done") and "aaaaaaaaaaaa" in last[0]
    assert "1/2 MiB" in last[1] and "bbbbbbbbbbbb" in last[1]
