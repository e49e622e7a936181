"""User mapping: LOGIN in every form, AUTHENTICATE PLAIN (initial response and
continuation line, authzid and authcid) and LOGIN; the password untouched and never in an
error; ``upstream_user`` set and undone."""

from __future__ import annotations

import base64
import dataclasses
import logging

import pytest

from imapproxy.filters import PASS, ClientLineView, Reject, Replace
from imapproxy.filters.rewrite_users import UserMap
from imapproxy.wire import FrameKind, Secret

from .rewrite_helpers import cmd, rewrite, session, tagged

DOMAIN = {"users": {"add_domain": "example.com"}}
PASSWORD = b"S3cret pass"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def auth_line(tag: bytes, data: bytes) -> ClientLineView:
    return ClientLineView(FrameKind.AUTH_DATA, tag, Secret(data), len(data))


@pytest.mark.parametrize(
    ("users", "name", "mapped"),
    [
        ({"add_domain": "example.com"}, "alice", "alice@example.com"),
        ({"add_domain": "example.com"}, "bob@other.org", "bob@other.org"),
        ({"strip_domain": True}, "alice@example.com", "alice"),
        ({"strip_domain": True}, "alice", "alice"),
        ({"table": {"alice": "a.smith"}}, "alice", "a.smith"),
        ({"table": {"alice": "a.smith"}}, "carol", "carol"),
        (
            {"regex": {"match": r"(\w+)@old\.org", "replace": r"\1@new.org"}},
            "x@old.org",
            "x@new.org",
        ),
        (
            {"regex": {"match": r"(\w+)@old\.org", "replace": r"\1@new.org"}},
            "x@old.orgs",
            "x@old.orgs",
        ),
    ],
)
def test_each_mapping(users: dict[str, object], name: str, mapped: str) -> None:
    f = rewrite({"users": users})
    assert f.logins is not None
    assert f.logins.users.map(name) == mapped


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"a1 LOGIN alice pw\r\n", b"a1 LOGIN alice@example.com pw\r\n"),
        (b'a1 LOGIN "alice" "S3cret pass"\r\n', b'a1 LOGIN "alice@example.com" "S3cret pass"\r\n'),
        (
            b"a1 LOGIN {5}\r\nalice {11}\r\nS3cret pass\r\n",
            b'a1 LOGIN "alice@example.com" {11}\r\nS3cret pass\r\n',
        ),
        (b"a1 login ALICE pw\r\n", b"a1 login ALICE@example.com pw\r\n"),
    ],
)
def test_login_forms(raw: bytes, expected: bytes) -> None:
    f = rewrite(DOMAIN)
    s = session()
    assert f.command(cmd(raw), s) == Replace(expected)
    assert s.upstream_user == expected.split(b" ")[2].strip(b'"').decode()


def test_login_unchanged_and_malformed_pass() -> None:
    f = rewrite(DOMAIN)
    s = session()
    assert f.command(cmd(b"a1 LOGIN bob@x.org pw\r\n"), s) is PASS
    assert f.command(cmd(b"a2 LOGIN onlyone\r\n"), s) is PASS
    assert s.upstream_user is None


def test_upstream_user_undone_when_the_server_refuses() -> None:
    f = rewrite(DOMAIN)
    s = session()
    f.command(cmd(b"a1 LOGIN alice pw\r\n"), s)
    assert s.upstream_user == "alice@example.com"
    f.response(tagged(b"a1", "NO", b"[AUTHENTICATIONFAILED] no"), s)
    assert s.upstream_user is None
    f.command(cmd(b"a2 LOGIN alice pw\r\n"), s)
    f.response(tagged(b"a2", "OK", b"in"), s)
    assert s.upstream_user == "alice@example.com"


def plain(authzid: bytes, authcid: bytes, password: bytes = PASSWORD) -> bytes:
    return b64(authzid + b"\0" + authcid + b"\0" + password)


