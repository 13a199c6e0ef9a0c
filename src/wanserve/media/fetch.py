"""Getting the bytes of one media input (an image or audio field of a create request).

`fetch_media` accepts the three forms the contract allows (spec §2.2, §2.4, §2.5):

- `data:<mime>;base64,<data>`: decoded in memory (the size cap is checked from the base64 length first);
- `oss://<key>`: a file uploaded through the upload endpoints, found through an `OssResolver`;
- `http://` / `https://`: downloaded with httpx, streaming, with a byte cap, a total time limit and manually
  followed redirects.

Every user-facing failure is a `ServiceError` whose message names the request field.

SSRF guard. Unless `allow_private` is set (callers pass the `allow_private_media_urls` setting:
WANSERVE_ALLOW_PRIVATE_MEDIA_URLS=1 or `allow_private_media_urls = true` in the config file), the host of
every hop (the first URL and each redirect target) is resolved once with `socket.getaddrinfo`; if ANY answer
is a loopback, private, link-local, shared (CGNAT), multicast, reserved, unspecified or cloud-metadata address
(IPv4-mapped, 6to4, Teredo, NAT64 and IPv4-compatible IPv6 forms included), the URL is refused before any
connection is made. The request is then sent to the checked IP itself (the URL's host is replaced by the IP,
the `Host` header keeps the original name and, for https, the TLS SNI and certificate check use the original
name through httpx's `sni_hostname` request extension), so a DNS answer that changes between the check and the
connection (DNS rebinding) cannot redirect the download. Environment proxies are ignored (`trust_env=False`)
for the same reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import socket
import tempfile
import time
from collections.abc import Callable
from typing import BinaryIO, Literal

import httpx

from wanserve.errors import Code, ServiceError

__all__ = [
    "LargeDataUrl",
    "OssResolver",
    "address_is_forbidden",
    "checked_http_url",
    "decode_data_url",
    "fetch_media",
]

UrlForm = Literal["http", "data", "oss"]
OssResolver = Callable[[str, int], bytes]
"""Given the key after "oss://" and a size cap, returns up to cap + 1 bytes of the upload; raises
ServiceError when the key is not the caller's, OSError when the file cannot be read."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance-metadata endpoints. Most are already link-local or private; listed so they stay refused even
# if a future Python changes what `is_private` covers. 100.100.100.200 is Alibaba Cloud's metadata service.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)
_NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
_PRIVATE_REFUSED_HINT = (
    "such URLs are refused. Use a public URL, upload the file (oss://), or, for private deployments, set "
    "WANSERVE_ALLOW_PRIVATE_MEDIA_URLS=1 or allow_private_media_urls = true in the config file."
)


URL_FORMS: dict[str, UrlForm] = {"http://": "http", "https://": "http", "data:": "data", "oss://": "oss"}
URL_PATTERN = "^(" + "|".join(re.escape(prefix) for prefix in URL_FORMS) + ")"  # for schemas


def url_form(url: str) -> UrlForm | None:
    """Which of the accepted URL forms `url` is (case-insensitive scheme), or None."""
    lowered = url.strip().lower()
    return next((form for prefix, form in URL_FORMS.items() if lowered.startswith(prefix)), None)


