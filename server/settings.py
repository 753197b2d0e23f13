"""Server settings: pydantic-settings models, each default written once. `Settings(...)` takes
its arguments only (tests, benchmarks); `Settings.from_env()` reads SOUNDSCAPE_<FIELD> variables,
so containers configure the server, and `soundscape serve` writes its options to those variables
(server/commands.py), so options and variables are checked by one model. The HTTP protocol's
limits (server/protocol.ConnectionLimits) are a model of the same kind."""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from redis.connection import parse_url

from runtime.contract import PRECISIONS
from runtime.errors import UserError
from server.ratelimit import Rate

ENV_PREFIX = "SOUNDSCAPE_"
MB = 1024 * 1024
PUBLIC_URL = re.compile(r"https?://[^/?#\s]+(/[^?#\s]*)?")
# What a header carries: visible ASCII and spaces (a CR or LF in Cache-Control made every
# response a 500 in uvicorn's header check).
HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,256}")
# RFC 9111 5.2: Cache-Control is a comma-separated list of directives, each a token with an
# optional =token or ="quoted string". ' ' or ',' sent an empty Cache-Control (heuristic caching).
TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
DIRECTIVE = re.compile(rf' *({TOKEN})(?:=({TOKEN}|"(?:[^"\\]|\\.)*"))? *')
# Directives whose argument is delta-seconds (RFC 9111 1.2.2; RFC 5861): a cache ignores
# `max-age=1day` or `max-age=-1`, or takes the answer as stale.
DELTA_SECONDS = frozenset({"max-age", "s-maxage", "max-stale", "min-fresh", "stale-while-revalidate", "stale-if-error"})
# A browser's Origin (RFC 6454 6.2): scheme://host[:port], nothing after, scheme and host in lower
# case, an international name in punycode, no default port. Any other spelling
# ("https://maps.example.org/", "https://A.example", "https://a.example:443", "https://*.example")
# equals no Origin a browser sends, so CORS was off for it, silently.
ORIGIN = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/?#\[\]@\s]+)(?::(?P<port>[0-9]{1,5}))?"
)
HOST_LABEL = re.compile(r"[a-z0-9_-]+")
DEFAULT_PORTS = {"http": 80, "https": 443}
# A Host header's name as urls.host_name leaves it (no port): a name, `.example.org` for it and
# its subdomains, an IPv6 address, or `*`. "tiles.example.org:8000" or "https://..." matched no
# request, so every one answered 400.
HOST_NAME = re.compile(r"\*|\.?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?|[0-9A-Fa-f]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f.]*")
# Each setting of a form: the pattern it matches whole, and the sentence refusing a value that does not.
FORMS = {
    "cache_control": (
        HEADER_VALUE,
        "Cache-Control {!r} is not a header value: 1 to 256 visible ASCII characters and spaces",
    ),
    "allowed_hosts": (
        HOST_NAME,
        "allowed host {!r} is not a host name like tiles.example.org, .example.org (it and its subdomains), an IP "
        "address or * (no scheme, port or path)",
    ),
}
CORS_FORM = (
    "CORS origin {!r} is not an origin a browser sends, like https://maps.example.org or http://localhost:5173 "
    "(http or https, one host name or IP address, a port from 1 to 65535; no path, trailing slash or wildcard), "
    "nor * alone"
)
# Threads an operator asks for: onnxruntime builds its pool at once, so 100000 stopped the server.
MAX_THREADS = 1024


def default_query_db() -> str:
    """queries.sqlite in $SOUNDSCAPE_DATA_DIR (the server's writable state; docker-compose.yml sets
    it), else in the user's data directory (XDG). $SOUNDSCAPE_QUERY_DB names another file."""
    if os.environ.get("SOUNDSCAPE_DATA_DIR"):
        return os.path.join(os.environ["SOUNDSCAPE_DATA_DIR"], "queries.sqlite")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "soundscape-tiles", "queries.sqlite")


