"""Tests for wanserve.media.fetch. No network: a local http.server on 127.0.0.1, or httpx.MockTransport."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from wanserve.api.dashscope.errors import http_status
from wanserve.config import load_settings
from wanserve.errors import Code, ServiceError
from wanserve.media import fetch as fetch_module
from wanserve.media.fetch import address_is_forbidden, fetch_media

PAYLOAD = bytes(range(256)) * 40  # 10 KiB
MB = 2**20

# ----------------------------------------------------------------------------------------------- local server

Route = Callable[[BaseHTTPRequestHandler], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host")))
        route = self.server.routes.get(self.path.split("?", 1)[0])
        try:
            if route is None:
                self.send_response(404)
                self.send_header("Content-Length", "9")
                self.end_headers()
                self.wfile.write(b"not found")
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass  # the client hung up, as it should when it stops early

    def log_message(self, format, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.seen: list[tuple[str, str | None]] = []

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up early (size cap, timeout, bad certificate) are expected here

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


def send_body(handler: BaseHTTPRequestHandler, body: bytes, status: int = 200) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def redirect(location: str, status: int = 302) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    srv.routes["/ok"] = lambda h: send_body(h, PAYLOAD)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def get(url: str, *, max_bytes: int = MB, allow_private: bool = True, **kwargs) -> bytes:
    return fetch_media(
        url, field="img_url", max_bytes=max_bytes, oss_resolver=None, allow_private=allow_private, **kwargs
    )


def refused(url: str, **kwargs) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        get(url, **kwargs)
    assert http_status(info.value.code) == 400
    assert info.value.message.startswith("img_url: ") or info.value.message.startswith("media[0].url: ")
    return info.value


_REAL_GETADDRINFO = socket.getaddrinfo
_REAL_FORBIDDEN = fetch_module.address_is_forbidden


def fake_dns(monkeypatch, table: dict[str, list[str]]) -> list[str]:
    """Make socket.getaddrinfo answer `table` for the names in it; returns the list of names looked up."""
    looked_up: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        looked_up.append(host)
        if host not in table:
            return _REAL_GETADDRINFO(host, port, *args, **kwargs)
        answers = []
        for addr in table[host]:
            ip = ipaddress.ip_address(addr)
            if ip.version == 4:
                answers.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port)))
            else:
                answers.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, port, 0, 0)))
        return answers

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up


def treat_127_0_0_1_as_public(monkeypatch) -> None:
    """Let the guard accept the local test server's address (and only it) so guarded fetches can reach it."""
    local = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(
        fetch_module, "address_is_forbidden", lambda ip: False if ip == local else _REAL_FORBIDDEN(ip)
    )


def forbid_connections(monkeypatch) -> None:
    def send(*args, **kwargs):
        raise AssertionError("no connection may be made")

    monkeypatch.setattr(httpx.Client, "send", send)


# --------------------------------------------------------------------------------------------- http downloads


def test_download_returns_the_body(server):
    assert get(server.url("/ok")) == PAYLOAD


def test_redirect_chain_is_followed(server):
    server.routes["/r3"] = redirect("/r2", 301)
    server.routes["/r2"] = redirect(server.url("/r1"), 307)
    server.routes["/r1"] = redirect("ok", 303)
    assert get(server.url("/r3")) == PAYLOAD
    assert [path for path, _ in server.seen] == ["/r3", "/r2", "/r1", "/ok"]


def test_too_many_redirects_are_refused(server):
    server.routes["/loop"] = redirect("/loop")
    err = refused(server.url("/loop"), max_redirects=3)
    assert err.code == "InvalidURL"
    assert "more than 3" in err.message
    assert len(server.seen) == 4


def test_redirect_to_a_non_http_scheme_is_refused(server):
    server.routes["/to-file"] = redirect("file:///etc/passwd")
    assert refused(server.url("/to-file")).code == "InvalidURL"


def test_404_is_refused_with_the_status(server):
    err = refused(server.url("/missing"))
    assert err.code == "InvalidURL"
    assert "404" in err.message


