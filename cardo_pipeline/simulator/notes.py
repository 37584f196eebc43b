"""Servicer notes: free text a servicer keeps on a loan, either short (<= 300 bytes) or long (>= 3,000 bytes).

Long notes are a dated log of varied entries (contacts, promises, documents, valuations) so they are not
highly repetitive and, with the column's STORAGE EXTERNAL, are always stored out of line (TOASTed).
"""

from __future__ import annotations

import random
from datetime import date, timedelta

from cardo_pipeline.simulator.changes import LONG_NOTE_MIN_BYTES, SHORT_NOTE_MAX_BYTES

AGENTS = ("A. Keller", "M. Rossi", "L. Dupont", "S. García", "J. de Vries", "R. Sousa", "K. Braun",
          "E. Conti", "P. Martin", "T. Jansen", "C. López", "N. Ferreira")  # fmt: skip
CHANNELS = ("phone", "email", "letter", "SMS", "portal message", "branch visit", "video call")
REASONS = ("reduced working hours", "a late salary payment", "an unexpected car repair", "a medical expense",
           "a delayed customer invoice", "seasonal revenue dip", "a change of bank account",
           "a family emergency", "a dispute over a direct debit", "temporary unemployment",
           "a tax payment falling in the same week", "a holiday abroad", "moving house")  # fmt: skip
DOCUMENTS = ("payslips for the last three months", "the latest tax return", "a bank statement",
             "the updated insurance certificate", "the company's interim accounts", "a proof of address",
             "the employer's confirmation letter", "the vehicle registration",
             "the energy performance certificate", "a signed direct-debit mandate")  # fmt: skip

_ENTRIES = (
    "Contacted borrower by {channel} about instalment of EUR {amount}; borrower cited {reason}.",
    "Borrower promised to pay EUR {amount} by {date}; promise logged, follow-up set for {date2}.",
    "Received {document}; filed under reference {ref}.",
    "No answer by {channel}; left a message asking for a call back before {date}.",
    "Direct debit of EUR {amount} returned unpaid (return code {code}); presented again on {date}.",
    "Borrower asked about a payment holiday of {months} months; explained the eligibility criteria.",
    "Agreed a repayment plan: EUR {amount} on top of the monthly instalment for {months} months.",
    "Updated contact details after {channel} from the borrower; old number no longer in service.",
    "Desktop valuation requested for the collateral; estimate EUR {value} ({pct}% of the last appraisal).",
    "Reminder letter {ref} sent; second reminder due {date} if still unpaid.",
    "Borrower disputes EUR {amount} of late fees; case {ref} opened with customer care.",
    "Hardship review completed: income verified at EUR {income} a year, expenses reviewed, terms unchanged.",
    "Partial payment of EUR {amount} received on {date}, allocated to the oldest unpaid instalment.",
    "Insurance on the collateral confirmed valid until {date}; policy {ref}.",
    "Case reviewed by {agent2}; keep in standard servicing, no referral to recoveries for now.",
    "Borrower reports {reason}; expects to be back on schedule from {date}.",
    "Requested {document} by {channel}; reminder set for {date}.",
    "Field visit on {date}: property occupied and in good condition, borrower present.",
)


class NoteWriter:
    """Writes notes from the simulator's RNG, so a seed gives the same notes every run."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def _entry(self, day: date) -> str:
        r = self.rng
        text = r.choice(_ENTRIES).format(
            channel=r.choice(CHANNELS),
            amount=f"{r.uniform(40, 4_000):.2f}",
            reason=r.choice(REASONS),
            date=(day + timedelta(days=r.randint(3, 30))).isoformat(),
            date2=(day + timedelta(days=r.randint(31, 60))).isoformat(),
            document=r.choice(DOCUMENTS),
            ref=f"{r.choice('ABCDEFGHKLMNPRSTVZ')}{r.randint(10_000, 999_999)}",
            code=r.choice(("AC04", "AM04", "MD06", "MS03", "AC06")),
            months=r.randint(2, 12),
            value=f"{r.randint(40, 900) * 1000:,}",
            pct=r.randint(78, 125),
            income=f"{r.randint(14, 140) * 1000:,}",
            agent2=r.choice(AGENTS),
        )
        return f"{day.isoformat()} [{r.choice(AGENTS)}] {text}"

    def short(self, day: date) -> str:
        note = self._entry(day)
        while len(note.encode("utf-8")) > SHORT_NOTE_MAX_BYTES:  # the longest templates can overflow
            note = self._entry(day)
        return note

    def long(self, day: date, previous: str | None = None) -> str:
        """A long log ending on `day`; when `previous` is given, new entries are appended to it."""
        entries: list[str] = [previous] if previous else []
        size = len(previous.encode("utf-8")) if previous else 0
        target = max(size + 200, LONG_NOTE_MIN_BYTES + self.rng.randint(0, 3_000))
        cursor = day - timedelta(days=self.rng.randint(200, 700)) if previous is None else day
        while size < target:
            entry = self._entry(cursor)
            entries.append(entry)
            size += len(entry.encode("utf-8")) + 1
            cursor = min(day, cursor + timedelta(days=self.rng.randint(1, 25)))
        return "\n".join(entries)
