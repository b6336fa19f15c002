"""Running the web app for `carspotter serve`: which Host names it answers, the listening socket, and a clean stop.

- **Host check.** A page on another site can make a browser send requests to ``127.0.0.1`` under its own name: DNS
  rebinding points ``evil.example`` at the loopback address, and the browser then calls the request same-origin
  (``Origin: http://evil.example``, ``Host: evil.example``), so the Origin check alone lets it in. Only requests whose
  Host is the bound address, a name of this machine when bound to all interfaces, or a name given with
  ``--allowed-host`` are served (Starlette's ``TrustedHostMiddleware``; anything else: 400).
- **Options checked before "serving on".** The socket is bound here, before the message, so a port in use is one
  error line, and port 0 reports the port the system chose.
- **SIGTERM stops like Ctrl-C.** uvicorn shuts down gracefully on both and then raises the signal again; the default
  SIGTERM action would end the process at once, skipping the clean-up of the app's temporary site folder and the
  compiler cache folder (`carspotter.environment`). The handler set here turns it into an ordinary exit.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from collections.abc import Iterable
from types import FrameType

from carspotter.errors import UserError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD = ("0.0.0.0", "::", "")


def host_name(host: str) -> str:
    """How ``host`` appears in a Host header: IPv6 literals in brackets, names in lower case."""
    host = host.strip().lower()
    try:
        if ipaddress.ip_address(host.strip("[]")).version == 6:
            return f"[{host.strip('[]')}]"
    except ValueError:
        pass
    return host


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> list[str]:
    """The Host names the server answers when it listens on ``bind``: that address (and the loopback names when it
    is a loopback address), this machine's names and addresses when it listens on all interfaces, and ``extra``
    (names or ``*.domain`` patterns given with ``--allowed-host``)."""
    names = [host_name(bind)] if bind not in WILDCARD else []
    if _is_loopback(bind) or bind in WILDCARD:
        names.extend(LOOPBACK_NAMES)
    if bind in WILDCARD:
        names.extend(_machine_names())
    for item in extra:
        name = host_name(item)
        if not name or "/" in name or ("*" in name and not (name.startswith("*.") and "*" not in name[1:])):
            raise UserError(f"--allowed-host {item!r}: expected a host name or address (cars.example, 192.0.2.7) "
                            "or a domain pattern (*.cars.example), without scheme or port")
        names.append(name)
    return list(dict.fromkeys(n for n in names if n))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _machine_names() -> list[str]:
    names = [socket.gethostname().lower(), socket.getfqdn().lower()]
    try:
        names.extend(host_name(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None))
    except OSError:
        pass
    return names


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``, as uvicorn would open it; a busy port or an address this machine
    does not have is a `UserError`."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: expected 0 to 65535")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "choose another --port, or stop what listens there" if exc.errno == 98 else "choose another --host"
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}") from None
    sock.set_inheritable(True)
    return sock


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_cleanly_on_sigterm() -> None:
    """From now on SIGTERM ends the process with exit code 143 through normal interpreter exit (temporary folders
    removed, atexit handlers run), as Ctrl-C does."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
