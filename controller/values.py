"""Value parsers for config keys: text in, a typed value out, or ValueError saying what is accepted.

Pure code. Every parser takes the value's text (a YAML number or boolean has already been turned
into its text) and raises ValueError whose message names the value and the fix; the caller puts
the key in front. `ValueKind` pairs a parser with the type name docs/configuration.md uses.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from proxy.access_log import FORMATS, SECRET_HEADERS
from proxy.routing import IPNetwork
from proxy.session_affinity import AFFINITY_MODES

_T_co = TypeVar("_T_co", covariant=True)

DEFAULT_PREVIEW_HEADER = "X-Bluegreen-Preview"
# The preview cookie's key from preview.cookieKeyFile: shorter keys are refused (RFC 2104 asks
# for at least the hash's output, 32 bytes for SHA-256).
MIN_KEY_BYTES = 32

_DURATION_HINT = "use a number with a unit such as 500ms, 2s or 5m"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_DURATION_WHOLE = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

KIB = 1024
MIB = 1024 * KIB
_SIZE = re.compile(r"(\d+)(Ki|Mi|Gi|k|M|G)?")
_SIZE_UNITS = {"": 1, "Ki": KIB, "Mi": MIB, "Gi": 1024 * MIB, "k": 1000, "M": 10**6, "G": 10**9}
_SIZE_HINT = "use a whole number of bytes or one with a unit such as 8Ki, 64Ki, 100Mi or 1Gi"

_COLOUR = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_COLOUR_HINT = (
    "use lower-case letters, digits and '-', starting and ending with a letter or digit, "
    "at most 63 characters (e.g. blue)"
)
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?")
_URL_HINT = "use http://host[:port], e.g. http://myapp-blue.default.svc:80"
# RFC 9110 5.6.2: the characters of a field name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A preview header is removed before forwarding, so it must not be a field the proxy or the
# upstream needs: connection-level fields (a superset of proxy.headers.HOP_BY_HOP), framing,
# the fields the proxy writes itself or keeps only from a trusted balancer (X-Real-IP and the like:
# a preview header of that name would be removed from every request, the balancer's value too),
# and credentials that the application must still receive. Proxy-* is refused as a prefix.
_RESERVED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "expect",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-real-ip",
        "x-client-ip",
        "x-bluegreen-colour",
        "authorization",
        "cookie",
    }
)
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})


def parse_size(text: str) -> int:
    """Return the bytes in `text` such as `8192`, `8Ki`, `64Ki`, `100Mi` or `1Gi` (0 or more).

    Binary suffixes (Ki, Mi, Gi) and decimal ones (k, M, G) are read as Kubernetes quantities are.
    Raises ValueError with a message that starts with the quoted text and says what is accepted.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size; {_SIZE_HINT}")
    return int(match[1]) * _SIZE_UNITS[match[2] or ""]


def parse_duration(text: str) -> float:
    """Return the seconds in `text` such as `500ms`, `2s`, `5m`, `1h` or `1m30s`; always > 0.

    Raises ValueError with a message that starts with the quoted text and says what is accepted.
    """
    stripped = text.strip()
    if _DURATION_WHOLE.fullmatch(stripped) is None:
        try:
            float(stripped)
        except ValueError:
            raise ValueError(f"{text!r} is not a duration; {_DURATION_HINT}") from None
        raise ValueError(
            f"{text!r} has no unit; add one, e.g. {stripped}s or {stripped}ms ({_DURATION_HINT})"
        )
    seconds = sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(stripped)
    )
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero; {_DURATION_HINT}")
    return seconds


def check_colour(colour: str) -> None:
    """Raise ValueError unless `colour` is a colour name: a DNS label, lower-case (e.g. blue)."""
    if len(colour) > 63 or _COLOUR.fullmatch(colour) is None:
        hint = f"; did you mean {colour.lower()!r}?" if _COLOUR.fullmatch(colour.lower()) else ""
        raise ValueError(f"{colour!r} is not a valid colour name; {_COLOUR_HINT}{hint}")


def parse_url(text: str) -> str:
    """Return an upstream URL as written (stripped) once `split_http_url` accepts it."""
    split_http_url(text)
    return text.strip()