def fetch_media(
    url: str,
    *,
    field: str,
    max_bytes: int,
    oss_resolver: OssResolver | None,
    allow_private: bool = False,
    timeout_s: float = 30.0,
    max_redirects: int = 5,
) -> bytes:
    """Return the bytes behind `url` (a data:, oss:// or http(s) URL), at most `max_bytes` of them.

    `field` is the request field the URL came from (e.g. "img_url", "media[0].url"); messages start with it.
    Raises ServiceError (InvalidParameter, InvalidURL, InvalidURL.ConnectionRefused, InvalidURL.Timeout,
    InvalidFile.Size) for anything the user can fix.
    """
    if not isinstance(url, str) or not url.strip():
        raise ServiceError(
            Code.INVALID_PARAMETER, f"{field}: the URL is empty. Send an http(s), data: or oss:// URL."
        )
    url = url.strip()
    form = url_form(url)
    if form == "data":
        return decode_data_url(url, field=field, max_bytes=max_bytes)
    if form == "oss":
        return _read_oss(url[len("oss://") :], field=field, max_bytes=max_bytes, oss_resolver=oss_resolver)
    if form == "http":
        return _download(
            url,
            field=field,
            max_bytes=max_bytes,
            allow_private=allow_private,
            timeout_s=timeout_s,
            max_redirects=max_redirects,
        )
    scheme = url.split(":", 1)[0].lower() if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", url) else ""
    what = f"{scheme}:// URLs are" if scheme and "://" in url else "local file paths and other forms are"
    raise ServiceError(
        Code.INVALID_PARAMETER,
        f"{field}: {what} not supported. Send a public http(s) URL, a data:<mime>;base64,<data> URL, "
        "or upload the file and send its oss:// URL.",
    )


# ------------------------------------------------------------------------------------------------- data: URLs


def decode_data_url(url: str, *, field: str, max_bytes: int) -> bytes:
    """The bytes of a `data:<mime>;base64,<data>` URL, at most `max_bytes` (checked from the encoded length
    before decoding); ServiceError (InvalidParameter, InvalidFile.Size) naming `field` otherwise."""
    header, sep, payload = url[len("data:") :].partition(",")
    if not sep:
        raise ServiceError(
            Code.INVALID_PARAMETER,
            f"{field}: the data: URL has no ',' before its data. Use the form data:<mime>;base64,<data>.",
        )
    if not header.lower().rstrip().endswith(";base64"):
        raise ServiceError(
            Code.INVALID_PARAMETER,
            f"{field}: only base64 data: URLs are supported. Use the form data:<mime>;base64,<data>.",
        )
    payload = re.sub(r"\s+", "", payload)
    if not payload:
        raise ServiceError(Code.INVALID_PARAMETER, f"{field}: the data: URL carries no data.")
    # Size cap from the encoded length, before decoding anything (every 4 base64 characters give 3 bytes).
    padding = len(payload) - len(payload.rstrip("="))
    estimated = len(payload) * 3 // 4 - min(padding, 2)
    if estimated > max_bytes:
        raise _too_big(field, max_bytes)
    if "-" in payload or "_" in payload:  # URL-safe alphabet
        payload = payload.replace("-", "+").replace("_", "/")
    payload += "=" * (-len(payload) % 4)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServiceError(
            Code.INVALID_PARAMETER,
            f"{field}: the data: URL does not contain valid base64 data ({exc}). "
            "Use the form data:<mime>;base64,<data>.",
        ) from None
    if len(data) > max_bytes:
        raise _too_big(field, max_bytes)
    return data