def _names(value: Any) -> Any:
    """A comma-separated list ('' for none), as the variables give it."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value


# An unset and an empty variable both mean "none".
MaybeText = Annotated[str | None, BeforeValidator(lambda value: value or None)]
Names = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_names)]
# Numbers an operator sets: a count, a size or a time out of range is refused with a sentence
# rather than served silently wrong (a NaN timeout answered every request 400, 0 connections
# every request 503, an infinite upload limit bounded nothing, a NaN cache size crashed).
Count = Annotated[int, Field(ge=1)]
CountOrZero = Annotated[int, Field(ge=0)]
Threads = Annotated[int, Field(ge=1, le=MAX_THREADS)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveOrZero = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def cache_directives(value: str) -> list[tuple[str, str | None]] | None:
    """The directives of a Cache-Control value, names in lower case, each with its argument if any
    (RFC 9111 5.2); None for a value that is not such a list."""
    found: list[tuple[str, str | None]] = []
    position = 0
    while (directive := DIRECTIVE.match(value, position)) is not None:
        found.append((directive[1].lower(), directive[2]))
        position = directive.end()
        if position == len(value):
            return found
        if value[position] != ",":
            return None
        position += 1
    return None


def browser_origin(origin: str) -> str | None:
    """`origin` as a browser spells it in its Origin header (RFC 6454 6.2); None for what is no
    http(s) origin (a path, a wildcard, a port out of range, no host)."""
    found = ORIGIN.fullmatch(origin)
    if found is None or found["scheme"].lower() not in DEFAULT_PORTS:
        return None
    scheme, host, port = found["scheme"].lower(), found["host"], found["port"]
    try:
        if host.startswith("["):
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        else:
            host = host.encode("idna").decode("ascii").lower()  # an international name in punycode
    except ValueError:  # UnicodeError too: an empty label, or one over 63 characters
        return None
    if not host.startswith("[") and not all(HOST_LABEL.fullmatch(label) for label in host.removesuffix(".").split(".")):
        return None
    if port is not None and not 0 < int(port) <= 65535:
        return None
    shown_port = "" if port is None or int(port) == DEFAULT_PORTS[scheme] else f":{int(port)}"
    return f"{scheme}://{host}{shown_port}"


def _lowered(exc: Exception) -> str:
    """redis-py's message as the rest of a sentence: 'Redis URL must ...' -> 'must ...'."""
    text = str(exc).removeprefix("Redis URL ")
    return text[:1].lower() + text[1:]


class SettingsError(UserError, ValueError):
    """A setting with a bad value, said in one sentence that names its variable."""


def cors_origins_field() -> Any:
    """The CORS origins setting: the app's (Settings) and the protocol's refusals' (server/protocol.py)."""
    return Field(("*",), description="comma-separated CORS origins ('': no CORS headers)")


