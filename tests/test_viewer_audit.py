"""The viewer as a person meets it in the first minutes (tests/test_viewer.py has the map itself):
a hand-edited or hostile saved link opens the default map and says which of its parameters it
left out; a link pasted into the address bar of an open viewer shows its state; texts from the
user, a link or the server (a query, a file name, the store's credit) show as text, and long ones
do not flood the panel; refusals show the server's sentence; the page has a Content-Security-Policy
of its own origin, under which it runs with no console error; every control has a name of its own."""

from __future__ import annotations

from tests.server_support import make_client
from tests.test_viewer import browser, hash_params, open_page, server, store_copy, wait_until  # noqa: F401  (fixtures and helpers)

HOSTILE = "<img src=x onerror=window.injected=1>"
HEATMAP_LOADED = "document.body.dataset.heatmap === 'loaded'"


def policy(header: str) -> dict[str, str]:
    pairs = (directive.strip().partition(" ") for directive in header.split(";") if directive.strip())
    return {name: value for name, _, value in pairs}


def test_the_viewer_page_may_run_and_load_only_its_own_origins_files(bundle_path, store_path):
    """The viewer had no Content-Security-Policy (the docs pages had one): a string that reached its
    DOM as HTML could have run script, and nothing stopped a request to another host."""
    with make_client(bundle_path, store_path) as client:
        page = client.get("/")
    directives = policy(page.headers["content-security-policy"])
    assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["object-src"] == "'none'"
    assert "unsafe" not in page.headers["content-security-policy"]
