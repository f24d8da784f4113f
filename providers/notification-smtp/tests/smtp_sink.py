"""aiosmtpd handler for the SMTP provider's tests: writes each received message as JSON.

Run as `python3 -m aiosmtpd -n -l 127.0.0.1:PORT -c smtp_sink.JsonDir OUT_DIR` with this folder on
PYTHONPATH. Each message becomes OUT_DIR/<n>.json, written to a temporary name and renamed, so a
reader never sees half a file.
"""

import email
import email.policy
import json
import os
import uuid


class JsonDir:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 1:
            parser.error("JsonDir takes the output folder")
        return cls(args[0])

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                       policy=email.policy.default)
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "message_id": str(msg["Message-ID"]),
            "text": text.get_content() if text is not None else None,
            "html": html.get_content() if html is not None else None,
        }
        name = uuid.uuid4().hex
        tmp = os.path.join(self.out_dir, "." + name)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.out_dir, name + ".json"))
        return "250 Message accepted for delivery"
