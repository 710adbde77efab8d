"""An aiosmtpd server that writes every message it receives to a directory.

Usage: python3 aiosmtpd_sink.py DIRECTORY

Listens on 127.0.0.1 on a free port and prints "PORT <n>" once listening.
For message number N it writes N.json (envelope) and then N.eml (the DATA
content exactly as aiosmtpd un-stuffed it, CRLF line endings included), so a
reader that sees N.eml can also read N.json.
"""

import asyncio
import json
import os
import sys

from aiosmtpd.smtp import SMTP


class DirectorySink:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.directory, f"{self.count:04d}")
        with open(base + ".json", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos}, f)
        with open(base + ".tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(base + ".tmp", base + ".eml")
        return "250 2.0.0 OK"


async def main():
    handler = DirectorySink(sys.argv[1])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="aiosmtpd.test"), "127.0.0.1", 0
    )
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


asyncio.run(main())
