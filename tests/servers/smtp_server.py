#!/usr/bin/python3
"""SMTP servers for opsplan's tests, on top of Debian's python3-aiosmtpd.

Starts three listeners on free loopback ports, all offering AUTH PLAIN and LOGIN:

  plain     no TLS at all, AUTH offered anyway (auth_require_tls=False)
  starttls  plaintext greeting, STARTTLS offered
  implicit  TLS from the first byte (SMTPS)

Passwords accepted for --user are given with --password, once or more.
A certificate authority and a server certificate for 127.0.0.1 and localhost are made at
start in --dir with the openssl command. Every command received is appended to
--dir/commands.log as "<listener> <VERB> [argument]" (AUTH logs its mechanism only), and
every accepted message is written to --dir/messages/<n>.json with its raw text and its
decoded From, To and Subject.

When ready, one JSON line goes to stdout: the ports and the CA file. The servers stop when
stdin closes or on SIGTERM.
"""

import argparse
import asyncio
import email
import email.policy
import json
import logging
import os
import ssl
import subprocess
import sys
import threading

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def make_certificates(folder):
    ca_key = os.path.join(folder, "ca.key")
    ca_pem = os.path.join(folder, "ca.pem")
    key = os.path.join(folder, "server.key")
    csr = os.path.join(folder, "server.csr")
    pem = os.path.join(folder, "server.pem")
    ext = os.path.join(folder, "server.ext")

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key,
            "-out", ca_pem, "-days", "2", "-subj", "/CN=opsplan test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", "/CN=localhost")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "basicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key,
            "-CAcreateserial", "-out", pem, "-days", "2", "-extfile", ext)
    return ca_pem, pem, key


class Recorder:
    def __init__(self, folder):
        self.folder = folder
        self.lock = threading.Lock()
        self.count = 0
        os.makedirs(os.path.join(folder, "messages"), exist_ok=True)
        self.log = open(os.path.join(folder, "commands.log"), "a", buffering=1)

    def command(self, listener, verb, argument):
        if verb == "AUTH":
            # The initial response of AUTH PLAIN carries the password: log the mechanism.
            argument = (argument or "").split(" ")[0]
        line = f"{listener} {verb} {argument or ''}".rstrip()
        with self.lock:
            self.log.write(line + "\n")

    def message(self, listener, envelope):
        raw = envelope.original_content or envelope.content
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        parsed = email.message_from_string(raw, policy=email.policy.default)
        with self.lock:
            self.count += 1
            path = os.path.join(self.folder, "messages", f"{self.count}.json")
        record = {
            "listener": listener,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(parsed["From"]),
            "to": str(parsed["To"]),
            "subject": str(parsed["Subject"]),
            "raw": raw,
        }
        temporary = path + ".tmp"
        with open(temporary, "w") as f:
            json.dump(record, f)
        os.replace(temporary, path)


class Handler:
    def __init__(self, listener, recorder):
        self.listener = listener
        self.recorder = recorder

    async def handle_DATA(self, server, session, envelope):
        self.recorder.message(self.listener, envelope)
        return "250 OK: queued by the opsplan test server"


class Authenticator:
    def __init__(self, user, passwords):
        self.user = user.encode()
        self.passwords = [password.encode() for password in passwords]

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == self.user
              and auth_data.password in self.passwords)
        return AuthResult(success=ok, handled=False)


class LoggingSMTP(SMTP):
    """An aiosmtpd server that records the verb of every command it is sent."""

    def __init__(self, *args, listener, recorder, **kwargs):
        super().__init__(*args, **kwargs)
        for verb, method in list(self._smtp_methods.items()):
            self._smtp_methods[verb] = self._logged(verb, method, listener, recorder)

    @staticmethod
    def _logged(verb, method, listener, recorder):
        async def logged(argument):
            recorder.command(listener, verb, argument)
            return await method(argument)
        return logged


async def serve(arguments):
    folder = arguments.dir
    ca_pem, cert, key = make_certificates(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    recorder = Recorder(folder)
    authenticator = Authenticator(arguments.user, arguments.password)
    loop = asyncio.get_running_loop()

    def factory(listener, **options):
        return lambda: LoggingSMTP(
            Handler(listener, recorder),
            listener=listener,
            recorder=recorder,
            hostname="opsplan-test",
            authenticator=authenticator,
            auth_exclude_mechanism=["CRAM-MD5"],
            loop=loop,
            **options,
        )

    plain = await loop.create_server(
        factory("plain", auth_require_tls=False), "127.0.0.1", 0)
    starttls = await loop.create_server(
        factory("starttls", tls_context=context, auth_require_tls=True), "127.0.0.1", 0)
    implicit = await loop.create_server(
        factory("implicit", auth_require_tls=False), "127.0.0.1", 0, ssl=context)

    def port(server):
        return server.sockets[0].getsockname()[1]

    print(json.dumps({
        "plain": port(plain),
        "starttls": port(starttls),
        "implicit": port(implicit),
        "ca": ca_pem,
    }), flush=True)

    # Stop when the test closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)
    for server in (plain, starttls, implicit):
        server.close()


def main():
    # aiosmtpd warns about its own deprecated session field on every AUTH; errors still show.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", action="append", required=True,
                        help="an accepted password; may be given more than once")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
