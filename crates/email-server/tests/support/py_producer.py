"""Enqueues one email the way docs/queue-record.md tells a non-Rust producer
to: a v1 record, XADDed to {name}:stream under the field `record`.

Usage: py_producer.py REDIS_URL NAME TO
Prints the email's id. Needs the `redis` package from PyPI.
"""

import base64
import email.policy
import json
import os
import sys
import time
import uuid
from email.message import EmailMessage

import redis


def uuid7() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version, random bits.
    Python 3.14 has uuid.uuid7(); this works on older versions too."""
    ms = time.time_ns() // 1_000_000
    value = (ms & ((1 << 48) - 1)) << 80
    value |= int.from_bytes(os.urandom(10), "big") & ((1 << 80) - 1)
    value &= ~(0xF << 76)
    value |= 0x7 << 76  # version 7
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def main() -> None:
    url, name, to = sys.argv[1], sys.argv[2], sys.argv[3]
    msg = EmailMessage()
    msg["From"] = "Python Shop <py@example.com>"
    msg["To"] = to
    msg["Subject"] = "Hello from Python"
    msg["Message-ID"] = f"<{uuid.uuid4()}@example.com>"
    msg.set_content("Sent through the Redis queue.\n.a line starting with a dot\n")
    raw = msg.as_bytes(policy=email.policy.SMTP)  # CRLF line endings

    now = int(time.time() * 1000)  # integers: floats are rejected
    record = {
        "v": 1,
        "id": uuid7(),
        "created_at": now,
        "not_before": now,
        "envelope": {"from": "py@example.com", "to": [to]},
        "message": base64.b64encode(raw).decode("ascii"),
        "idempotency_key": f"py-{uuid.uuid4()}",
        "priority": 1,
        "tags": {"producer": "python"},
    }
    r = redis.Redis.from_url(url)
    r.xadd(f"{name}:stream", {"record": json.dumps(record)})
    print(record["id"])


if __name__ == "__main__":
    main()
