"""Classify an endpoint as local, internal or cloud from its host, before any request is sent."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

INTERNAL_SUFFIXES = (".internal", ".svc.cluster.local", ".cluster.local", ".local", ".lan", ".home.arpa")


def _classify_ip(ip: ipaddress._BaseAddress) -> str:
    if ip.is_loopback:
        return "local"
    if ip.is_private or ip.is_link_local or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "internal"
    return "cloud"


def classify(url: str | None, *, resolve: bool = True) -> tuple[str, str]:
    """Return (class, evidence). Evidence names the host and address class, never credentials."""
    if not url:
        return "cloud", "no base_url: the provider's public API"
    parts = urlsplit(url)
    if parts.scheme in ("unix", "http+unix"):
        return "local", "unix socket"
    host = (parts.hostname or "").lower()
    if not host:
        return "cloud", "no host in base_url"
    try:
        return _classify_ip(ipaddress.ip_address(host)), f"host {host} is a {_classify_ip(ipaddress.ip_address(host))} address literal"
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):
        return "local", f"host {host} is loopback by name"
    if host.endswith(INTERNAL_SUFFIXES):
        return "internal", f"host {host} has an internal-only suffix"
    if "." not in host:
        return "internal", f"host {host} is a single-label (cluster/LAN) name"
    if resolve:
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except OSError:
            return "cloud", f"host {host} did not resolve here; treated as cloud"
        classes = {_classify_ip(ipaddress.ip_address(info[4][0])) for info in infos}
        if classes and classes <= {"local"}:
            return "local", f"host {host} resolves to loopback"
        if classes and classes <= {"local", "internal"}:
            return "internal", f"host {host} resolves to private addresses"
    return "cloud", f"host {host} is a public name"


def refusal(name: str, cfg, endpoint_class: str, evidence: str) -> str | None:
    """Why text may not be sent to this endpoint (None: it may), naming the setting that allows it.

    local: always allowed. internal: allowed unless the space sets ``allow_remote: false``.
    cloud: refused unless the space sets ``allow_cloud: true``."""
    if endpoint_class == "local":
        return None
    if endpoint_class == "internal":
        if getattr(cfg, "allow_remote", True):
            return None
        return (f"endpoint of space {name!r} is internal ({evidence}) and the space sets `allow_remote: false`; "
                "nothing was sent. Point base_url at a loopback server, or set `allow_remote: true`")
    if getattr(cfg, "allow_cloud", False):
        return None
    return (f"endpoint of space {name!r} is cloud ({evidence}); nothing was sent. Set `allow_cloud: true` on the "
            "space to send text to a public provider, or point base_url at a local/internal server")
