"""The URL step's words: the TLS a driver will use and its connect arguments, masked (also
used by `neondb url`)."""

from __future__ import annotations

import ssl
from typing import Any

from neondb.settings import Driver
from neondb.url import SECRET_PARAMS, DatabaseURL

__all__ = ["connect_arguments", "tls_words"]


def tls_words(parsed: DatabaseURL, driver: Driver, kwargs: dict[str, Any]) -> str:
    """The TLS a driver will use, in words (never an object's repr)."""
    rootcert = parsed.param("sslrootcert")
    ca = f"CA file {rootcert}" if rootcert not in (None, "system") else "the system CAs"
    binding = parsed.param("channel_binding")
    if driver == "psycopg":
        from psycopg.conninfo import conninfo_to_dict

        mode = str(conninfo_to_dict(kwargs["conninfo"]).get("sslmode", "prefer"))
    else:
        ssl_arg = kwargs.get("ssl")
        if ssl_arg is False:
            mode = "disable"
        elif isinstance(ssl_arg, ssl.SSLContext):
            if ssl_arg.check_hostname:
                mode = "verify-full"
            elif ssl_arg.verify_mode != ssl.CERT_NONE:
                mode = "verify-ca"
            else:
                mode = "require"
        else:
            mode = str(ssl_arg)
    words = {
        "disable": "off (plain text)",
        "allow": "allow: plain text unless the server insists; certificate not checked",
        "prefer": "prefer: encrypted if the server offers it; certificate not checked",
        "require": "require: encrypted; certificate not checked",
        "verify-ca": f"verify-ca: encrypted; certificate checked against {ca}",
        "verify-full": f"verify-full: encrypted; certificate and host name checked against {ca}",
    }
    out = words.get(mode, mode)
    if binding == "require":
        out += (
            "; SCRAM channel binding required (enforced by libpq)"
            if driver == "psycopg"
            else "; channel_binding=require: asyncpg cannot bind channels, so verify-full "
            "stands in for it"
        )
    return out


def connect_arguments(kwargs: dict[str, Any]) -> str:
    """The driver's connect arguments on one line, every secret (password, sslpassword)
    masked."""
    if "conninfo" in kwargs:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(kwargs["conninfo"])
        for secret in SECRET_PARAMS:
            if params.get(secret):
                params[secret] = "***"
        return make_conninfo("", **params)
    shown = []
    for key, value in kwargs.items():
        if key in SECRET_PARAMS:
            value = "***" if value else value
        elif isinstance(value, ssl.SSLContext):
            value = "<ssl context, see tls>"
        shown.append(f"{key}={value!r}")
    return " ".join(shown)