class LargeDataUrl:
    """A data: URL too large to hold as one string: its head (`data:<mime>;base64,`) and the payload as the
    raw pieces of the request body it arrived in (printable ASCII only: no quote, escape or control
    character, so they are the string's characters as they are). `decode` writes the bytes to a temporary
    file piece by piece, so a large inline file costs about its encoded size once in memory, never a string,
    a joined copy and the decoded bytes at once. api/bodies.py builds it while a body arrives, and the body
    names it by `placeholder` (the head and the payload's sha256: the same payload, the same text)."""

    def __init__(self, head: str) -> None:
        self.head = head
        self.pieces: list[bytes] = []
        self._sha = hashlib.sha256()

    def add(self, piece: bytes) -> None:
        self.pieces.append(piece)
        self._sha.update(piece)

    @property
    def placeholder(self) -> str:
        return f"{self.head}#sha256={self._sha.hexdigest()}"

    def decode(self, *, field: str, max_bytes: int) -> BinaryIO:
        """The decoded bytes in a temporary file (read from its start; the caller closes it), checked as
        `decode_data_url` checks a data: URL; ServiceError (InvalidParameter, InvalidFile.Size) naming
        `field` otherwise."""
        pieces = self.pieces  # spaces are the only whitespace such a piece can hold: not counted
        length = sum(len(p) - p.count(b" ") for p in pieces)
        if not length:
            raise ServiceError(Code.INVALID_PARAMETER, f"{field}: the data: URL carries no data.")
        tail = b"".join(p[-16:] for p in pieces[-8:]).replace(b" ", b"")[-8:]  # enough to count the padding
        padding = len(tail) - len(tail.rstrip(b"="))
        if length * 3 // 4 - min(padding, 2) > max_bytes:
            raise _too_big(field, max_bytes)
        out = tempfile.SpooledTemporaryFile(max_size=2**20)  # noqa: SIM115 - the caller closes it
        try:
            size, carry = 0, b""
            for i, piece in enumerate(pieces):
                data = carry + piece.translate(_URLSAFE, b" ")
                if i == len(pieces) - 1:
                    data += b"=" * (-len(data) % 4)
                    cut = len(data)
                else:  # whole quads, and the last one kept back: padding may only end the payload
                    cut = max(0, (len(data) - 1) // 4 * 4)
                    if b"=" in data[:cut]:
                        raise binascii.Error("Discontinuous padding not allowed")
                chunk, carry = data[:cut], data[cut:]
                decoded = binascii.a2b_base64(chunk, strict_mode=True) if chunk else b""
                size += len(decoded)
                out.write(decoded)
        except (binascii.Error, ValueError) as exc:
            out.close()
            raise ServiceError(
                Code.INVALID_PARAMETER,
                f"{field}: the data: URL does not contain valid base64 data ({exc}). "
                "Use the form data:<mime>;base64,<data>.",
            ) from None
        if size > max_bytes:
            out.close()
            raise _too_big(field, max_bytes)
        out.seek(0)
        return out  # type: ignore[return-value]


_URLSAFE = bytes.maketrans(b"-_", b"+/")


# ------------------------------------------------------------------------------------------------ oss:// URLs


def _read_oss(key: str, *, field: str, max_bytes: int, oss_resolver: OssResolver | None) -> bytes:
    if oss_resolver is None:
        raise ServiceError(
            Code.INVALID_PARAMETER,
            f"{field}: oss:// URLs need the request header X-DashScope-OssResourceResolve: enable. "
            "Add the header (the DashScope SDK adds it after uploading a file) or send an http(s) URL.",
        )
    if not key.strip("/"):
        raise ServiceError(
            Code.INVALID_PARAMETER,
            f"{field}: the oss:// URL has no key. Send the oss:// URL the upload returned.",
        )
    try:
        data = oss_resolver(key, max_bytes)
    except OSError:
        raise ServiceError(
            Code.INVALID_URL,
            f"{field}: the uploaded file oss://{key} could not be read (it may have expired). "
            "Upload it again.",
        ) from None
    if len(data) > max_bytes:
        raise _too_big(field, max_bytes)
    return data


# ------------------------------------------------------------------------------------------------- SSRF guard


def address_is_forbidden(ip: IPAddress) -> bool:
    """True for addresses a media download must not reach unless private URLs are allowed."""
    if isinstance(ip, ipaddress.IPv6Address):
        for embedded in _embedded_ipv4(ip):
            if address_is_forbidden(embedded):
                return True
    if ip in _METADATA_ADDRESSES:
        return True
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global  # also catches shared address space 100.64.0.0/10, benchmark nets, ...
    )


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64_PREFIX or ip in _IPV4_COMPATIBLE:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def checked_http_url(url: str, *, field: str, allow_private: bool,
                     hint: str = _PRIVATE_REFUSED_HINT) -> tuple[httpx.URL, list[IPAddress]]:
    """An http(s) URL the service itself will send to (a webhook), through the same guard as a media
    download: parsed, and unless `allow_private` its host resolved once and every address checked. Returns
    the URL and the checked addresses to connect to ([] when private URLs are allowed: connect by name), so
    a caller can pin its connection as `_build_request` does. ServiceError (InvalidURL*) naming `field`,
    with `hint` saying what to change when the host is private."""
    parsed = _parse_http_url(url.strip(), field=field)
    if allow_private:
        return parsed, []
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed, _resolve_checked(parsed.raw_host.decode("ascii"), port, field=field, hint=hint)


