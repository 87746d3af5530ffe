"""PII scrubbing: each kind is replaced where it is personal data and left alone where it only
looks like it (private addresses, non-Luhn numbers, dates, versions, prices)."""

from __future__ import annotations

import time

import pytest

from lmforge.curate.pii import PII_KINDS, luhn_ok, scrub_pii
from lmforge.errors import LmforgeError


@pytest.mark.parametrize("text,expected", [
    ("Write to john.doe+news@example.co.uk today.", "Write to <EMAIL> today."),
    ("Ask JANE_99@mail.example.com, or ann@ex-ample.org.", "Ask <EMAIL>, or <EMAIL>."),
])
def test_emails_replaced(text, expected):
    out, counts = scrub_pii(text)
    assert out == expected and counts["email"] == expected.count("<EMAIL>")


def test_email_lookalikes_kept():
    text = "user@localhost, a@b, foo@bar.c, @handle and a decorator @property"
    assert scrub_pii(text) == (text, {"email": 0, "phone": 0, "ip": 0, "credit_card": 0})


@pytest.mark.parametrize("phone", [
    "+1 415-555-2671", "+44 20 7946 0958", "+4915112345678", "+33 (1) 42 68 53 00",
    "(415) 555-2671", "415.555.2671", "415-555-2671", "1-800-555-0199", "+1 (415) 555 2671",
])
def test_phones_replaced(phone):
    out, counts = scrub_pii(f"Call {phone} now.")
    assert out == "Call <PHONE> now." and counts["phone"] == 1


@pytest.mark.parametrize("text", [
    "Released 2024-01-15, updated 12/25/2023.",
    "In 1999 and 2001 the price was $1,234.56 or 1,000,000 yen.",
    "Python 3.11.7 and openssl 1.1.1; build 20240115.",
    "Order number 5551234567 and ISBN 978-3-16-148410-0.",
    "It starts at 10:30:00 and lasts 45 minutes; extension 1234.",
    "Compute 3 + 4 = 7, or +12 degrees.",
])
def test_phone_lookalikes_kept(text):
    assert scrub_pii(text)[0] == text


def test_public_ips_replaced_private_kept():
    text = ("Public 8.8.8.8 and 2606:4700:4700::1111. Private 127.0.0.1, 10.0.0.5, "
            "192.168.1.1, 172.16.0.1, ::1, fe80::1, docs 192.0.2.10 and 2001:db8::1, "
            "not an address 999.1.1.1, version v1.2.3.4, time 10:30:00.")
    out, counts = scrub_pii(text, kinds=["ip"])
    assert out.startswith("Public <IP> and <IP>. Private 127.0.0.1, 10.0.0.5, 192.168.1.1")
    assert counts == {"ip": 2}
    for kept in ("172.16.0.1", "::1", "fe80::1", "192.0.2.10", "2001:db8::1", "999.1.1.1",
                 "v1.2.3.4", "10:30:00"):
        assert kept in out


def test_cards_need_luhn():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    text = ("Cards 4111 1111 1111 1111, 4111-1111-1111-1111, 378282246310005; "
            "not 4111 1111 1111 1112, 0000 0000 0000 0000 or 1234567890123.")
    out, counts = scrub_pii(text, kinds=("credit_card",))
    assert out == ("Cards <CREDIT_CARD>, <CREDIT_CARD>, <CREDIT_CARD>; "
                   "not 4111 1111 1111 1112, 0000 0000 0000 0000 or 1234567890123.")
    assert counts == {"credit_card": 3}


def test_kinds_select_and_unknown_kind_fails():
    text = "Mail a@example.com or call +44 20 7946 0958 from 8.8.8.8."
    out, counts = scrub_pii(text, kinds=["email"])
    assert out == "Mail <EMAIL> or call +44 20 7946 0958 from 8.8.8.8."
    assert counts == {"email": 1}
    out, counts = scrub_pii(text)
    assert out == "Mail <EMAIL> or call <PHONE> from <IP>."
    assert counts == {"email": 1, "phone": 1, "ip": 1, "credit_card": 0}
    assert set(PII_KINDS) == {"email", "phone", "ip", "credit_card"}
    with pytest.raises(LmforgeError, match="valid kinds: email, phone, ip, credit_card"):
        scrub_pii(text, kinds=["email", "ssn"])


def test_no_catastrophic_backtracking():
    start = time.perf_counter()
    for bad in ("a" * 50_000 + "@", "1-" * 25_000, ":" * 50_000, "+1 " * 20_000,
                "1." * 25_000, "x@" * 25_000):
        scrub_pii(bad)
    assert time.perf_counter() - start < 5  # linear patterns: well under a second each
