"""GLN check digits: the GS1 weighted sum, and the GLNs of MedCom's examples."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.fhir.identifiers import check_gln, gln_check_digit


def _gs1(first12: str) -> int:
    """The GS1 definition, digit by digit: weights 1, 3, 1, 3, ... from the left."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return (10 - total % 10) % 10


@given(st.text(alphabet="0123456789", min_size=12, max_size=12))
def test_check_digit_is_the_gs1_weighted_sum(first12: str) -> None:
    assert gln_check_digit(first12) == _gs1(first12)


def test_glns_of_the_examples() -> None:
    for gln in ("5790000209354", "5790001348120", "5790000121526"):
        assert check_gln(gln) is None
        wrong = gln[:12] + str((int(gln[12]) + 1) % 10)
        assert check_gln(wrong) == f"GLN check digit is wrong (expected {gln[12]})"