def split_http_url(text: str) -> tuple[str, int]:
    """Return (host, port) of `http://host[:port][/]`; the host of an IPv6 URL has no brackets."""
    url = text.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{text!r} has no http:// scheme; {_URL_HINT}")
    if scheme.lower() == "https":
        raise ValueError(
            f"{text!r}: TLS to upstreams is not supported yet; use the Service's plain "
            f"http:// port ({_URL_HINT})"
        )
    if scheme.lower() != "http":
        raise ValueError(f"{text!r} has scheme {scheme!r}; {_URL_HINT}")
    authority = rest.removesuffix("/")
    if "@" in authority:
        raise ValueError(
            f"{text!r} has user info (user@); credentials are not supported; {_URL_HINT}"
        )
    if any(c in authority for c in "/?#"):
        raise ValueError(
            f"{text!r} has a path, query or fragment; give only the base, the request's own "
            f"path is forwarded as is ({_URL_HINT})"
        )
    port_text: str | None
    if authority.startswith("["):
        host, bracket, after = authority[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"{text!r} has a malformed [IPv6] address; {_URL_HINT}")
        port_text = after[1:] if after else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r} has an invalid IPv6 address {host!r}") from None
    else:
        host, colon, after = authority.partition(":")
        port_text = after if colon else None
        _check_host(text, host)
    return host, _parse_port(text, port_text)


def _check_host(text: str, host: str) -> None:
    labels = host.removesuffix(".").split(".")
    if not host or len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{text!r} has an invalid host name {host!r}; {_URL_HINT}")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{text!r} has an invalid IPv4 address {host!r}") from None


def _parse_port(text: str, port_text: str | None) -> int:
    if port_text is None:
        return 80
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} has port {port_text!r}; use a number from 1 to 65535")
    return int(port_text)


def parse_header(text: str) -> str:
    """Return a preview header name: an RFC 9110 token that the proxy or the app does not need."""
    name = text.strip()
    if _TOKEN.fullmatch(name) is None:
        raise ValueError(
            f"{text!r} is not a valid header name; use letters, digits and '-', "
            f"e.g. {DEFAULT_PREVIEW_HEADER}"
        )
    lower = name.lower()
    if lower in _RESERVED_HEADERS or lower.startswith("proxy-"):
        raise ValueError(
            f"{text!r} is reserved (the proxy or the application needs it, and the preview "
            f"header is removed before forwarding); choose another, e.g. {DEFAULT_PREVIEW_HEADER}"
        )
    return name


def parse_token(text: str) -> bytes | None:
    """Return the preview token as the proxy compares it (ASCII bytes); empty text: no token."""
    if text == "":
        return None
    for position, char in enumerate(text):
        if not "!" <= char <= "~":
            what = "a space" if char == " " else f"character U+{ord(char):04X}"
            # The value is a secret, so the message points at the fault without quoting it.
            raise ValueError(
                f"the value (not shown) has {what} at position {position}; use printable ASCII "
                "without spaces"
            )
    return text.encode("ascii")


def parse_cidrs(text: str) -> tuple[IPNetwork, ...]:
    """Return the comma-separated networks of `text` (empty text: none); host bits must be 0."""
    if not text.strip():
        return ()
    networks: list[IPNetwork] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ValueError(f"{text!r} has an empty entry; separate networks with single commas")
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
            continue
        except ValueError:
            pass
        try:
            loose = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(
                f"{item!r} is not an IP network; use CIDR notation such as 10.0.0.0/8 or fd00::/8"
            ) from None
        address = ipaddress.ip_interface(item).ip
        raise ValueError(
            f"{item!r} has host bits set; did you mean {loose}? "
            f"(for the single address use {address}/{loose.max_prefixlen})"
        )
    return tuple(networks)


def parse_link_path(text: str) -> str:
    """Return the preview link's path: a request path below `/`, without `?` or `#`."""
    path = parse_path(text.strip())
    if path == "/" or "?" in path or "#" in path or path.endswith("/"):
        raise ValueError(
            f"{text!r} cannot be the preview link's path: every request under it is answered by "
            "the proxy, so it must be a path of its own without ?, # or a trailing /, e.g. "
            "/.well-known/bluegreen/preview"
        )
    return path


def parse_cookie_name(text: str) -> str:
    """Return a cookie name: an RFC 6265 token (letters, digits and `!#$%&'*+-.^_`|~`)."""
    name = text.strip()
    if _TOKEN.fullmatch(name) is None:
        raise ValueError(
            f"{text!r} is not a valid cookie name; use letters, digits, '-' and '_', "
            "e.g. bluegreen_preview"
        )
    return name


