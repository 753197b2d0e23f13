"""Server settings: SOUNDSCAPE_* variables read by one model (server/settings.py), each bad value
refused in one sentence naming its variable, and `soundscape serve` refusing it with exit code 2
before it starts."""

import os
import subprocess
import sys

import pytest

from server.protocol import ConnectionLimits
from server.settings import MB, Settings, SettingsError, check_variable_names
from store.reader import Store
from tests.conftest import free_port
from tests.server_support import REPO, make_client, soundscape_here


@pytest.fixture
def env(monkeypatch):
    """A clean SOUNDSCAPE_* environment with the two required variables."""
    for name in [n for n in os.environ if n.startswith("SOUNDSCAPE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SOUNDSCAPE_BUNDLE", "b")
    monkeypatch.setenv("SOUNDSCAPE_STORE", "s")
    return monkeypatch


def test_variables_give_the_settings(env):
    for name, value in {
        "REDIS_URL": "redis://r:6379/0",
        "LRU_MB": "16",
        "ORT_THREADS": "2",
        "CORS_ORIGINS": " https://a.example , https://b.example ",
        "MAX_UPLOAD_MB": "0.5",
        "ALLOWED_HOSTS": ".example.org",
        "RATE_LIMIT": "20/s burst 100",
        "PUBLIC_URL": "https://tiles.example.org/maps/",
        "CACHE_CONTROL": "public, max-age=7",
    }.items():
        env.setenv(f"SOUNDSCAPE_{name}", value)
    settings = Settings.from_env()
    assert (settings.bundle, settings.store, settings.redis_url) == ("b", "s", "redis://r:6379/0")
    assert (settings.lru_bytes, settings.max_upload_bytes, settings.ort_threads) == (16 * MB, MB // 2, 2)
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.allowed_hosts == (".example.org",) and settings.rate_limit == "20/s burst 100"
    assert (settings.public_url, settings.cache_control) == ("https://tiles.example.org/maps", "public, max-age=7")


def test_defaults_and_empty_values(env):
    settings = Settings.from_env()
    assert settings == Settings(bundle="b", store="s", query_db=settings.query_db)
    assert settings.cors_origins == ("*",) and settings.redis_url is None and settings.lru_bytes == 256 * MB
    env.setenv("SOUNDSCAPE_CORS_ORIGINS", "")  # empty: no CORS at all
    env.setenv("SOUNDSCAPE_REDIS_URL", "")  # empty: none
    env.setenv("SOUNDSCAPE_DATA_DIR", "/srv/state")
    settings = Settings.from_env()
    assert settings.cors_origins == () and settings.redis_url is None
    assert settings.query_db == "/srv/state/queries.sqlite"
    env.setenv("SOUNDSCAPE_QUERY_DB", "/elsewhere/q.sqlite")
    assert Settings.from_env().query_db == "/elsewhere/q.sqlite"


def test_direct_construction_reads_no_variable(env):
    env.setenv("SOUNDSCAPE_REDIS_URL", "redis://r:6379/0")
    assert Settings(bundle="x", store="y").redis_url is None
    with pytest.raises(ValueError, match="no_such"):
        Settings(bundle="x", store="y", no_such=1)


@pytest.mark.parametrize(
    ("name", "value", "sentence"),
    [
        ("LRU_MB", "lots", "SOUNDSCAPE_LRU_MB must be a valid number, unable to parse string as a number, not 'lots'"),
        ("ORT_THREADS", "1.5", "SOUNDSCAPE_ORT_THREADS must be a valid integer"),
        ("RATE_LIMIT", "fast", "rate limit 'fast'"),
        ("PUBLIC_URL", "tiles.example.org", "public URL 'tiles.example.org' is not like https://tiles.example.org"),
        ("BUNDLE", None, "set SOUNDSCAPE_BUNDLE (the model bundle directory)"),
        ("MAX_CONNECTIONS", "many", "SOUNDSCAPE_MAX_CONNECTIONS must be a valid integer"),
        ("PRECISION", "fp8", "precision 'fp8' is not one of fp32, fp16, int8"),
        ("REDIS_URL", "localhost:6379", "Redis URL 'localhost:6379' (SOUNDSCAPE_REDIS_URL, --redis-url)"),
        ("REDIS_URL", "redis://r:99999", "(SOUNDSCAPE_REDIS_URL, --redis-url): port out of range 0-65535"),
        # A CR in a header value made every response a 500; a trailing slash or a port never
        # matched a browser's Origin or a Host name; 100000 onnxruntime threads stopped serve.
        ("CACHE_CONTROL", "public\r\nX-Evil: 1", "Cache-Control 'public\\r\\nX-Evil: 1' is not a header value"),
        ("CACHE_CONTROL", "x" * 300, "is not a header value: 1 to 256 visible ASCII characters and spaces"),
        # Directives a cache cannot read: an empty Cache-Control, or a time that is no whole
        # number of seconds, left tiles to heuristic caching or stale at once.
        ("CACHE_CONTROL", " ", "Cache-Control ' ' is not a list of directives like 'public, max-age=86400'"),
        ("CACHE_CONTROL", ",", "Cache-Control ',' is not a list of directives"),
        ("CACHE_CONTROL", "public max-age=60", "Cache-Control 'public max-age=60' is not a list of directives"),
        (
            "CACHE_CONTROL",
            "public, max-age=1day",
            "Cache-Control 'public, max-age=1day': max-age takes a whole number of seconds (max-age=86400), not '1day'",
        ),
        ("CACHE_CONTROL", "max-age=-1", "max-age takes a whole number of seconds (max-age=86400), not '-1'"),
        (
            "CACHE_CONTROL",
            "public, s-maxage",
            "s-maxage takes a whole number of seconds (s-maxage=86400), and has none",
        ),
        ("CORS_ORIGINS", "https://maps.example.org/", "CORS origin 'https://maps.example.org/' is not an origin a"),
        ("CORS_ORIGINS", "maps.example.org", "CORS origin 'maps.example.org' is not an origin a browser sends"),
        # Spellings no browser sends as Origin: CORS was off for them, silently.
        ("CORS_ORIGINS", "https://*.example", "CORS origin 'https://*.example' is not an origin a browser sends"),
        ("CORS_ORIGINS", "https://a.example:99999", "a port from 1 to 65535"),
        ("CORS_ORIGINS", "*,https://A.example", "'https://A.example' is not what a browser sends as Origin: it sends"),
        ("CORS_ORIGINS", "https://a.example:443", "it sends https://a.example (scheme and host in lower case"),
        ("CORS_ORIGINS", "http://a.example:80", "it sends http://a.example (scheme"),
        ("CORS_ORIGINS", "https://bücher.example", "it sends https://xn--bcher-kva.example (scheme"),
        ("ALLOWED_HOSTS", "localhost,tiles.example.org:8000", "allowed host 'tiles.example.org:8000' is not a host"),
        ("ALLOWED_HOSTS", "https://tiles.example.org", "allowed host 'https://tiles.example.org' is not a host"),
        ("ORT_THREADS", "100000", "SOUNDSCAPE_ORT_THREADS must be less than or equal to 1024, not '100000'"),
        ("COMPUTE_THREADS", "5000", "SOUNDSCAPE_COMPUTE_THREADS must be less than or equal to 1024"),
        # uvicorn took each for a literal no client address equals: the proxy was never trusted.
        ("TRUSTED_PROXIES", "nginx", "trusted proxy 'nginx' is not an IP address or network"),
        (
            "TRUSTED_PROXIES",
            "10.0.0.1/8",
            "trusted proxy '10.0.0.1/8' is not a network: its address has host bits set (did you mean 10.0.0.0/8?)",
        ),
        ("TRUSTED_PROXIES", "10.0.0.5,*", "trusted proxy '*' is not an IP address or network (10.0.0.5, "),
        ("TRUSTED_PROXIES", "10.0.0.5,", "trusted proxy '' is not an IP address or network"),
    ],
)
def test_a_bad_value_is_one_sentence_naming_its_variable(env, name, value, sentence):
    if value is None:
        env.delenv(f"SOUNDSCAPE_{name}")
    else:
        env.setenv(f"SOUNDSCAPE_{name}", value)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env()
        ConnectionLimits.from_env()
    assert sentence in str(caught.value) and "\n" not in str(caught.value)


def test_the_forms_each_setting_documents_are_taken(env):
    env.setenv("SOUNDSCAPE_ALLOWED_HOSTS", ".example.org,tiles.example.org,my_box,127.0.0.1,::1,*")
    origins = "*,http://localhost:5173,https://maps.example.org,https://xn--bcher-kva.example,http://[::1]:8080"
    env.setenv("SOUNDSCAPE_CORS_ORIGINS", origins)
    env.setenv("SOUNDSCAPE_CACHE_CONTROL", "public, max-age=60, stale-while-revalidate=30")
    settings = Settings.from_env()
    assert settings.allowed_hosts[-1] == "*" and settings.cors_origins == tuple(origins.split(","))
    for value in ("PUBLIC, Max-Age=0", 'no-cache="Set-Cookie, Vary", must-revalidate', "no-store"):
        env.setenv("SOUNDSCAPE_CACHE_CONTROL", value)
        assert Settings.from_env().cache_control == value
    for proxies, read in [
        ("127.0.0.1", "127.0.0.1"),
        ("10.0.0.5, 172.16.0.0/12,::1,fd00::/8", "10.0.0.5,172.16.0.0/12,::1,fd00::/8"),
        (" * ", "*"),
        ("", ""),
    ]:
        env.setenv("SOUNDSCAPE_TRUSTED_PROXIES", proxies)
        assert Settings.from_env().trusted_proxies == read


@pytest.mark.parametrize(
    ("name", "meant"),
    [("MAX_UPLOADS_MB", "MAX_UPLOAD_MB"), ("CORS_ORIGIN", "CORS_ORIGINS"), ("KEEPALIVE_S", "KEEP_ALIVE_S")],
)
def test_a_slip_of_a_variable_name_is_refused(name, meant):
    """SOUNDSCAPE_MAX_UPLOADS_MB=3 was ignored (no such field): the server took 10 MB uploads."""
    with pytest.raises(SettingsError, match=f"SOUNDSCAPE_{name} is not a setting: did you mean SOUNDSCAPE_{meant}?"):
        check_variable_names((Settings, ConnectionLimits), {f"SOUNDSCAPE_{name}": "1"})


def test_other_commands_variables_pass_the_name_check():
    """Variables of precompute, the store and the tests are far from every serve setting."""
    others = ("DATA_DIR", "RAY_KILL_ONCE", "IMAGERY", "QUERY_DB", "HOME_PAGE")
    check_variable_names((Settings, ConnectionLimits), {f"SOUNDSCAPE_{n}": "1" for n in others} | {"PATH": "/bin"})


def numeric_fields() -> list[tuple[type, str, float]]:
    """(model, field, least value allowed) of every number an operator sets."""
    found = []
    for model in (Settings, ConnectionLimits):
        for name, field in model.model_fields.items():
            if field.annotation in (int, float):
                ge = [m.ge for m in field.metadata if getattr(m, "ge", None) is not None]
                gt = [m.gt + 0.5 for m in field.metadata if getattr(m, "gt", None) is not None]
                assert ge or gt, f"{model.__name__}.{name} has no lower bound"
                found.append((model, name, (ge or gt)[0]))
    return found


@pytest.mark.parametrize(("model", "name", "least"), numeric_fields(), ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_number_is_bounded_and_finite(env, model, name, least):
    """A NaN body timeout answered every request 400, 0 connections every request 503, an
    infinite upload limit bounded nothing, a NaN cache size crashed the workers."""
    variable = f"SOUNDSCAPE_{name.upper()}"
    env.setenv(variable, str(least))
    assert getattr(model.from_env(), name) == least
    for bad in ("nan", "inf", "-inf", str(least - 1)):
        env.setenv(variable, bad)
        with pytest.raises(SettingsError) as caught:
            model.from_env()
        assert str(caught.value).startswith(f"{variable} must be") and repr(bad) in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "sentence"),
    [
        ("LRU_MB", "lots", "SOUNDSCAPE_LRU_MB must be a valid number"),
        ("MAX_HEADERS", "-", "SOUNDSCAPE_MAX_HEADERS"),
        ("BODY_TIMEOUT_S", "nan", "SOUNDSCAPE_BODY_TIMEOUT_S must be a finite number, not 'nan'"),
        ("MAX_CONNECTIONS", "0", "SOUNDSCAPE_MAX_CONNECTIONS must be greater than or equal to 1, not '0'"),
        ("MAX_UPLOADS_MB", "3", "SOUNDSCAPE_MAX_UPLOADS_MB is not a setting: did you mean SOUNDSCAPE_MAX_UPLOAD_MB?"),
    ],
)
def test_serve_refuses_a_bad_variable_before_starting(
    bundle_path, store_path, tmp_path, monkeypatch, capfd, name, value, sentence
):
    env = {f"SOUNDSCAPE_{name}": value, "SOUNDSCAPE_QUERY_DB": str(tmp_path / "q.sqlite")}
    argv = ["serve", "--bundle", str(bundle_path), "--store", str(store_path), "--port", str(free_port())]
    done = soundscape_here(monkeypatch, capfd, argv, env)
    assert done.returncode == 2, done.stderr
    assert sentence in done.stderr and "Traceback" not in done.stderr
    assert "viewer:" not in done.stdout, "refused before the banner"


def test_a_refusal_is_exit_2_of_the_serve_process(bundle_path, store_path, tmp_path):
    """The refusals above run in the test's process; `soundscape serve` as a process of its own
    exits 2 with the same sentence."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDSCAPE_")}
    env.update({"SOUNDSCAPE_LRU_MB": "lots", "SOUNDSCAPE_QUERY_DB": str(tmp_path / "q.sqlite")})
    command = [sys.executable, "-m", "cli.main", "serve", "--bundle", str(bundle_path), "--store", str(store_path)]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "SOUNDSCAPE_LRU_MB must be a valid number" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "viewer:" not in done.stdout


@pytest.mark.parametrize(
    ("option", "sentence"),
    [
        ("--port=99999", "argument --port: must be an integer from 1 to 65535, not '99999'"),
        ("--port=0", "argument --port: must be an integer from 1 to 65535, not '0'"),
        ("--workers=0", "argument --workers: must be an integer of at least 1, not '0'"),
        ("--max-connections=-1", "argument --max-connections: must be an integer of at least 1, not '-1'"),
        (
            "--redis-url=é",
            "Redis URL 'é' (SOUNDSCAPE_REDIS_URL, --redis-url): must specify one of the following schemes",
        ),
        ("--trusted-proxies=proxy", "trusted proxy 'proxy' is not an IP address or network"),
        ("--cors-origins=https://Maps.example.org", "it sends https://maps.example.org (scheme and host in lower"),
        ("--cache-control=public, max-age=1day", "max-age takes a whole number of seconds (max-age=86400)"),
    ],
)
def test_serve_refuses_an_option_out_of_range(bundle_path, store_path, monkeypatch, capfd, option, sentence):
    """--port 99999 served on another port than the banner named; --workers 0 started one."""
    argv = ["serve", "--bundle", str(bundle_path), "--store", str(store_path), option]
    done = soundscape_here(monkeypatch, capfd, argv)
    assert done.returncode == 2 and sentence in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_help_names_every_setting(command):
    """Each SOUNDSCAPE_* setting is reachable from --help: an option that says its variable, or a
    line of the epilog with its default and what it sets (the required bundle and store aside)."""
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    text = " ".join(done.stdout.split())
    for model in (Settings, ConnectionLimits):
        for name, field in model.model_fields.items():
            variable, option = f"SOUNDSCAPE_{name.upper()}", f"--{name.replace('_', '-')}"
            assert field.description, f"{variable} has no description"
            listed = f"  {variable}" in done.stdout and field.description in text
            assert listed or option in done.stdout or field.is_required(), f"{command} --help does not name {variable}"


def test_a_worker_that_finds_another_store_than_the_server_started_with_refuses_it(bundle_path, store_path):
    """A worker of several restarted after `precompute --overwrite` replaced the store served the
    new store beside the others' old one: two maps, and ETags flipping, under one server."""
    with pytest.raises(SettingsError, match="not the 0123456789abcdef this server started with"):
        make_client(bundle_path, store_path, store_id="0123456789abcdef")
    with make_client(bundle_path, store_path, store_id=Store(store_path).id) as same:
        assert same.get("/healthz").json()["store"] == Store(store_path).id
