"""Replace personal data with placeholders: e-mail addresses, phone numbers, public IP
addresses and payment-card numbers.

Each kind is found by a narrow pattern and then checked, so that ordinary numbers survive:
- IP addresses are parsed with `ipaddress`; only public (globally routed) ones are replaced.
  Loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local, documentation
  (192.0.2.0/24, 2001:db8::/32 ...), multicast and reserved addresses are not personal.
- Card numbers are 13-19 digits (ISO/IEC 7812), optionally grouped by spaces or dashes,
  that pass the Luhn check; a random digit run passes it only one time in ten.
- Phone numbers need a phone's shape: "+" and a country code (E.164: 8-15 digits in all), or
  the North American 3-3-4 grouping with separators or parentheses. Dates (2024-01-15),
  years, version numbers (3.11.7), prices and bare digit runs do not have that shape.
The patterns avoid nested quantifiers, so their cost stays linear in the text length.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from lmforge.errors import LmforgeError

PII_KINDS = ("email", "phone", "ip", "credit_card")
PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP>",
                "credit_card": "<CREDIT_CARD>"}

# The lookbehind makes a match start only where a run of address characters starts, so a
# long run without "@" is scanned once rather than once per position.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
# Candidate IPv6 text; `ipaddress` decides whether it is one ("10:30:00" is not).
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_CARD = re.compile(r"(?<![\w+-])\d(?:[ -]?\d){12,18}(?![\w]|[.,]\d)")
_PHONE_INTL = re.compile(
    r"(?<![\w+])\+(?:\d{7,15}|\d{1,3}(?:[ .-]?\(\d{1,4}\)|[ .-]\d{1,5}){2,6})(?![\w]|[.-]\d)")
_PHONE_NANP = re.compile(
    r"(?<![\w+.-])(?:1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-]|\.\d)")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of digits (ISO/IEC 7812-1)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _public_ip(candidate: str) -> bool:
    try:
        addr = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return addr.is_global and not (addr.is_multicast or addr.is_reserved)


def _card(match: re.Match) -> bool:
    digits = match.group().replace(" ", "").replace("-", "")
    # A run of one digit ("0000 0000 0000 0000") passes Luhn but is a placeholder, not a card.
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits)


def _intl_phone(match: re.Match) -> bool:
    return 8 <= sum(ch.isdigit() for ch in match.group()) <= 15


def _sub(pattern: re.Pattern, text: str, kind: str, check=None) -> tuple[str, int]:
    count = 0
    placeholder = PLACEHOLDERS[kind]

    def replace(m: re.Match) -> str:
        nonlocal count
        if check is not None and not check(m):
            return m.group()
        count += 1
        return placeholder

    return pattern.sub(replace, text), count


def scrub_pii(text: str, kinds: Sequence[str] = PII_KINDS) -> tuple[str, dict[str, int]]:
    """`text` with each personal datum of the given kinds replaced by its placeholder
    ("<EMAIL>", "<PHONE>", "<IP>", "<CREDIT_CARD>"), and how many of each were replaced."""
    if isinstance(kinds, str):
        kinds = (kinds,)
    unknown = [k for k in kinds if k not in PII_KINDS]
    if unknown:
        raise LmforgeError(f"unknown PII kind {unknown[0]!r}",
                           hint=f"valid kinds: {', '.join(PII_KINDS)}")
    counts = dict.fromkeys(kinds, 0)
    # Order matters: addresses first (an e-mail holds digits, an IP holds dots), then
    # cards (longer digit runs) before 3-3-4 phones, so a card is never half-read as a phone.
    if "email" in counts and "@" in text:
        text, counts["email"] = _sub(_EMAIL, text, "email")
    if "ip" in counts:
        n4 = n6 = 0
        if "." in text:
            text, n4 = _sub(_IPV4, text, "ip", lambda m: _public_ip(m.group()))
        if "::" in text or text.count(":") >= 7:
            text, n6 = _sub(_IPV6, text, "ip", lambda m: _public_ip(m.group()))
        counts["ip"] = n4 + n6
    has_digits = not text.isalpha()
    n_intl = n_nanp = 0
    # International numbers first: "+4915112345678" would otherwise pass for a card number.
    if "phone" in counts and has_digits and "+" in text:
        text, n_intl = _sub(_PHONE_INTL, text, "phone", _intl_phone)
    if "credit_card" in counts and has_digits:
        text, counts["credit_card"] = _sub(_CARD, text, "credit_card", _card)
    if "phone" in counts and has_digits:
        text, n_nanp = _sub(_PHONE_NANP, text, "phone")
        counts["phone"] = n_intl + n_nanp
    return text, counts