def read_secret_file(text: str) -> bytes | None:
    """Return the preview token read from a file (a mounted Secret); empty text: no file.

    One trailing newline is dropped (`kubectl create secret --from-file` keeps the file's).
    The contents follow the rules of preview.token; the message never quotes them.
    """
    contents = _read_file(text)
    if contents is None:
        return None
    try:
        token = parse_token(contents.decode("ascii"))
    except UnicodeDecodeError:
        problem = "holds non-ASCII bytes; the token must be printable ASCII"
        raise ValueError(f"{text.strip()!r} {problem}") from None
    except ValueError as error:
        raise ValueError(f"{text.strip()!r}: {error}") from None
    if token is None:
        raise ValueError(f"{text.strip()!r} is empty; put the token in it, or leave the key unset")
    return token


def read_key_file(text: str) -> bytes | None:
    """Return the preview cookie's HMAC key, read from a file: at least 32 bytes; empty: none."""
    contents = _read_file(text)
    if contents is None:
        return None
    if len(contents) < MIN_KEY_BYTES:
        raise ValueError(
            f"{text.strip()!r} holds {len(contents)} bytes; the cookie key needs at least "
            f"{MIN_KEY_BYTES} (e.g. head -c 32 /dev/urandom | base64)"
        )
    return contents


def _read_file(text: str) -> bytes | None:
    path = text.strip()
    if not path:
        return None
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute path; give the file's mount path")
    try:
        with open(path, "rb") as file:
            contents = file.read(64 * 1024 + 1)
    except OSError as error:
        raise ValueError(f"cannot read {path!r}: {error.strerror or error}") from None
    if len(contents) > 64 * 1024:
        raise ValueError(f"{path!r} is larger than 64 KiB; it should hold only the secret")
    return contents.removesuffix(b"\n")


def parse_path(text: str) -> str:
    """Return a request path: starts with `/`, printable ASCII without spaces."""
    if not text.startswith("/") or not all("!" <= c <= "~" for c in text):
        raise ValueError(
            f"{text!r} is not a request path; it must start with '/' and have no spaces, "
            "e.g. /healthz"
        )
    return text


def parse_positive_int(text: str) -> int:
    """Return a whole number of at least 1."""
    number = text.strip()
    if not number.isdigit() or int(number) < 1:
        raise ValueError(f"{text!r} is not a whole number of at least 1, e.g. 3")
    return int(number)


def parse_count(text: str) -> int:
    """Return a whole number of 0 or more."""
    number = text.strip()
    if not number.isdigit():
        raise ValueError(f"{text!r} is not a whole number of 0 or more, e.g. 64")
    return int(number)


def parse_rate(text: str) -> float:
    """Return a fraction in (0, 1]; a percentage such as 5 gets a hint to write 0.05."""
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not 0 < rate <= 1:  # also false for NaN
        hint = f"; did you mean {rate / 100:g} ({rate:g}%)?" if 1 < rate <= 100 else ""
        raise ValueError(f"{text!r} is not a fraction in (0, 1]; use e.g. 0.05 for 5%{hint}")
    return rate


