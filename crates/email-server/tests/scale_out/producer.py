"""A producer process for tests/scale_out.rs: enqueues COUNT emails the way
docs/queue-record.md tells a non-Rust producer to (v1 records, XADDed to
{NAME}:stream under the field `record`), in pipelined chunks.

Usage: producer.py REDIS_URL NAME COUNT TAG [CHUNK [PAUSE_MS]]

CHUNK emails go in one pipeline (default 100), with PAUSE_MS milliseconds
between chunks (default 0), to spread the emails over time. Each email has its own Message-ID and recipient. After each chunk has been
acknowledged by Redis (the durability point) it prints one line per email,
"ID MESSAGE-ID", so the test knows exactly which emails were enqueued.
Needs the `redis` package from PyPI.
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
    """A UUIDv7 (RFC 9562), as in tests/support/py_producer.py."""
    ms = time.time_ns() // 1_000_000
    value = (ms & ((1 << 48) - 1)) << 80
    value |= int.from_bytes(os.urandom(10), "big") & ((1 << 80) - 1)
    value &= ~(0xF << 76)
    value |= 0x7 << 76  # version 7
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def record(tag: str, i: int) -> tuple[dict, str]:
    to = f"{tag}-{i}@example.com"
    message_id = f"{tag}-{i}-{uuid.uuid4().hex}@scale.test"
    msg = EmailMessage()
    msg["From"] = "Scale Test <scale@example.com>"
    msg["To"] = to
    msg["Subject"] = f"{tag} #{i}"
    msg["Message-ID"] = f"<{message_id}>"
    msg.set_content(f"Email {i} from producer {tag}.\n.a line starting with a dot\n")
    raw = msg.as_bytes(policy=email.policy.SMTP)  # CRLF line endings
    now = int(time.time() * 1000)  # integers: floats are rejected
    rec = {
        "v": 1,
        "id": uuid7(),
        "created_at": now,
        "not_before": now,
        "envelope": {"from": "scale@example.com", "to": [to]},
        "message": base64.b64encode(raw).decode("ascii"),
        "tags": {"producer": tag},
    }
    return rec, message_id


def main() -> None:
    url, name, count, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    chunk = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    pause = int(sys.argv[6]) / 1000 if len(sys.argv) > 6 else 0.0
    r = redis.Redis.from_url(url)
    stream = f"{name}:stream"
    done = 0
    while done < count:
        if done and pause:
            time.sleep(pause)
        n = min(chunk, count - done)
        batch = [record(tag, done + k) for k in range(n)]
        pipe = r.pipeline(transaction=False)
        for rec, _ in batch:
            pipe.xadd(stream, {"record": json.dumps(rec)})
        pipe.execute()  # raises if any XADD failed
        sys.stdout.write("".join(f"{rec['id']} {mid}\n" for rec, mid in batch))
        sys.stdout.flush()
        done += n


if __name__ == "__main__":
    main()