def _resolve_checked(host: str, port: int, *, field: str,
                     hint: str = _PRIVATE_REFUSED_HINT) -> list[IPAddress]:
    """Resolve `host` once and return its addresses, refusing the URL if any of them is forbidden."""
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise _unreachable(field, host, "the host name could not be resolved") from None
        addresses = []
        for family, _type, _proto, _canon, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise _unreachable(field, host, "the host name has no IP address")
    for ip in addresses:
        if address_is_forbidden(ip):
            raise ServiceError(
                Code.INVALID_URL,
                f"{field}: the URL's host {host} resolves to a private or loopback address ({ip}); " + hint,
            )
    return addresses


# --------------------------------------------------------------------------------------------------- http(s)


def _new_client() -> httpx.Client:
    # trust_env=False: an environment proxy would connect on our behalf and defeat the address pinning.
    return httpx.Client(trust_env=False, follow_redirects=False)


def _download(
    url_text: str, *, field: str, max_bytes: int, allow_private: bool, timeout_s: float, max_redirects: int
) -> bytes:
    deadline = time.monotonic() + timeout_s
    url = _parse_http_url(url_text, field=field)
    with _new_client() as client:
        for _hop in range(max_redirects + 1):
            try:
                body, next_url = _one_hop(
                    client,
                    url,
                    field=field,
                    max_bytes=max_bytes,
                    allow_private=allow_private,
                    deadline=deadline,
                    timeout_s=timeout_s,
                )
            except httpx.TimeoutException:
                raise _timed_out(field, url, timeout_s) from None
            except httpx.ConnectError as exc:
                raise _unreachable(field, _host_port(url), _reason(exc)) from None
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                raise ServiceError(
                    Code.INVALID_URL, f"{field}: the URL is not valid ({exc}). Check the URL."
                ) from None
            except httpx.HTTPError as exc:
                raise ServiceError(
                    Code.INVALID_URL,
                    f"{field}: the download from {_host_port(url)} failed ({_reason(exc)}). "
                    "Check that the URL serves the file, or upload the file (oss://).",
                ) from None
            if next_url is None:
                return body
            url = next_url
    raise ServiceError(
        Code.INVALID_URL,
        f"{field}: the URL redirected more than {max_redirects} times. Send the final URL of the file.",
    )


def _one_hop(
    client: httpx.Client,
    url: httpx.URL,
    *,
    field: str,
    max_bytes: int,
    allow_private: bool,
    deadline: float,
    timeout_s: float,
) -> tuple[bytes, httpx.URL | None]:
    """GET one URL. Returns (body, None), or (b"", next_url) for a redirect."""
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    targets: list[IPAddress | None] = (
        [None] if allow_private else list(_resolve_checked(host, port, field=field))
    )

    response: httpx.Response | None = None
    for index, ip in enumerate(targets):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(field, url, timeout_s)
        request = _build_request(client, url, ip, remaining)
        try:
            response = client.send(request, stream=True)
            break
        except httpx.ConnectError:
            if index + 1 == len(targets):
                raise  # try the host's next address first, like a browser would
    assert response is not None

    try:
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                raise ServiceError(
                    Code.INVALID_URL,
                    f"{field}: the server answered HTTP {status} (a redirect) without a Location header for "
                    f"{_display(url)}. Send the final URL of the file.",
                )
            try:
                next_url = url.join(location.strip())
            except httpx.InvalidURL:
                next_url = None
            if next_url is None or next_url.scheme not in ("http", "https"):
                raise ServiceError(
                    Code.INVALID_URL,
                    f"{field}: {_display(url)} redirected to an unsupported location. "
                    "Only http(s) redirects are followed; send the final URL of the file.",
                )
            return b"", _parse_http_url(str(next_url), field=field)
        if not 200 <= status < 300:
            raise ServiceError(
                Code.INVALID_URL,
                f"{field}: downloading {_display(url)} failed with HTTP {status}. "
                "Check that the URL is correct, publicly readable and not expired.",
            )
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
            raise _too_big(field, max_bytes)
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > max_bytes:
                raise _too_big(field, max_bytes)
            if time.monotonic() > deadline:
                raise _timed_out(field, url, timeout_s)
            chunks.append(chunk)
        return b"".join(chunks), None
    finally:
        response.close()  # aborts the transfer if we stopped early


