"""Danish identifiers (DK-core): CPR, replacement CPR (X-eCPR), SOR, GLN/EAN, Ydernummer.

Pure functions; each ``check_*`` returns ``None`` when the value is valid, else a short reason.
"""

from __future__ import annotations

import datetime as _dt
import re

CPR_SYSTEM = "urn:oid:1.2.208.176.1.2"
#: X-eCPR, the national replacement CPR register (DK-core ``x-ecpr``).
XECPR_SYSTEM = "urn:oid:1.2.208.176.1.6.1.1"
SOR_SYSTEM = "urn:oid:1.2.208.176.1.1"
YDERNUMMER_SYSTEM = "urn:oid:1.2.208.176.1.4"
#: DK-core <= 3.4 writes https, >= 3.5 writes http; the bridge writes https (as MedCom does) and reads both.
GLN_SYSTEM = "https://www.gs1.org/gln"
GLN_SYSTEMS = frozenset({"https://www.gs1.org/gln", "http://www.gs1.org/gln"})
MUNICIPALITY_CODE_SYSTEM = "http://hl7.dk/fhir/core/CodeSystem/dk-core-municipality-codes"

_CPR_RE = re.compile(r"^\d{10}$")
_REPLACEMENT_RE = re.compile(r"^\d{6}[0-9A-Z]{4}$")
_SOR_RE = re.compile(r"^\d{6,18}$")
_GLN_RE = re.compile(r"^\d{13}$")
_YDER_RE = re.compile(r"^\d{5,6}$")
_MUNICIPALITY_RE = re.compile(r"^\d{3,4}$")


def _cpr_century(year2: int, seventh: int) -> int:
    """The century of a CPR birth year from the 7th digit (CPR-kontoret's table)."""
    if seventh <= 3:
        return 1900
    if seventh in (4, 9):
        return 2000 if year2 <= 36 else 1900
    # 5-8
    return 2000 if year2 <= 57 else 1800


def cpr_birth_date(value: str) -> _dt.date | None:
    """The birth date encoded in the first six digits, or None when it is no real date."""
    try:
        day, month, year2 = int(value[0:2]), int(value[2:4]), int(value[4:6])
    except ValueError:
        return None
    seventh = int(value[6]) if value[6].isdigit() else 0
    try:
        return _dt.date(_cpr_century(year2, seventh) + year2, month, day)
    except ValueError:
        return None


def check_cpr(value: str) -> str | None:
    """A CPR number: 10 digits, the first six a real date (DDMMYY). No modulus-11 check (dropped 2007)."""
    if not _CPR_RE.match(value):
        return "a CPR number is 10 digits"
    if cpr_birth_date(value) is None:
        return "the first six digits of a CPR number must be a real date (DDMMYY)"
    return None


def is_replacement_cpr(value: str) -> bool:
    """True for a replacement person number (X-eCPR): a date, then four characters not all digits."""
    return bool(_REPLACEMENT_RE.match(value)) and not value.isdigit()


def check_replacement_cpr(value: str) -> str | None:
    """A replacement CPR (X-eCPR): DDMMYY then four upper-case letters or digits, at least one a letter."""
    if not is_replacement_cpr(value):
        return "a replacement CPR number is six date digits and four letters or digits"
    if cpr_birth_date(value) is None:
        return "the first six characters of a replacement CPR number must be a real date (DDMMYY)"
    return None


def gln_check_digit(first12: str) -> int:
    """The GS1 check digit for the first 12 digits of a GLN (weights 1,3 from the left)."""
    total = sum(map(int, first12[0::2])) + 3 * sum(map(int, first12[1::2]))
    return (10 - total % 10) % 10


def check_gln(value: str) -> str | None:
    """A GLN/EAN location number: 13 digits with a valid GS1 check digit."""
    if not _GLN_RE.match(value):
        return "a GLN is 13 digits"
    if gln_check_digit(value[:12]) != int(value[12]):
        return f"GLN check digit is wrong (expected {gln_check_digit(value[:12])})"
    return None


def check_sor(value: str) -> str | None:
    """A SOR id: 6 to 18 digits (SOR ids are SNOMED-style numeric ids)."""
    if not _SOR_RE.match(value):
        return "a SOR id is 6 to 18 digits"
    return None


def check_ydernummer(value: str) -> str | None:
    """A Ydernummer (provider number of a general practice): 5 or 6 digits."""
    if not _YDER_RE.match(value):
        return "a Ydernummer is 5 or 6 digits"
    return None


def check_municipality_code(value: str) -> str | None:
    """A Danish municipality code (kommunekode): 3 or 4 digits."""
    if not _MUNICIPALITY_RE.match(value):
        return "a municipality code is 3 or 4 digits"
    return None
