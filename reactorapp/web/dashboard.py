"""GET / and /static/...: the dashboard, a page and its scripts and styles.

Everything it needs ships in ``static/`` (no build step, no CDN), so it
works offline; the files are read once, when the site is built.
"""

from __future__ import annotations

from importlib import resources

from reactorapp.web.errors import Body, JSONResource, not_found

CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}

#: Only our own files may run or load; the page fetches only from here.
SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; "
        b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
    ),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
}


def load_static() -> dict[str, Body]:
    """The files of ``static/`` by name, with their media types."""
    files = {}
    for entry in resources.files("reactorapp.web").joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind("."):]
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name] = Body(entry.read_bytes(), CONTENT_TYPES[suffix])
    return files


def _answer(request, body: Body) -> Body:
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)
    request.setHeader(b"Cache-Control", b"no-cache")
    return body


class DashboardPage(JSONResource):
    """GET /: the page itself."""

    def __init__(self, files: dict[str, Body]) -> None:
        super().__init__()
        self.page = files["index.html"]

    def json_GET(self, request):
        return _answer(request, self.page)


class StaticFiles(JSONResource):
    """GET /static/{name}: one of the dashboard's files."""

    takes_subpath = True

    def __init__(self, files: dict[str, Body]) -> None:
        super().__init__()
        self.files = files

    def json_GET(self, request):
        name = b"/".join(request.postpath).decode("utf-8", "replace")
        body = self.files.get(name)
        if body is None:
            raise not_found(f"There is no file {name!r} in /static.")
        return _answer(request, body)
