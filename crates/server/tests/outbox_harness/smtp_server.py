"""A real SMTP server for the outbox tests (Debian's python3-aiosmtpd).

Usage: smtp_server.py HOST OUTDIR CERT KEY USER PASSWORD MODE
MODE starttls: plain connection, STARTTLS required, then AUTH (PLAIN/LOGIN) required.
MODE tls: TLS from the first byte, AUTH required.
Prints the port it listens on, then writes each accepted message as OUTDIR/NNNN.json
(envelope, headers, text part, attachments; parsed by Python's email package).
Refuses every recipient named bounce@… for good (550).
"""
import asyncio
import email
import json
import logging
import os
import ssl
import sys
import warnings
from email import policy

# Quiet in the test output: aiosmtpd's deprecation notes and its warning about
# AUTH without STARTTLS (in the implicit TLS mode TLS is on from the first byte).
warnings.simplefilter("ignore")
logging.disable(logging.WARNING)

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

host, outdir, cert, key, user, password, mode = sys.argv[1:8]
count = 0


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # An address the server refuses for good (a bounce).
        if address.startswith("bounce@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        global count
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        text = None
        attachments = []
        for part in msg.walk():
            if part.is_multipart():
                continue
            name = part.get_filename()
            if name:
                attachments.append({
                    "filename": name,
                    "content_type": part.get_content_type(),
                    "content": part.get_payload(decode=True).decode("utf-8", "replace"),
                })
            elif part.get_content_type() == "text/plain" and text is None:
                text = part.get_content()
        count += 1
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "subject": str(msg["subject"]),
            "message_id": str(msg["message-id"]),
            "text": text,
            "attachments": attachments,
            "tls": session.ssl is not None or mode == "tls",
            "authenticated": bool(session.authenticated),
        }
        path = os.path.join(outdir, "%04d.json" % count)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == user
        and auth_data.password.decode() == password
    )
    return AuthResult(success=ok, handled=False)


async def main():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def factory():
        if mode == "starttls":
            return SMTP(Handler(), hostname="drawbridge-test", tls_context=ctx,
                        require_starttls=True, authenticator=authenticator,
                        auth_required=True, auth_require_tls=True)
        return SMTP(Handler(), hostname="drawbridge-test", authenticator=authenticator,
                    auth_required=True, auth_require_tls=False)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host=host, port=0,
                                      ssl=ctx if mode == "tls" else None)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