def test_500_is_refused_with_the_status(server):
    server.routes["/boom"] = lambda h: send_body(h, b"oops", status=500)
    assert "HTTP 500" in refused(server.url("/boom")).message


def test_messages_leave_out_the_query_string(server):
    err = refused(server.url("/missing?Signature=secret-token"))
    assert "secret-token" not in err.message


def test_body_over_the_limit_with_content_length_is_refused_before_reading(server):
    server.routes["/big"] = lambda h: send_body(h, b"x" * 50_000)
    err = refused(server.url("/big"), max_bytes=10_000)
    assert err.code == "InvalidFile.Size"
    assert "MB" in err.message


def test_chunked_body_over_the_limit_is_refused_while_downloading(server):
    sent = {"bytes": 0}

    def endless_chunked(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"y" * 16_384
        while sent["bytes"] < 200 * MB:  # far more than the client may accept; stops when it hangs up
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent["bytes"] += len(chunk)

    server.routes["/endless"] = endless_chunked
    started = time.monotonic()
    err = refused(server.url("/endless"), max_bytes=100_000, timeout_s=10)
    assert err.code == "InvalidFile.Size"
    assert time.monotonic() - started < 5
    assert sent["bytes"] < 50 * MB


def test_body_exactly_at_the_limit_is_accepted(server):
    assert get(server.url("/ok"), max_bytes=len(PAYLOAD)) == PAYLOAD


def test_slow_server_times_out(server):
    def slow(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(2)
        send_body(handler, PAYLOAD)

    server.routes["/slow"] = slow
    started = time.monotonic()
    err = refused(server.url("/slow"), timeout_s=0.3)
    assert err.code == "InvalidURL.Timeout"
    assert time.monotonic() - started < 1.5


def test_trickling_body_hits_the_total_timeout(server):
    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        for _ in range(1000):
            handler.wfile.write(b"z")
            handler.wfile.flush()
            time.sleep(0.02)

    server.routes["/trickle"] = trickle
    started = time.monotonic()
    err = refused(server.url("/trickle"), timeout_s=0.5)
    assert err.code == "InvalidURL.Timeout"
    assert time.monotonic() - started < 1.5


def test_closed_port_is_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    err = refused(f"http://127.0.0.1:{port}/x")
    assert err.code == "InvalidURL.ConnectionRefused"


def test_unresolvable_host_is_connection_refused(monkeypatch):
    def getaddrinfo(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    err = refused("http://no-such-host.invalid/x", allow_private=False)
    assert err.code == "InvalidURL.ConnectionRefused"


# ----------------------------------------------------------------------------------------------- SSRF guard


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://192.168.0.10/x",
        "http://172.16.5.4/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://[::ffff:169.254.169.254]/x",
        "http://[fd00:ec2::254]/x",
        "http://[fe80::1]/x",
        "http://0.0.0.0/x",
        "http://224.0.0.1/x",
        "http://2130706433/x",
        "https://127.0.0.1/x",
    ],
)
def test_private_and_loopback_hosts_are_refused_without_connecting(monkeypatch, url):
    forbid_connections(monkeypatch)
    err = refused(url, allow_private=False)
    assert err.code == "InvalidURL"
    assert "private or loopback" in err.message
    assert "WANSERVE_ALLOW_PRIVATE_MEDIA_URLS=1" in err.message


def test_local_server_is_refused_by_default(server):
    with pytest.raises(ServiceError) as info:
        fetch_media(server.url("/ok"), field="img_url", max_bytes=MB, oss_resolver=None)
    assert info.value.code == "InvalidURL"
    assert server.seen == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_local_server_is_allowed_when_private_urls_are_allowed(server, host):
    assert get(server.url("/ok", host=host), allow_private=True) == PAYLOAD


def test_public_name_resolving_to_a_private_address_is_refused(monkeypatch):
    fake_dns(monkeypatch, {"media.example.com": ["10.0.0.7"]})
    forbid_connections(monkeypatch)
    err = refused("http://media.example.com/cat.png", allow_private=False)
    assert err.code == "InvalidURL"
    assert "10.0.0.7" in err.message


def test_name_with_any_private_answer_is_refused(monkeypatch):
    fake_dns(
        monkeypatch, {"media.example.com": ["93.184.216.34", "2606:2800:220:1::1", "::ffff:192.168.1.1"]}
    )
    forbid_connections(monkeypatch)
    assert refused("https://media.example.com/cat.png", allow_private=False).code == "InvalidURL"


def test_redirect_to_a_loopback_target_is_refused_when_private_is_not_allowed(server, monkeypatch):
    treat_127_0_0_1_as_public(monkeypatch)
    server.routes["/to-loopback"] = redirect(f"http://127.0.0.2:{server.port}/ok")
    err = refused(server.url("/to-loopback"), allow_private=False)
    assert err.code == "InvalidURL"
    assert "private or loopback" in err.message
    assert [path for path, _ in server.seen] == ["/to-loopback"]


def test_redirect_to_the_metadata_service_is_refused(server, monkeypatch):
    treat_127_0_0_1_as_public(monkeypatch)
    server.routes["/to-metadata"] = redirect("http://169.254.169.254/latest/meta-data/")
    assert "private or loopback" in refused(server.url("/to-metadata"), allow_private=False).message


def test_guarded_request_goes_to_the_checked_address_with_the_original_host_header(server, monkeypatch):
    treat_127_0_0_1_as_public(monkeypatch)
    looked_up = fake_dns(monkeypatch, {"media.example.test": ["127.0.0.1"]})
    url = f"http://media.example.test:{server.port}/ok"
    assert get(url, allow_private=False) == PAYLOAD
    assert server.seen == [("/ok", f"media.example.test:{server.port}")]
    assert [name for name in looked_up if name != "127.0.0.1"] == ["media.example.test"]


def test_address_is_forbidden_covers_embedded_ipv4_forms():
    for addr in ["::ffff:10.0.0.1", "2002:7f00:1::", "64:ff9b::a9fe:a9fe", "::127.0.0.1", "100.64.0.1"]:
        assert address_is_forbidden(ipaddress.ip_address(addr)), addr
    for addr in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"]:
        assert not address_is_forbidden(ipaddress.ip_address(addr)), addr


# --------------------------------------------------------------------------------------------- pinning (mock)


def mock_client(monkeypatch, handler: Callable[[httpx.Request], httpx.Response]) -> None:
    monkeypatch.setattr(
        fetch_module,
        "_new_client",
        lambda: httpx.Client(transport=httpx.MockTransport(handler), trust_env=False, follow_redirects=False),
    )


def test_https_request_is_pinned_with_host_header_and_sni(monkeypatch):
    fake_dns(monkeypatch, {"media.example.com": ["93.184.216.34"]})
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=b"image-bytes")

    mock_client(monkeypatch, handler)
    assert get("https://media.example.com/a.png?x=1", allow_private=False) == b"image-bytes"
    (request,) = requests
    assert request.url.host == "93.184.216.34"
    assert request.url.path == "/a.png" and request.url.query == b"x=1"
    assert request.headers["Host"] == "media.example.com"
    assert request.extensions["sni_hostname"] == "media.example.com"


