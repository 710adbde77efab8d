#!/usr/bin/env python3
"""Reads emails rendered by the Rust crate back with Python's `email` package.

Usage: pycheck.py DIR

DIR holds NNNN.eml (rendered bytes) and NNNN.json (what the message should
say) pairs, written by tests/python_crosscheck.rs. Every message is parsed
with the modern policy (email.policy.default), plus compat32 for exact
display names (see mailboxes), and compared field by field.
Prints one line per mismatch, then "N passed, M failed"; exits 1 on any
mismatch. Standard library only.
"""

import email
import email.header
import email.policy
import email.utils
import json
import sys
from pathlib import Path

ADDRESS_FIELDS = ("From", "Sender", "Reply-To", "To", "Cc")

def short(value, limit=160):
    """A repr short enough for one report line."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def first_difference(a, b):
    """Where two strings or byte strings first differ, with context."""
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (
        f"lengths {len(a)} vs {len(b)}, first difference at {n}: "
        f"expected {short(a[max(0, n - 20):n + 40])}, got {short(b[max(0, n - 20):n + 40])}"
    )


def newlines(text):
    """Bodies are compared with \\n line breaks, as the builder stores them.
    Only CRLF is mapped: a lone CR in a decoded body would be a bug."""
    return text.replace("\r\n", "\n")


def mailboxes(msg, legacy, field):
    """(display name, addr-spec) pairs as read by both Python APIs.

    policy.default gives the addr-specs, but its display names are lossy:
    every whitespace run becomes one space, and before CPython gh-128110
    (python/cpython#130749) the space between adjacent encoded words, which
    RFC 2047 section 6.2 says to drop, is kept. So the exact names come from
    the compat32 API (getaddresses + decode_header), which follows 6.2, and
    the policy.default names are compared with all whitespace removed.
    """
    header = msg[field]
    modern = [] if header is None else [[a.display_name, a.addr_spec] for a in header.addresses]
    exact = [
        [str(email.header.make_header(email.header.decode_header(name))), addr]
        for name, addr in email.utils.getaddresses(legacy.get_all(field, []))
    ]
    # Python spells "no display name" as ""; the expectations use null.
    return [[n or None, a] for n, a in modern], [[n or None, a] for n, a in exact]


def squash(boxes):
    return [["".join(n.split()) if n else None, a] for n, a in boxes]


def body(msg, subtype):
    part = msg.get_body(preferencelist=(subtype,))
    return None if part is None else newlines(part.get_content())


def attachments(msg):
    """(file name, Content-ID, media type, bytes, Content-Type name) of
    every leaf part with a file name, in document order."""
    found = []
    for part in msg.walk():
        if part.is_multipart() or part.get_filename() is None:
            continue
        cid = part["Content-ID"]
        cid = str(cid).strip().removeprefix("<").removesuffix(">") if cid else None
        name = part["Content-Type"].params.get("name")
        data = part.get_payload(decode=True)
        found.append((part.get_filename(), cid, part.get_content_type(), data, name))
    return found


def defects(msg):
    """Anything Python's parser flagged, on parts or on header values."""
    out = []
    for part in msg.walk():
        out += [f"{type(d).__name__}: {d}" for d in part.defects]
        for name, value in part.items():
            out += [f"{name}: {type(d).__name__}: {d}" for d in getattr(value, "defects", ())]
    return out


def check(raw, exp):
    """Yields one description per disagreement between `raw` and `exp`."""
    lines = raw.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        yield "bare CR or LF in the rendered bytes"
    if any(len(line) > 998 for line in lines):
        yield "line longer than 998 octets"

    msg = email.message_from_bytes(raw, policy=email.policy.default)
    legacy = email.message_from_bytes(raw, policy=email.policy.compat32)
    for d in defects(msg):
        yield f"parser defect: {d}"
    if "Bcc" in msg:
        yield f"Bcc header present: {short(str(msg['Bcc']))}"

    subject = msg["Subject"]
    subject = None if subject is None else str(subject)
    if subject != exp["subject"]:
        yield f"subject: expected {short(exp['subject'])}, got {short(subject)}"

    for field in ADDRESS_FIELDS:
        want = exp[field.lower()]
        modern, exact = mailboxes(msg, legacy, field)
        if want != exact:
            yield f"{field}: expected {short(want, 400)}, got {short(exact, 400)}"
        elif squash(want) != squash(modern):
            yield f"{field} (policy.default): expected {short(want, 400)}, got {short(modern, 400)}"

    for subtype, key in (("plain", "text"), ("html", "html")):
        want, got = exp[key], body(msg, subtype)
        if want is None or got is None:
            if want != got:
                yield f"{key} body: expected {short(want)}, got {short(got)}"
        elif want != got:
            yield f"{key} body: {first_difference(want, got)}"

    want = [(a["filename"], a["cid"], a["type"], bytes.fromhex(a["hex"])) for a in exp["attachments"]]
    got = attachments(msg)
    if len(want) != len(got):
        yield f"attachments: expected {len(want)}, got {len(got)}: {short([g[0] for g in got])}"
    for i, (w, g) in enumerate(zip(want, got)):
        if w[0] != g[0]:
            yield f"attachment {i} filename: expected {short(w[0])}, got {short(g[0])}"
        if w[0] != g[4]:
            yield f"attachment {i} Content-Type name: expected {short(w[0])}, got {short(g[4])}"
        if w[1] != g[1]:
            yield f"attachment {i} content id: expected {short(w[1])}, got {short(g[1])}"
        if w[2] != g[2]:
            yield f"attachment {i} media type: expected {short(w[2])}, got {short(g[2])}"
        if w[3] != g[3]:
            yield f"attachment {i} ({short(w[0])}) bytes: {first_difference(w[3], g[3])}"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: pycheck.py DIR")
    passed = failed = 0
    for exp_path in sorted(Path(sys.argv[1]).glob("*.json")):
        exp = json.loads(exp_path.read_text(encoding="utf-8"))
        raw = exp_path.with_suffix(".eml").read_bytes()
        try:
            problems = list(check(raw, exp))
        except Exception as e:  # a crash is a mismatch too, not the end of the run
            problems = [f"exception: {type(e).__name__}: {e}"]
        for p in problems:
            print(f"{exp_path.stem} [{exp['label']}]: {p}")
        failed += bool(problems)
        passed += not problems
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