class EnvSettings(BaseSettings):
    """A model of SOUNDSCAPE_* variables. Constructed directly it reads its arguments only (a test
    never picks up the caller's environment); `from_env` reads the variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @classmethod
    def from_env(cls, **given: Any) -> Self:
        """The model the SOUNDSCAPE_* variables give, with `given` values in place of theirs;
        SettingsError names the first bad one."""
        try:
            return cls(**(EnvSettingsSource(cls)() | given))
        except ValidationError as exc:
            raise SettingsError(_sentence(cls, exc.errors()[0])) from None


def _sentence(model: type[BaseSettings], error: Any) -> str:
    """One sentence for a validation error: which variable, what it must be, what it was."""
    field = str(error["loc"][0]) if error["loc"] else ""
    name = ENV_PREFIX + field.upper() if field else "a SOUNDSCAPE_* variable"
    if error["type"] == "missing":
        return f"set {name} ({model.model_fields[field].description})"
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    return f"{name} must be {error['msg'].removeprefix('Input should be ')}, not {error['input']!r}"


def check_variable_names(models: tuple[type[BaseSettings], ...], environ: Mapping[str, str]) -> None:
    """SettingsError for a SOUNDSCAPE_* variable that is a slip of a setting's name
    (SOUNDSCAPE_MAX_UPLOADS_MB): pydantic ignores a name that is no field, so the server ran with
    the default, silently. Names far from every setting (other commands' variables) pass."""
    known = [ENV_PREFIX + name.upper() for model in models for name in model.model_fields]
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            meant = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            if meant:
                raise SettingsError(
                    f"{name} is not a setting: did you mean {meant[0]}? (as written it would be ignored)"
                )


def _network_hint(proxy: str) -> str:
    """What a trusted proxy should have been: the network meant, where its host bits were set."""
    with contextlib.suppress(ValueError):
        return f"a network: its address has host bits set (did you mean {ipaddress.ip_network(proxy, strict=False)}?)"
    return (
        "an IP address or network (10.0.0.5, 172.16.0.0/12, fd00::/8), or * alone: "
        "the proxy's address is matched, never its name"
    )


class Settings(EnvSettings):
    """Every field is a SOUNDSCAPE_<FIELD> variable; its description is what `soundscape serve
    --help` lists for the variables that have no option."""

    bundle: str = Field(description="the model bundle directory")
    store: str = Field(description="the embedding store directory")
    store_id: str | None = Field(
        None,
        description="the store id the server started with (serve sets it): a worker that finds another store "
        "at SOUNDSCAPE_STORE, replaced since, refuses to start rather than serve it beside the others",
    )
    redis_url: MaybeText = Field(None, description="Redis for tiles and registered queries shared by workers")
    cache_ttl_s: Count = Field(86400, description="seconds a tile stays in Redis")
    # Registered queries (POST /queries) live in this SQLite file, and in Redis without a TTL.
    query_db: str = Field(default_factory=default_query_db, description="SQLite file of registered queries")
    max_queries: Count = Field(100_000, description="registered queries at most; more are refused with 507")
    lru_mb: PositiveOrZero = Field(256, description="in-process tile cache per worker, MB (0: none, Redis alone)")
    # Requests already run in parallel on the compute pool (one per core), so more onnxruntime
    # threads would oversubscribe the cores: 1 measured 2x faster under load.
    ort_threads: Annotated[int, Field(ge=0, le=MAX_THREADS)] = Field(
        1, description="onnxruntime threads per graph run (0: every core)"
    )
    # int8 embeds a new text query at 0.4-0.6 of fp32's CPU (query means within cosine 0.95
    # of fp32's; docs/bundle.md).
    precision: str = Field("fp32", description="which of the bundle's graphs run (runtime/contract.py)")
    compute_threads: Threads = Field(
        default_factory=lambda: os.cpu_count() or 1,
        description="threads of a worker's compute pool (default: the cores, shared out among --workers)",
    )
    # Sent with successful responses of cacheable routes only (server/http.CACHE_POLICIES).
    cache_control: str = Field("public, max-age=86400", description="Cache-Control of successful responses")
    cors_origins: Names = cors_origins_field()
    max_upload_mb: Positive = Field(10, description="largest upload to POST /queries, MB")
    max_audio_s: Positive = Field(60.0, description="longest uploaded audio, seconds")
    # /search?exact=true under metadata the store lacks fuses the whole level.
    max_search_cells: Count = Field(
        250_000, description="cells a /search may rank exactly (a bbox's, or a level's with exact=true)"
    )
    imagery: MaybeText = Field(None, description="basemap raster (none: the path in the store's manifest)")
    # The open internet (docs/reliability.md). Absolute URLs start with public_url when set, else
    # with the request's Host only if it is in allowed_hosts (server/urls.py).
    public_url: MaybeText = Field(None, description="scheme://host[:port][/prefix] of every absolute URL")
    allowed_hosts: Names = Field(
        ("127.0.0.1", "localhost", "::1"), description="Host names absolute URLs may be built from"
    )
    rate_limit: MaybeText = Field(None, description="per-client rate limit, e.g. '20/s burst 100 delay 2' (none: off)")
    full_fusions: Count = Field(1, description="large fusions (/search under hour/month/source) at once per worker")
    # 65,536 cells are about 1.6 s of the demo fuse graph's CPU: 42 searches' candidates (1,536
    # cells each) or four whole level-7 fusions (exact=true).
    fusion_queue_cells: Count = Field(
        65_536, description="cells of large fusions that may wait for a place; past it, 503"
    )
    # One large fusion is rare, bounded by full_fusions, and its answer waits on all of it, so it
    # borrows the other workers' cores.
    fusion_threads: Threads = Field(
        default_factory=lambda: os.cpu_count() or 1,
        description="threads one large fusion is split over (default: every core, whatever --workers)",
    )
    trusted_proxies: str = Field("", description="comma-separated proxies whose X-Forwarded-For names the client")
    keep_alive_s: CountOrZero = Field(5, description="seconds an idle connection is kept open (0: none)")
    backlog: Count = Field(1024, description="connections the listen socket queues")

    @property
    def lru_bytes(self) -> int:
        return int(self.lru_mb * MB)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        """Checked, and kept without a trailing slash: absolute URLs append paths to it."""
        if value is not None and not PUBLIC_URL.fullmatch(value):
            raise ValueError(f"public URL {value!r} is not like https://tiles.example.org or http://host:port/prefix")
        return value.rstrip("/") if value is not None else None

    @field_validator(*FORMS)
    @classmethod
    def _form(cls, value: str | tuple[str, ...], info: ValidationInfo) -> str | tuple[str, ...]:
        """A header value and each allowed host match their form whole."""
        pattern, refusal = FORMS[info.field_name or ""]
        for each in (value,) if isinstance(value, str) else value:
            if not pattern.fullmatch(each):
                raise ValueError(refusal.format(each[:80]))
        return value

    @field_validator("cache_control")
    @classmethod
    def _cache_control(cls, value: str) -> str:
        """Directives a cache reads (after `_form`'s characters): a value of none, or a time that is
        no whole number of seconds, was sent as it was and left tiles to heuristic caching."""
        directives = cache_directives(value)
        if not directives:
            raise ValueError(
                f"Cache-Control {value!r} is not a list of directives like 'public, max-age=86400' "
                "(RFC 9111 5.2: names separated by commas, each with an optional =value)"
            )
        for name, argument in directives:
            if name in DELTA_SECONDS and not re.fullmatch(r"[0-9]+", argument or ""):
                given = f"not {argument!r}" if argument is not None else "and has none"
                raise ValueError(
                    f"Cache-Control {value!r}: {name} takes a whole number of seconds ({name}=86400), {given}"
                )
        return value

    @field_validator("cors_origins")
    @classmethod
    def _cors_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Each origin `*` or spelt as browsers send Origin: CORS compares them as strings."""
        for each in value:
            sent = browser_origin(each) if each != "*" else each
            if sent is None:
                raise ValueError(CORS_FORM.format(each[:80]))
            if sent != each:
                raise ValueError(
                    f"CORS origin {each[:80]!r} is not what a browser sends as Origin: it sends {sent} (scheme and "
                    "host in lower case, an international name in punycode, no default port); write that"
                )
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        """Addresses and networks as uvicorn reads them, or `*` alone. uvicorn takes anything else
        (a host name, 10.0.0.1/8) for a literal that no client address equals: the proxy was never
        trusted, and every client behind it shared its rate limit, without a word."""
        proxies = [each.strip() for each in value.split(",")] if value.strip() else []
        for each in proxies:
            if each == "*" and len(proxies) == 1:
                continue
            try:
                ipaddress.ip_network(each) if "/" in each else ipaddress.ip_address(each)
            except ValueError:
                raise ValueError(f"trusted proxy {each[:80]!r} is not {_network_hint(each)}") from None
        return ",".join(proxies)  # uvicorn trusts any proxy for "*" exactly, not for " *"

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        """Parsed as redis-py will parse it, so a bad URL stops `serve` rather than every worker."""
        if value is not None:
            try:
                parse_url(value)
            except ValueError as exc:
                raise ValueError(f"Redis URL {value!r} (SOUNDSCAPE_REDIS_URL, --redis-url): {_lowered(exc)}") from None
        return value

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: str) -> str:
        if value not in PRECISIONS:
            raise ValueError(f"precision {value!r} is not one of {', '.join(PRECISIONS)}")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            Rate.parse(value)  # a ValueError with its sentence
        return value