def test_dns_is_resolved_once_per_hop_so_a_rebinding_answer_is_never_used(monkeypatch):
    answers = iter([["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"]])
    looked_up: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        looked_up.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in next(answers)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(200, content=b"ok")

    mock_client(monkeypatch, handler)
    assert get("http://rebind.example.com/a.png", allow_private=False) == b"ok"
    assert hosts == ["93.184.216.34"]
    assert looked_up == ["rebind.example.com"]


def test_next_address_is_tried_when_the_first_does_not_connect(monkeypatch):
    fake_dns(monkeypatch, {"media.example.com": ["2606:2800:220:1::1", "93.184.216.34"]})
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host.startswith("2606"):
            raise httpx.ConnectError("network unreachable", request=request)
        return httpx.Response(200, content=b"ok")

    mock_client(monkeypatch, handler)
    assert get("http://media.example.com/a.png", allow_private=False) == b"ok"
    assert hosts == ["2606:2800:220:1::1", "93.184.216.34"]


def test_redirect_target_is_resolved_and_checked_again(monkeypatch):
    looked_up = fake_dns(monkeypatch, {"a.example.com": ["93.184.216.34"], "b.example.com": ["10.9.8.7"]})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "http://b.example.com/secret"})

    mock_client(monkeypatch, handler)
    err = refused("http://a.example.com/a.png", allow_private=False)
    assert "10.9.8.7" in err.message
    assert looked_up == ["a.example.com", "b.example.com"]