@pytest.mark.parametrize(
    ("authzid", "authcid", "new_authzid", "new_authcid"),
    [
        (b"", b"alice", b"", b"alice@example.com"),
        (b"alice", b"alice", b"alice@example.com", b"alice@example.com"),
        (b"alice", b"admin@example.com", b"alice@example.com", b"admin@example.com"),
    ],
)
def test_authenticate_plain_initial_response(
    authzid: bytes, authcid: bytes, new_authzid: bytes, new_authcid: bytes
) -> None:
    f = rewrite(DOMAIN)
    s = session()
    got = f.command(cmd(b"a1 AUTHENTICATE PLAIN " + plain(authzid, authcid) + b"\r\n"), s)
    assert got == Replace(b"a1 AUTHENTICATE PLAIN " + plain(new_authzid, new_authcid) + b"\r\n")
    assert s.upstream_user == new_authcid.decode()


def test_authenticate_plain_continuation_line() -> None:
    f = rewrite(DOMAIN)
    s = session()
    assert f.command(cmd(b"a1 authenticate plain\r\n"), s) is PASS
    line = auth_line(b"a1", plain(b"", b"alice") + b"\r\n")
    assert f.client_line(line, s) == Replace(plain(b"", b"alice@example.com") + b"\r\n")
    assert s.upstream_user == "alice@example.com"
    # only the first line of the exchange: a second is not touched
    assert f.client_line(auth_line(b"a1", plain(b"", b"bob") + b"\r\n"), s) is PASS


def test_authenticate_cancelled_and_other_tags_pass() -> None:
    f = rewrite(DOMAIN)
    s = session()
    f.command(cmd(b"a1 AUTHENTICATE PLAIN\r\n"), s)
    assert f.client_line(auth_line(b"zz", plain(b"", b"alice") + b"\r\n"), s) is PASS
    assert f.client_line(auth_line(b"a1", b"*\r\n"), s) is PASS
    assert f.command(cmd(b"a2 AUTHENTICATE PLAIN =\r\n"), s) is PASS
    assert f.command(cmd(b"a3 AUTHENTICATE PLAIN !!notbase64\r\n"), s) is PASS


def test_authenticate_login_mechanism() -> None:
    f = rewrite(DOMAIN)
    s = session()
    assert f.command(cmd(b"a1 AUTHENTICATE LOGIN " + b64(b"alice") + b"\r\n"), s) == Replace(
        b"a1 AUTHENTICATE LOGIN " + b64(b"alice@example.com") + b"\r\n"
    )
    f.command(cmd(b"a2 AUTHENTICATE LOGIN\r\n"), s)
    got = f.client_line(auth_line(b"a2", b64(b"alice") + b"\r\n"), s)
    assert got == Replace(b64(b"alice@example.com") + b"\r\n")
    # the password line after it is never touched
    assert f.client_line(auth_line(b"a2", b64(PASSWORD) + b"\r\n"), s) is PASS


def test_mechanisms_that_cannot_carry_a_mapped_name_are_refused() -> None:
    f = rewrite(DOMAIN)
    got = f.command(cmd(b"a1 AUTHENTICATE CRAM-MD5\r\n"), session())
    assert isinstance(got, Reject) and got.code == "CANNOT"


def test_the_password_is_in_no_error_and_no_log(caplog: pytest.LogCaptureFixture) -> None:
    """A mapping that raises (a table value that is not text: impossible through the
    config, forced here) and a malformed login: the exception says nothing of the
    password."""
    caplog.set_level(logging.DEBUG)
    f = rewrite(DOMAIN)
    assert f.logins is not None
    f.logins.users = UserMap(table={"alice": None})  # type: ignore[dict-item]
    with pytest.raises(Exception) as info:
        f.command(cmd(b'a1 LOGIN "alice" "S3cret pass"\r\n'), session())
    assert b"S3cret" not in str(info.value).encode() and "S3cret" not in repr(info.value)
    bad = b'a2 LOGIN alice "S3cret pass\r\n'
    f2 = rewrite(DOMAIN)
    with pytest.raises(ValueError) as info2:
        f2.command(dataclasses.replace(cmd(b"a2 LOGIN alice x\r\n"), raw=bad), session())
    assert "S3cret" not in str(info2.value)
    assert "S3cret" not in caplog.text
