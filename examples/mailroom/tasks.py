"""Work Mailroom does after the response has been sent."""

from __future__ import annotations

import csv
import io
import json
import smtplib
from email.message import EmailMessage

from mailroom import config, db

CSV_HEADER = ["email", "name"]


class CsvImportError(ValueError):
    """The uploaded file is not a contact list Mailroom can import."""


def send_welcome_email(email: str) -> None:
    settings = config.settings
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = email
    message["Subject"] = "Welcome to Mailroom"
    message.set_content(f"Hi {email},\n\nthanks for signing up to Mailroom.\n")
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=10) as smtp:
        smtp.send_message(message)


async def audit(event: str, **details: object) -> None:
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO audit_log (event, details) VALUES (?, ?)",
            (event, json.dumps(details, sort_keys=True)),
        )


def parse_contacts(text: str) -> list[tuple[str, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [column.strip() for column in next(reader, [])]
    if header != CSV_HEADER:
        raise CsvImportError(f"expected header {','.join(CSV_HEADER)!r}, got {','.join(header)!r}")
    contacts = []
    for row in reader:
        if not row:
            continue
        if len(row) != len(CSV_HEADER):
            raise CsvImportError(
                f"line {reader.line_num}: expected {len(CSV_HEADER)} columns, got {len(row)}"
            )
        email, name = row
        contacts.append((email, name))
    return contacts


def import_csv(upload_id: int, text: str) -> None:
    """Store the contacts of an upload; a bad file marks the upload failed, then raises."""
    try:
        contacts = parse_contacts(text)
    except CsvImportError as exc:
        with db.connect() as conn:
            conn.execute(
                "UPDATE uploads SET status = 'failed', error = ? WHERE id = ?",
                (str(exc), upload_id),
            )
        raise
    with db.connect() as conn:
        conn.executemany(
            "INSERT INTO rows (upload_id, email, name) VALUES (?, ?, ?)",
            [(upload_id, email, name) for email, name in contacts],
        )
        conn.execute(
            "UPDATE uploads SET status = 'imported', row_count = ? WHERE id = ?",
            (len(contacts), upload_id),
        )