def test_redirect_without_location_is_refused(monkeypatch):
    fake_dns(monkeypatch, {"a.example.com": ["93.184.216.34"]})
    mock_client(monkeypatch, lambda request: httpx.Response(302))
    assert refused("http://a.example.com/a.png", allow_private=False).code == "InvalidURL"


# ----------------------------------------------------------------------------------- https pinning (real TLS)


def _make_tls_files(tmp_path: Path, server_name: str) -> tuple[Path, Path, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wanserve test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


@pytest.fixture
def tls_server(server, tmp_path, monkeypatch) -> _Server:
    """The local server behind TLS with a certificate for media.example.test; the client trusts its CA."""
    ca_path, cert_path, key_path = _make_tls_files(tmp_path, "media.example.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_path, key_path)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    client_ctx = ssl.create_default_context(cafile=str(ca_path))
    monkeypatch.setattr(
        fetch_module,
        "_new_client",
        lambda: httpx.Client(trust_env=False, follow_redirects=False, verify=client_ctx),
    )
    treat_127_0_0_1_as_public(monkeypatch)
    return server


def test_pinned_https_verifies_the_certificate_against_the_original_host(tls_server, monkeypatch):
    fake_dns(monkeypatch, {"media.example.test": ["127.0.0.1"]})
    url = tls_server.url("/ok", host="media.example.test", scheme="https")
    assert get(url, allow_private=False) == PAYLOAD
    assert tls_server.seen == [("/ok", f"media.example.test:{tls_server.port}")]


def test_pinned_https_refuses_a_certificate_for_another_name(tls_server, monkeypatch):
    fake_dns(monkeypatch, {"other.example.test": ["127.0.0.1"]})
    err = refused(tls_server.url("/ok", host="other.example.test", scheme="https"), allow_private=False)
    assert err.code == "InvalidURL.ConnectionRefused"
    assert tls_server.seen == []


# ----------------------------------------------------------------------------------------------- data: URLs


def test_data_url_is_decoded():
    url = "data:image/png;base64," + base64.b64encode(PAYLOAD).decode()
    assert get(url) == PAYLOAD


def test_data_url_with_whitespace_and_missing_padding_is_decoded():
    encoded = base64.b64encode(b"abcd").decode().rstrip("=")
    assert get(f"data:image/jpeg;base64,{encoded[:3]}\n{encoded[3:]}") == b"abcd"


def test_data_url_with_invalid_base64_is_refused():
    err = refused("data:image/png;base64,not*valid*base64!!")
    assert err.code == "InvalidParameter"
    assert "base64" in err.message


def test_data_url_without_a_comma_is_refused():
    assert refused("data:image/png;base64").code == "InvalidParameter"


def test_data_url_that_is_not_base64_is_refused():
    assert refused("data:text/plain,hello").code == "InvalidParameter"


def test_data_url_over_the_limit_is_refused_before_decoding():
    # Invalid characters would fail decoding; the size check comes first.
    err = refused("data:image/png;base64," + "!" * 4000, max_bytes=1000)
    assert err.code == "InvalidFile.Size"


def test_data_url_size_limit_counts_decoded_bytes():
    url = "data:image/png;base64," + base64.b64encode(b"x" * 1000).decode()
    assert get(url, max_bytes=1000) == b"x" * 1000
    assert refused(url, max_bytes=999).code == "InvalidFile.Size"


# ----------------------------------------------------------------------------------------------- oss:// URLs


def test_oss_url_without_resolver_asks_for_the_header():
    err = refused("oss://dashscope-instant/abc/cat.png")
    assert err.code == "InvalidParameter"
    assert "X-DashScope-OssResourceResolve: enable" in err.message


def read_file(path: Path):
    """A resolver that reads one local file, as the upload store does."""
    def resolve(key: str, max_bytes: int) -> bytes:
        with path.open("rb") as fh:
            return fh.read(max_bytes + 1)
    return resolve


def test_oss_url_is_read_through_the_resolver(tmp_path):
    (tmp_path / "cat.png").write_bytes(PAYLOAD)
    keys: list[str] = []

    def resolver(key: str, max_bytes: int) -> bytes:
        keys.append(key)
        return read_file(tmp_path / "cat.png")(key, max_bytes)

    data = fetch_media("oss://dir/abc/cat.png", field="img_url", max_bytes=MB, oss_resolver=resolver)
    assert data == PAYLOAD
    assert keys == ["dir/abc/cat.png"]


def test_oss_file_over_the_limit_is_refused(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 2000)
    with pytest.raises(ServiceError) as info:
        fetch_media("oss://k/big", field="img_url", max_bytes=1000, oss_resolver=read_file(tmp_path / "big"))
    assert info.value.code == "InvalidFile.Size"


def test_oss_resolver_errors_propagate():
    def resolver(key: str, max_bytes: int) -> bytes:
        raise ServiceError(Code.INVALID_PARAMETER, f"img_url: oss://{key} is not a known upload.")

    with pytest.raises(ServiceError, match="not a known upload"):
        fetch_media("oss://nope/x", field="img_url", max_bytes=MB, oss_resolver=resolver)


def test_oss_file_that_vanished_is_refused(tmp_path):
    with pytest.raises(ServiceError) as info:
        fetch_media("oss://k/gone", field="img_url", max_bytes=MB, oss_resolver=read_file(tmp_path / "gone"))
    assert info.value.code == "InvalidURL"
    assert "Upload it again" in info.value.message


# ----------------------------------------------------------------------------------------------- other forms


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.png", "/etc/passwd", "cat.png", "gopher://x/"]
)
def test_other_schemes_and_bare_paths_are_refused(monkeypatch, url):
    forbid_connections(monkeypatch)
    err = refused(url)
    assert err.code == "InvalidParameter"
    assert "oss://" in err.message


@pytest.mark.parametrize(
    "url", ["http://", "http:///x", "http://a b/x", "http://example.com:99999/x", "https://"]
)
def test_malformed_http_urls_are_refused(monkeypatch, url):
    forbid_connections(monkeypatch)
    assert refused(url).code == "InvalidURL"


def test_empty_url_is_refused():
    assert refused("  ").code == "InvalidParameter"


def test_field_name_starts_the_message():
    with pytest.raises(ServiceError) as info:
        fetch_media("ftp://x/y", field="media[0].url", max_bytes=MB, oss_resolver=None)
    assert info.value.message.startswith("media[0].url: ")


# The switch callers pass as `allow_private` is the `allow_private_media_urls` setting (wanserve.config reads
# the environment; fetch_media does not).
@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("", False), ("no", False),
     ("off", False), ("False", False)],
)
def test_private_urls_allowed_from_env(monkeypatch, value, expected):
    monkeypatch.setenv("WANSERVE_ALLOW_PRIVATE_MEDIA_URLS", value)
    assert load_settings().allow_private_media_urls is expected


def test_private_urls_not_allowed_when_env_is_unset(monkeypatch):
    monkeypatch.delenv("WANSERVE_ALLOW_PRIVATE_MEDIA_URLS", raising=False)
    assert load_settings().allow_private_media_urls is False