def parse_bool(text: str) -> bool:
    """Return true/false, yes/no or 1/0 (any case) as a bool."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean; use true or false")


def parse_optional_duration(text: str) -> float:
    """Return the seconds of a duration, or 0 for `0` (off)."""
    if text.strip() == "0":
        return 0.0
    return parse_duration(text)


def parse_log_format(text: str) -> str:
    """Return an access log format: off, json or clf (any case)."""
    word = text.strip().lower()
    if word not in FORMATS:
        raise ValueError(f"{text!r} is not an access log format; use one of {', '.join(FORMATS)}")
    return word


def parse_affinity(text: str) -> str:
    """Return a session affinity mode: none or cookie (any case)."""
    word = text.strip().lower()
    if word not in AFFINITY_MODES:
        raise ValueError(
            f"{text!r} is not a session affinity; use one of {', '.join(AFFINITY_MODES)}"
        )
    return word


def parse_status_floor(text: str) -> int:
    """Return 0 (no status filter) or an HTTP status code from 100 to 599."""
    number = text.strip()
    if not number.isdigit() or not (int(number) == 0 or 100 <= int(number) <= 599):
        raise ValueError(f"{text!r} is not a status code from 100 to 599 (or 0: any), e.g. 500")
    return int(number)


def parse_header_names(text: str) -> tuple[str, ...]:
    """Return comma-separated request field names, lower-case, in order; credentials refused.

    Authorization, Proxy-Authorization and Cookie carry credentials and are never logged,
    whatever the config says (the preview header is checked against `preview.header` by the
    caller).
    """
    names: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item and not text.strip():
            continue
        if _TOKEN.fullmatch(item) is None:
            raise ValueError(
                f"{item!r} is not a header name; separate names with commas, e.g. X-Tenant"
            )
        lower = item.lower()
        if lower in SECRET_HEADERS:
            raise ValueError(f"{item} carries credentials and is never logged; remove it")
        if lower not in names:
            names.append(lower)
    return tuple(names)


def parse_percent(text: str) -> float:
    """Return a percentage from 0 to 100 (decimals allowed: 0.5 is one request in 200)."""
    try:
        percent = float(text.strip().removesuffix("%"))
    except ValueError:
        percent = math.nan
    if not 0 <= percent <= 100:  # also false for NaN
        raise ValueError(f"{text!r} is not a percentage from 0 to 100, e.g. 10")
    return percent


def parse_methods(text: str) -> frozenset[bytes]:
    """Return comma-separated HTTP methods (any case given, upper-case kept); at least one."""
    methods: set[bytes] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if _TOKEN.fullmatch(item) is None:
            raise ValueError(f"{item!r} is not an HTTP method; separate methods with commas")
        method = item.upper()
        if method == "CONNECT":
            raise ValueError("CONNECT is never forwarded, so it cannot be mirrored")
        methods.add(method.encode("ascii"))
    if not methods:
        raise ValueError(f"{text!r} names no method; use e.g. GET,HEAD")
    return frozenset(methods)


# A Deployment's name: a DNS subdomain (RFC 1123), as Kubernetes requires.
_OBJECT_NAME = re.compile(r"[a-z0-9](?:[-.a-z0-9]*[a-z0-9])?")


def parse_workload(text: str) -> str:
    """Return NAME of `deployment/NAME` (the Deployment backing a colour, same namespace).

    Only Deployments are scaled: `deploy/NAME` and `deployments/NAME` (kubectl's spellings)
    are read the same way; any other kind is refused with the reason.
    """
    kind, sep, name = text.strip().partition("/")
    if not sep or kind.lower() not in ("deployment", "deploy", "deployments"):
        raise ValueError(
            f"{text!r} is not deployment/NAME; name the Deployment that backs the colour, "
            "e.g. deployment/myapp-v1 (only Deployments are scaled)"
        )
    if len(name) > 253 or _OBJECT_NAME.fullmatch(name) is None:
        raise ValueError(
            f"{text!r}: {name!r} is not a Deployment name (lower-case letters, digits, '-' and "
            "'.'), e.g. deployment/myapp-v1"
        )
    return name


def parse_idle_replicas(text: str) -> int | None:
    """Return the replicas an idle colour keeps (0 or more), or None for `off` (never scale)."""
    word = text.strip().lower()
    if word == "off":
        return None
    if not word.isdigit():
        raise ValueError(
            f"{text!r} is not off or a number of replicas; use off (never scale), 0 (scale the "
            "idle colour to zero) or the warm replicas to keep, e.g. 2"
        )
    return int(word)


@dataclass(frozen=True, slots=True)
class ValueKind(Generic[_T_co]):
    """A kind of value: the type name docs/configuration.md uses, and its parser."""

    name: str
    parse: Callable[[str], _T_co]


COLOUR = ValueKind("colour", lambda text: text.strip())  # membership is checked by the caller
TEXT = ValueKind("text", lambda text: text.strip())
URL = ValueKind("URL", parse_url)
HEADER = ValueKind("header name", parse_header)
SECRET = ValueKind("secret text", parse_token)
NETWORKS = ValueKind("networks", parse_cidrs)
PATH = ValueKind("request path", parse_path)
LINK_PATH = ValueKind("request path", parse_link_path)
COOKIE_NAME = ValueKind("cookie name", parse_cookie_name)
SECRET_FILE = ValueKind("file", read_secret_file)
KEY_FILE = ValueKind("file", read_key_file)
DURATION = ValueKind("duration", parse_duration)
SIZE = ValueKind("size", parse_size)
COUNT = ValueKind("count", parse_count)
POSITIVE = ValueKind("positive", parse_positive_int)
FRACTION = ValueKind("fraction", parse_rate)
BOOLEAN = ValueKind("boolean", parse_bool)
OPTIONAL_DURATION = ValueKind("duration or 0", parse_optional_duration)
LOG_FORMAT = ValueKind("log format", parse_log_format)
AFFINITY = ValueKind("session affinity", parse_affinity)
STATUS_FLOOR = ValueKind("status or 0", parse_status_floor)
HEADER_NAMES = ValueKind("header names", parse_header_names)
PERCENT = ValueKind("percent", parse_percent)
METHODS = ValueKind("methods", parse_methods)
WORKLOAD = ValueKind("workload", parse_workload)
IDLE_REPLICAS = ValueKind("replicas or off", parse_idle_replicas)