def _build_request(
    client: httpx.Client, url: httpx.URL, ip: IPAddress | None, remaining: float
) -> httpx.Request:
    # Identity encoding: the byte cap then applies to what is on the wire, and no gzip bomb can expand.
    headers = {"Accept-Encoding": "identity", "User-Agent": "wanserve-media-fetch/1"}
    extensions: dict[str, object] = {}
    target = url
    if ip is not None:
        # Pin the connection to the address that was checked. The Host header and the TLS server name (SNI and
        # certificate verification) keep the original host name.
        target = url.copy_with(host=str(ip))
        headers["Host"] = url.netloc.decode("ascii")
        if url.scheme == "https":
            extensions["sni_hostname"] = url.raw_host.decode("ascii")
    # Per-operation timeouts start from what is left of the total budget; the body loop also checks the
    # deadline between chunks, so a server that trickles bytes is stopped too. (One blocked read can still
    # take up to `remaining`, so the worst case is a little under twice timeout_s.)
    return client.build_request(
        "GET", target, headers=headers, timeout=httpx.Timeout(remaining), extensions=extensions
    )


def _parse_http_url(text: str, *, field: str) -> httpx.URL:
    bad = ServiceError(
        Code.INVALID_URL,
        f"{field}: the URL is not valid. Send a complete http(s) URL such as https://example.com/image.png.",
    )
    if any(ch.isspace() or ord(ch) < 0x20 for ch in text):
        raise bad
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, UnicodeError):
        raise bad from None
    if url.scheme not in ("http", "https"):
        raise bad
    host = url.raw_host.decode("ascii", "replace")
    if not host:
        raise bad
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME_RE.fullmatch(host):
            raise bad from None
    if url.port is not None and not 0 < url.port < 65536:
        raise bad
    return url


# --------------------------------------------------------------------------------------------------- messages


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f}".rstrip("0").rstrip(".")


def _too_big(field: str, max_bytes: int) -> ServiceError:
    return ServiceError(
        Code.FILE_SIZE,
        f"{field}: the file is larger than {_mb(max_bytes)} MB. Send a file of at most {_mb(max_bytes)} MB.",
    )


def _timed_out(field: str, url: httpx.URL, timeout_s: float) -> ServiceError:
    return ServiceError(
        Code.URL_TIMEOUT,
        f"{field}: downloading from {_host_port(url)} timed out after {timeout_s:g} s. "
        "Use a faster host or a smaller file, or upload the file (oss://).",
    )


def _unreachable(field: str, where: str, reason: str) -> ServiceError:
    return ServiceError(
        Code.URL_CONNECTION_REFUSED,
        f"{field}: connection to {where} failed ({reason}). "
        "Check that the URL is correct and publicly reachable.",
    )


def _host_port(url: httpx.URL) -> str:
    return url.netloc.decode("ascii", "replace")


def _display(url: httpx.URL) -> str:
    """The URL without credentials or query string (often a signature), shortened for messages."""
    text = f"{url.scheme}://{_host_port(url)}{url.path}"
    return text if len(text) <= 200 else text[:197] + "..."


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
