"""containerd's identifier rule, shared by the supervisor and the shim."""

from __future__ import annotations

import pytest

from dockyard.errors import InvalidArgument
from dockyard.identifiers import is_identifier, validate_identifier

GOOD = ["a", "A9", "web-1", "a.b_c-d", "x" * 76, "sha256.abc"]
BAD = ["", "-a", "a-", "a..b", "a-_b", "a b", "a/b", "é", "x" * 77, ".", "a\n"]


@pytest.mark.parametrize("value", GOOD)
def test_good_identifiers(value: str) -> None:
    assert is_identifier(value)
    assert validate_identifier("container", value) == value


@pytest.mark.parametrize("value", BAD)
def test_bad_identifiers_are_refused_naming_the_kind(value: str) -> None:
    assert not is_identifier(value)
    with pytest.raises(InvalidArgument, match=r"^exec id"):
        validate_identifier("exec id", value)
