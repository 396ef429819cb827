"""Unit tests, without sockets, for the HTTP endpoints and the access checks.

Covered: every route, status code and header of :class:`trio_broadcast.web.Site`,
HEAD, the order of the checks (400, 401, 405, 404), the token from a header or
the query, the Origin rules, the refusal log throttle, the new settings'
validation and command-line options, and the counters' byte arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trio_broadcast import access
from trio_broadcast.cli import (
    PROG,
    TOKEN_VARIABLE,
    build_parser,
    config_from_args,
    main,
    read_token,
)
from trio_broadcast.config import Config
from trio_broadcast.counters import Counters
from trio_broadcast.errors import StartupError
from trio_broadcast.frames import message_frame
from trio_broadcast.handshake import RequestHead
from trio_broadcast.web import Response, Site

TOKEN = "s3cret-token"
UPGRADE = (
    ("host", "example.org:8000"),
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
)


def request(
    target: str = "/", method: str = "GET", headers: tuple[tuple[str, str], ...] = ()
) -> RequestHead:
    return RequestHead(method=method, target=target, headers=headers)


def site(**settings: object) -> Site:
    return Site(
        Config(**settings),  # type: ignore[arg-type]
        health=lambda: {"status": "ok", "clients": 3, "uptime_s": 1.5, "stdin_open": True},
        metrics=lambda: (b"trio_broadcast_clients 3.0\n", "text/plain; version=0.0.4"),
    )


def header(response: Response, name: str) -> str | None:
    lines = response.encode().split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    values = [line.split(": ", 1)[1] for line in lines if line.split(": ", 1)[0] == name]
    return values[0] if values else None


# --- routes -------------------------------------------------------------------


def test_the_page_is_self_contained_html() -> None:
    response = site().respond(request("/"))
    assert response.status == 200
    assert response.content_type == "text/html; charset=utf-8"
    page = response.body.decode()
    assert page.startswith("<!doctype html>")
    assert "http://" not in page
    assert "https://" not in page
    assert "innerHTML" not in page
    assert header(response, "Referrer-Policy") == "no-referrer"
    assert "connect-src 'self'" in (header(response, "Content-Security-Policy") or "")


def test_healthz_is_json() -> None:
    response = site().respond(request("/healthz"))
    assert response.status == 200
    assert response.content_type == "application/json"
    assert json.loads(response.body) == {
        "status": "ok",
        "clients": 3,
        "uptime_s": 1.5,
        "stdin_open": True,
    }
    assert header(response, "Cache-Control") == "no-store"


def test_metrics_has_the_renderers_type() -> None:
    response = site().respond(request("/metrics"))
    assert (response.status, response.body) == (200, b"trio_broadcast_clients 3.0\n")
    assert header(response, "Content-Type") == "text/plain; version=0.0.4"


@pytest.mark.parametrize(
    "target", ["/nowhere", "/index.html", "/healthz/", "/metrics/x", "//healthz", "//metrics?x"]
)
def test_other_paths_get_404(target: str) -> None:
    assert site().respond(request(target)).status == 404


def test_an_absolute_url_is_routed_by_its_path() -> None:
    assert site().respond(request("http://example.org/healthz?x")).status == 200


def test_no_page_gets_404_but_the_rest_works() -> None:
    assert site(page=False).respond(request("/")).status == 404
    assert site(page=False).respond(request("/healthz")).status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_get_405_with_allow(method: str) -> None:
    response = site().respond(request("/healthz", method))
    assert response.status == 405
    assert header(response, "Allow") == "GET, HEAD"


@pytest.mark.parametrize("target", ["*", "example.org:80", ""])
def test_a_target_that_is_not_a_path_gets_400(target: str) -> None:
    assert site().respond(request(target)).status == 400


def test_what_the_client_sent_is_quoted_back_bounded_and_escaped() -> None:
    assert site().respond(request("/healthz", "M" * 5000)).body == (
        b"method " + b"M" * 99 + "… not allowed\n".encode()
    )
    assert (
        site().respond(request("/" + "p" * 5000)).body
        == b"no such page: /" + b"p" * 98 + "…\n".encode()
    )
    assert site().respond(request("/\x1b]0;x\x07")).body == b"no such page: /\\x1b]0;x\\x07\n"


def test_query_strings_are_ignored_for_routing() -> None:
    assert site().respond(request("/healthz?verbose=1")).status == 200


def test_head_keeps_the_headers_and_drops_the_body() -> None:
    response = site().respond(request("/", "HEAD"))
    full, head_only = response.encode(), response.encode(head_only=True)
    assert full.startswith(head_only)
    assert head_only.endswith(b"\r\n\r\n")
    assert f"Content-Length: {len(response.body)}\r\n".encode() in head_only
    assert full[len(head_only) :] == response.body


def test_every_response_says_connection_close() -> None:
    for target in ("/", "/healthz", "/metrics", "/nowhere"):
        assert header(site().respond(request(target)), "Connection") == "close"


# --- the token ------------------------------------------------------------------


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize("target", ["/", "/metrics", "/nowhere"])
def test_without_the_token_everything_but_healthz_gets_401(target: str) -> None:
    response = site(token=TOKEN).respond(request(target))
    assert response.status == 401
    assert header(response, "WWW-Authenticate") == 'Bearer realm="trio-broadcast"'
    assert TOKEN.encode() not in response.encode()


def test_healthz_stays_open() -> None:
    assert site(token=TOKEN).respond(request("/healthz")).status == 200


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/", bearer(TOKEN)),
        (f"/?token={TOKEN}", ()),
        (f"/?x=1&token={TOKEN}", ()),
        ("/", (("authorization", f"bearer   {TOKEN}  "),)),
        (f"/?token={TOKEN}", (("authorization", "Basic dXNlcjpwYXNz"),)),
    ],
    ids=["header", "query", "query-among-others", "header-case-and-spaces", "basic-then-query"],
)
def test_the_token_opens_the_page(target: str, headers: tuple[tuple[str, str], ...]) -> None:
    assert site(token=TOKEN).respond(request(target, headers=headers)).status == 200


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/", bearer("wrong")),
        ("/?token=wrong", ()),
        ("/?token=", ()),
        ("/", bearer(TOKEN[:-1])),
        ("/", bearer(TOKEN + "x")),
        ("/", (("authorization", TOKEN),)),
        ("/", (("authorization", f"Basic {TOKEN}"),)),
        (f"/?token={TOKEN}", bearer("wrong")),
    ],
    ids=["header", "query", "empty", "prefix", "longer", "no-scheme", "basic", "header-first"],
)
def test_a_wrong_token_gets_401(target: str, headers: tuple[tuple[str, str], ...]) -> None:
    assert site(token=TOKEN).respond(request(target, headers=headers)).status == 401


@pytest.mark.parametrize(
    ("method", "target", "token", "status"),
    [
        ("GET", "*", None, 400),
        ("POST", "*", None, 400),
        ("POST", "/nowhere", None, 401),
        ("POST", "/nowhere", TOKEN, 405),
        ("GET", "/nowhere", None, 401),
        ("GET", "/nowhere", TOKEN, 404),
        ("POST", "/healthz", None, 405),
    ],
)
def test_checks_run_in_order(method: str, target: str, token: str | None, status: int) -> None:
    headers = bearer(token) if token else ()
    assert site(token=TOKEN).respond(request(target, method, headers)).status == status


# --- WebSocket handshakes -------------------------------------------------------


def upgrade(*extra: tuple[str, str], target: str = "/") -> RequestHead:
    return request(target, headers=UPGRADE + extra)


def refusal(head: RequestHead, **settings: object) -> tuple[int, str] | None:
    found = access.check_handshake(head, Config(**settings))  # type: ignore[arg-type]
    return None if found is None else (found.status, found.reason)


def test_an_open_server_accepts_any_origin_or_none() -> None:
    assert refusal(upgrade()) is None
    assert refusal(upgrade(("origin", "https://evil.example"))) is None


def test_allowed_origins() -> None:
    allowed = {"allowed_origins": ("https://Good.example", "http://localhost:3000")}
    assert refusal(upgrade(("origin", "https://good.example")), **allowed) is None
    assert refusal(upgrade(("origin", "http://localhost:3000")), **allowed) is None
    assert refusal(upgrade(("origin", "https://evil.example")), **allowed) == (
        403,
        access.FORBIDDEN_ORIGIN,
    )
    assert refusal(upgrade(("origin", "http://localhost:3001")), **allowed) == (
        403,
        access.FORBIDDEN_ORIGIN,
    )
    assert refusal(upgrade(("origin", "null")), **allowed) == (403, access.FORBIDDEN_ORIGIN)
    # A client that is not a browser sends no Origin.
    assert refusal(upgrade(), **allowed) is None


def upgrade_via(host: str, *extra: tuple[str, str]) -> RequestHead:
    """An upgrade sent to ``host`` (the Host header)."""
    return request(headers=(("host", host), *UPGRADE[1:], *extra))


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8000", "[::1]:8000", "192.0.2.7:8000", "localhost:8000", "LocalHost"]
)
def test_the_servers_own_origin_is_allowed_when_dns_cannot_fake_its_host(host: str) -> None:
    allowed = {"allowed_origins": ("https://good.example",)}
    own = upgrade_via(host, ("origin", f"http://{host.lower()}"))
    assert refusal(own, **allowed) is None
    assert refusal(own, **allowed, certfile="c.pem", keyfile="k.pem") == (
        403,
        access.FORBIDDEN_ORIGIN,
    )
    assert access.own_origin(own, tls=True) == f"https://{host.lower()}"
    assert access.own_origin(request(), tls=False) is None


def test_dns_rebinding_does_not_pass_for_the_servers_own_origin() -> None:
    # A page from http://evil.example:8000, whose name now points at this server.
    rebound = upgrade_via("evil.example:8000", ("origin", "http://evil.example:8000"))
    allowed = {"allowed_origins": ("https://a.example",)}
    assert refusal(rebound, **allowed) == (403, access.FORBIDDEN_ORIGIN)
    # Unless the operator says the name is the server's own.
    for hosts in (("evil.example",), ("other.example", "EVIL.example:8000")):
        assert refusal(rebound, **allowed, allowed_hosts=hosts) is None
    for hosts in (("evil.example:9000",), ("example",), ("www.evil.example",)):
        # Refused for its host before its origin is even looked at.
        assert refusal(rebound, **allowed, allowed_hosts=hosts) == (403, access.FORBIDDEN_HOST)
    assert refusal(rebound, **allowed, host="evil.example") is None


def test_with_allowed_hosts_other_hosts_get_403_everywhere() -> None:
    guarded = site(allowed_hosts=("chat.example",))
    for target in ("/", "/healthz", "/metrics", "/nowhere"):
        for host in ("evil.example:8000", "chat.example.evil.example", ""):
            response = guarded.respond(request(target, headers=(("host", host),)))
            assert (response.status, response.body) == (
                403,
                b"host not allowed (see --allowed-host)\n",
            )
        assert guarded.respond(request(target)).status == 403  # no Host at all
    for host in ("chat.example:8000", "127.0.0.1:8000", "[::1]", "localhost"):
        assert guarded.respond(request("/healthz", headers=(("host", host),))).status == 200
    # Without allowed_hosts, any Host is served.
    assert site().respond(request("/healthz", headers=(("host", "evil.example"),))).status == 200
    for host in ("evil.example", "127.0.0.1"):
        assert refusal(upgrade_via(host), allowed_hosts=("chat.example",)) == (
            (403, access.FORBIDDEN_HOST) if host == "evil.example" else None
        )
    assert refusal(upgrade_via("evil.example")) is None


def test_the_host_is_checked_after_the_request_and_before_the_token() -> None:
    settings = {"token": TOKEN, "allowed_hosts": ("chat.example",)}
    evil = (("host", "evil.example"),)
    assert site(**settings).respond(request("*", headers=evil)).status == 400
    assert site(**settings).respond(request("/metrics", "POST", evil)).status == 403
    assert refusal(request("/", "POST", (*UPGRADE, *evil)), **settings) == (
        400,
        access.BAD_REQUEST,
    )
    assert refusal(upgrade_via("evil.example"), **settings) == (403, access.FORBIDDEN_HOST)


@pytest.mark.parametrize(
    ("host", "trusted"),
    [
        ("127.0.0.1", True),
        ("127.0.0.1:1", True),
        ("[::1]:8000", True),
        ("[2001:db8::1]", True),
        ("localhost:8000", True),
        ("chat.example:8443", True),
        ("CHAT.example", False),  # allowed with port 8443 only
        ("evil.example:8000", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("2130706433", False),  # a browser sends 127.0.0.1 for that
        ("::1", False),  # IPv6 must be in brackets
        ("localhost:0", False),
        ("", False),
        (None, False),
        ("h\u00e9.example", False),
    ],
)
def test_trusted_hosts(host: str | None, trusted: bool) -> None:
    config = Config(allowed_hosts=("chat.example:8443",))
    assert access.trusted_host(host, config) is trusted


def test_a_key_must_be_the_base64_of_16_bytes() -> None:
    without_key = UPGRADE[:-1]
    for key in ("AAAAAAAAAAAAAAAAAAAAAA==", "+/+/+/+/+/+/+/+/+/+/+w=="):
        assert refusal(request(headers=(*without_key, ("sec-websocket-key", key)))) is None
    for key in (
        "",
        "short",
        "dGhlIHNhbXBsZSBub25jZQ",  # no padding
        "dGhlIHNhbXBsZSBub25jZQ==dGhl",
        "!!!!!!!!!!!!!!!!!!!!!!==",
        "AAAAAAAAAAAAAAAAAAAA",  # 15 bytes
        "AAAAAAAAAAAAAAAAAAAAAAA=",  # 17 bytes
        "dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==",
        "AAAAAAAAAAAAAAAAAAAAAA\u00e9=",
    ):
        head = request(headers=(*without_key, ("sec-websocket-key", key)))
        assert refusal(head) == (400, access.BAD_REQUEST), key
    assert refusal(upgrade(UPGRADE[-1])) == (400, access.BAD_REQUEST)  # two keys are no key


@pytest.mark.parametrize("version", [None, "8", "14", "13, 8"])
def test_a_refused_version_is_answered_with_the_one_spoken(version: str | None) -> None:
    headers = [field for field in UPGRADE if field[0] != "sec-websocket-version"]
    if version is not None:
        headers.append(("sec-websocket-version", version))
    found = access.check_handshake(request(headers=tuple(headers)), Config())
    assert found is not None
    assert (found.status, found.reason) == (400, access.BAD_REQUEST)
    assert found.headers == (("Sec-WebSocket-Version", "13"),)


def test_connection_lines_are_one_list() -> None:
    without_connection = tuple(field for field in UPGRADE if field[0] != "connection")
    for lines in (("Upgrade", "close"), ("close", "Upgrade"), ("keep-alive", "upgrade, close")):
        headers = without_connection + tuple(("connection", line) for line in lines)
        assert refusal(request(headers=headers)) is None, lines
    headers = (*without_connection, ("connection", "keep-alive"), ("connection", "close"))
    assert refusal(request(headers=headers)) == (400, access.BAD_REQUEST)


def test_require_origin() -> None:
    assert refusal(upgrade(), require_origin=True) == (403, access.FORBIDDEN_ORIGIN)
    assert refusal(upgrade(("origin", "https://any.example")), require_origin=True) is None


def test_a_handshake_needs_the_token() -> None:
    assert refusal(upgrade(), token=TOKEN) == (401, access.UNAUTHORIZED)
    assert refusal(upgrade(*bearer(TOKEN)), token=TOKEN) is None
    assert refusal(upgrade(target=f"/feed?token={TOKEN}"), token=TOKEN) is None
    assert refusal(upgrade(target="/?token=nope"), token=TOKEN) == (401, access.UNAUTHORIZED)


def test_handshake_checks_run_in_order() -> None:
    settings = {"token": TOKEN, "allowed_origins": ("https://good.example",)}
    bad = request("/", "POST", (*UPGRADE, ("origin", "https://evil.example")))
    assert refusal(bad, **settings) == (400, access.BAD_REQUEST)
    evil = upgrade(("origin", "https://evil.example"))
    assert refusal(evil, **settings) == (401, access.UNAUTHORIZED)
    assert refusal(upgrade(("origin", "https://evil.example"), *bearer(TOKEN)), **settings) == (
        403,
        access.FORBIDDEN_ORIGIN,
    )


def test_the_throttle_logs_once_per_second_per_reason_and_counts_the_rest() -> None:
    throttle = access.RefusalThrottle()
    assert throttle.report("unauthorized", 10.0) == 0
    assert throttle.report("unauthorized", 10.5) is None
    assert throttle.report("forbidden_origin", 10.5) == 0
    assert throttle.report("unauthorized", 10.9) is None
    assert throttle.report("unauthorized", 11.0) == 2
    assert throttle.report("unauthorized", 12.5) == 0


# --- settings and options --------------------------------------------------------


@pytest.mark.parametrize(
    "origin", ["example.com", "https://example.com/", "ftp://example.com", "https://", "*"]
)
def test_a_bad_allowed_origin_is_refused(origin: str) -> None:
    with pytest.raises(ValueError, match="allowed origin"):
        Config(allowed_origins=(origin,))


@pytest.mark.parametrize("token", ["", "two qzx", " qzx-padded", "qzx\t", "qzx-é"])
def test_a_bad_token_is_refused_without_showing_it(token: str) -> None:
    with pytest.raises(ValueError, match="token") as refused:
        Config(token=token)
    assert token.strip() == "" or token.strip() not in str(refused.value)


@pytest.mark.parametrize(
    "host",
    ["http://example.com", "example.com/", "*.example.com", "a b", "x:0", "::1", "ex\u00e4"],
)
def test_a_bad_allowed_host_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="allowed host"):
        Config(allowed_hosts=(host,))


def test_allowed_origins_must_be_strings() -> None:
    with pytest.raises(TypeError, match="allowed origins must be strings"):
        Config(allowed_origins=(b"https://example.com",))  # type: ignore[arg-type]


def test_the_token_is_not_in_the_repr() -> None:
    assert TOKEN not in repr(Config(token=TOKEN))


def parse(*argv: str) -> Config:
    parser = build_parser()
    return config_from_args(parser, parser.parse_args(argv))


def test_the_access_options_land_in_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    defaults = parse()
    assert (defaults.allowed_origins, defaults.require_origin, defaults.token, defaults.page) == (
        (),
        False,
        None,
        True,
    )
    assert defaults.allowed_hosts == ()
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    config = parse(
        "--allowed-origin",
        "https://a.example",
        "--allowed-origin",
        "http://b.example:8080",
        "--allowed-host",
        "a.example",
        "--allowed-host",
        "[::1]:8080",
        "--require-origin",
        "--token-file",
        str(token_file),
        "--no-page",
    )
    assert config.allowed_origins == ("https://a.example", "http://b.example:8080")
    assert config.allowed_hosts == ("a.example", "[::1]:8080")
    assert config.require_origin
    assert config.token == TOKEN
    assert not config.page


def test_the_token_file_wins_over_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    environ = {TOKEN_VARIABLE: "from-env"}
    assert read_token(str(token_file), environ) == "from-file"
    assert read_token(None, environ) == "from-env"
    assert read_token(None, {TOKEN_VARIABLE: " padded\n"}) == "padded"
    assert read_token(None, {}) is None


def test_an_empty_or_missing_token_is_a_startup_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    with pytest.raises(StartupError, match="is empty"):
        read_token(str(empty), {})
    with pytest.raises(StartupError, match="set but empty"):
        read_token(None, {TOKEN_VARIABLE: ""})
    with pytest.raises(StartupError, match=r"cannot read the token file .*No such file"):
        read_token(str(tmp_path / "missing"), {})
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(StartupError, match="not UTF-8"):
        read_token(str(binary), {})


def test_the_command_exits_1_with_one_line_for_an_empty_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert main(["--token-file", str(empty)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{PROG}: error: the token file {str(empty)!r} is empty\n"


def test_a_bad_origin_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--allowed-origin", "example.com"])
    assert exited.value.code == 2
    assert "allowed origin 'example.com'" in capsys.readouterr().err


def test_a_bad_host_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--allowed-host", "https://example.com"])
    assert exited.value.code == 2
    assert "allowed host 'https://example.com'" in capsys.readouterr().err


# --- counters -----------------------------------------------------------------


def test_counting_frames() -> None:
    counters = Counters()
    counters.count_frames(1, len(message_frame("é")))  # an echo: two bytes of UTF-8
    counters.count_frames(2, 10)
    assert counters.delivered == 3
    assert counters.bytes_sent == (2 + 2) + 10
    assert set(counters.connections) == set(access.RESULTS)
