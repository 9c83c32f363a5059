"""``einc data`` and ``einc.datasets``: fetching against a local HTTP server on 127.0.0.1 (no
real network), and finding data sets in the documented order.

The server serves files made here; each path can misbehave on purpose: answer 500 or 404, send
other bytes, close the connection half-way (the next request must resume with ``Range``), or
ignore ``Range``. What must hold every time: a file appears under its name only complete and
matching its checksum; a failure names each mirror and why; nothing is written outside tmp dirs.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from einc import cli
from einc.errors import DataError
from einc.io import datasets
from einc.io.download import DownloadError, download

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


class Server:
    """Files by URL path; ``modes[path]``: 'ok', '500', '404', 'corrupt', 'truncate' (send half,
    then close; ``truncations`` times), 'no-range' (always the whole file with 200)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.truncations = 1
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path, ranged = self.path, self.headers.get("Range")
                server.requests.append((path, ranged))
                mode = server.modes.get(path, "ok")
                if mode in ("500", "404") or path not in server.files:
                    self.send_error(404 if mode == "404" or path not in server.files else 500)
                    return
                body = server.files[path]
                if mode == "corrupt":
                    body = bytes(b ^ 0xFF for b in body)
                start = int(ranged[len("bytes="):].rstrip("-")) if ranged and mode != "no-range" else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if mode == "truncate" and server.truncations > 0:
                    server.truncations -= 1
                    self.wfile.write(body[start: start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.close()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's cache or sees the developers' ../shared copy."""
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(datasets.MIRRORS_ENV, raising=False)
    monkeypatch.setattr(datasets, "shared_home", lambda: tmp_path / "no-shared")


def refused_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


# -------------------------------------------------------------------------- download()


def test_download_verifies_and_publishes(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    target = download([server.url + "/f.bin"], tmp_path / "f.bin", len(PAYLOAD), PAYLOAD_SHA, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no .part left
    # a verified file is not fetched again
    download([server.url + "/f.bin"], target, len(PAYLOAD), PAYLOAD_SHA, progress=False)
    assert len(server.requests) == 1


def test_checksum_mismatch_writes_nothing_and_says_so(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    server.modes["/f.bin"] = "corrupt"
    with pytest.raises(DownloadError, match=f"checksum mismatch: sha256 [0-9a-f]{{64}}, expected {PAYLOAD_SHA}"):
        download([server.url + "/f.bin"], tmp_path / "f.bin", len(PAYLOAD), PAYLOAD_SHA, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_mirror_falls_back_to_the_next(server: Server, tmp_path: Path) -> None:
    server.files["/bad/f.bin"] = server.files["/good/f.bin"] = PAYLOAD
    server.modes["/bad/f.bin"] = "corrupt"
    urls = [f"http://127.0.0.1:{refused_port()}/f.bin", server.url + "/missing.bin", server.url + "/bad/f.bin",
            server.url + "/good/f.bin"]
    assert download(urls, tmp_path / "f.bin", len(PAYLOAD), PAYLOAD_SHA, progress=False).read_bytes() == PAYLOAD


def test_a_truncated_transfer_resumes_with_a_range_request(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    server.modes["/f.bin"] = "truncate"
    target = download([server.url + "/f.bin"], tmp_path / "f.bin", len(PAYLOAD), PAYLOAD_SHA, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", None), ("/f.bin", f"bytes={len(PAYLOAD) // 2}-")]


def test_an_interrupted_download_resumes_in_the_next_run(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    server.modes["/f.bin"] = "truncate"
    server.truncations = 3  # every attempt of the first run breaks half-way
    with pytest.raises(DownloadError, match="ended after"):
        download([server.url + "/f.bin"], tmp_path / "f.bin", len(PAYLOAD), PAYLOAD_SHA, progress=False)
    part = tmp_path / "f.bin.part"
    assert not (tmp_path / "f.bin").exists() and 0 < part.stat().st_size < len(PAYLOAD)
    kept = part.stat().st_size
    assert download([server.url + "/f.bin"], tmp_path / "f.bin", len(PAYLOAD), PAYLOAD_SHA,
                    progress=False).read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/f.bin", f"bytes={kept}-")
    assert not part.exists()


def test_a_server_that_ignores_range_starts_over(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    server.modes["/f.bin"] = "no-range"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    assert download([server.url + "/f.bin"], tmp_path / "f.bin", len(PAYLOAD), PAYLOAD_SHA,
                    progress=False).read_bytes() == PAYLOAD


def test_a_stale_part_that_is_not_a_prefix_is_discarded(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(b"\0" * 1000)  # wrong bytes: the checksum fails, then a clean start
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download([server.url + "/f.bin"], tmp_path / "f.bin", len(PAYLOAD), PAYLOAD_SHA, progress=False)
    assert not (tmp_path / "f.bin.part").exists()
    assert download([server.url + "/f.bin"], tmp_path / "f.bin", len(PAYLOAD), PAYLOAD_SHA,
                    progress=False).read_bytes() == PAYLOAD


@pytest.mark.parametrize("mode, message", [("500", "HTTP 500"), ("404", "HTTP 404")])
def test_server_errors_name_the_mirror(server: Server, tmp_path: Path, mode: str, message: str) -> None:
    server.files["/f.bin"] = PAYLOAD
    server.modes["/f.bin"] = mode
    with pytest.raises(DownloadError, match=f"could not download f.bin: {server.url}/f.bin: {message}"):
        download([server.url + "/f.bin"], tmp_path / "f.bin", len(PAYLOAD), PAYLOAD_SHA, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_offline_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(datasets.MIRRORS_ENV, f"http://127.0.0.1:{refused_port()}")
    assert cli.main(["data", "fetch", "debd", "nltcs", "--dir", str(tmp_path / "d")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("einc: error: could not download nltcs.train.data: ") and "cannot connect" in error
    assert error.count("\n") == 1
    assert not (tmp_path / "d" / "debd" / "nltcs").exists()
    # no empty staging folders left behind (a partial download would be kept, to resume)
    assert not (tmp_path / "d" / ".downloads").exists()


# -------------------------------------------------------------------------- fetch(): real table entries


def serve_nltcs(server: Server) -> None:
    """The DEBD repository's nltcs files: the shipped examples/data/nltcs is them, gzipped."""
    for split in datasets.SPLITS:
        raw = gzip.decompress((ROOT / "examples" / "data" / "nltcs" / f"{split}.csv.gz").read_bytes())
        server.files[f"/debd/nltcs/nltcs.{split}.data"] = raw


def test_fetch_debd_through_the_cli(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    serve_nltcs(server)
    monkeypatch.setenv(datasets.MIRRORS_ENV, server.url)
    assert cli.main(["data", "fetch", "debd", "nltcs"]) == 0
    folder = tmp_path / "cache" / "debd" / "nltcs"
    assert f"debd nltcs: fetched and verified: {folder}" in capsys.readouterr().out
    for split in datasets.SPLITS:
        # what --data reads: the repository's bytes, gzipped
        fetched = gzip.decompress((folder / f"{split}.csv.gz").read_bytes())
        assert fetched == server.files[f"/debd/nltcs/nltcs.{split}.data"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["debd"]  # downloads removed
    assert sorted(p.name for p in (tmp_path / "cache" / "debd").iterdir()) == ["nltcs"]  # no staging left
    requests = len(server.requests)
    assert cli.main(["data", "fetch", "debd", "nltcs"]) == 0  # there and verified: no download
    assert "already there, verified" in capsys.readouterr().out and len(server.requests) == requests
    assert cli.main(["data", "path", "debd", "nltcs"]) == 0
    assert capsys.readouterr().out == f"{folder}\n"
    from einc.data import load_array

    assert load_array(folder / "train.csv.gz").shape == (16181, 16)


def test_a_damaged_copy_is_fetched_again(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve_nltcs(server)
    monkeypatch.setenv(datasets.MIRRORS_ENV, server.url)
    folder, _ = datasets.fetch("debd/nltcs")
    (folder / "test.csv.gz").write_bytes(gzip.compress(b"0,1\n"))
    messages = []
    path, fetched = datasets.fetch("debd/nltcs", say=messages.append)
    assert fetched and "not the published data" in messages[0]
    assert datasets.verify(datasets.DATASETS["debd/nltcs"], path)


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def small_mnist(server: Server, monkeypatch: pytest.MonkeyPatch, content: str | None = None) -> dict[str, np.ndarray]:
    """Serve a 5 + 3 image MNIST in IDX form and point the mnist entry's checksums at it."""
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.integers(0, 256, (5, 28, 28)), "y_train": rng.integers(0, 10, 5),
              "x_test": rng.integers(0, 256, (3, 28, 28)), "y_test": rng.integers(0, 10, 3)}
    files = []
    for name, file in datasets.MNIST_PARTS.items():
        body = idx_gz(arrays[name])
        server.files[f"/mnist/{file}"] = body
        files.append(datasets.Download(file, len(body), hashlib.sha256(body).hexdigest()))
    expected = {k: v.astype(np.uint8).reshape(len(v), -1) if k.startswith("x") else v.astype(np.uint8)
                for k, v in arrays.items()}
    entry = dataclasses.replace(datasets.DATASETS["mnist"], files=tuple(files),
                                content_sha256=content or datasets.content_sha256(expected))
    monkeypatch.setitem(datasets.DATASETS, "mnist", entry)
    monkeypatch.setenv(datasets.MIRRORS_ENV, server.url)
    return expected


def test_fetch_mnist_decodes_idx_into_the_npz_einc_reads(server: Server, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    expected = small_mnist(server, monkeypatch)
    path, fetched = datasets.fetch("mnist", tmp_path / "d")
    assert fetched and path == tmp_path / "d" / "mnist.npz"
    with np.load(path) as archive:
        assert sorted(archive.files) == sorted(expected)
        for name, array in expected.items():
            assert archive[name].dtype == np.uint8 and np.array_equal(archive[name], array)
    assert datasets.find("mnist", folder=tmp_path / "d") == path


def test_arrays_that_differ_from_the_published_ones_are_not_written(server: Server, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    small_mnist(server, monkeypatch, content="0" * 64)
    with pytest.raises(DataError, match="decode to arrays with sha256 .* expected 0{64}; nothing was written"):
        datasets.fetch("mnist", tmp_path / "d")
    assert not (tmp_path / "d" / "mnist.npz").exists()


def test_read_binary_csv_refuses_other_text() -> None:
    assert datasets.read_binary_csv(b"0,1\n1,1\n", "f").tolist() == [[0, 1], [1, 1]]
    for text, line in ((b"0,1\n1,1,0\n", 2), (b"0,1\n2,1\n", 2), (b"0;1\n", 1)):
        with pytest.raises(DataError, match=f"f:{line}: expected comma-separated 0/1"):
            datasets.read_binary_csv(text, "f")


# -------------------------------------------------------------------------- find()


def test_find_order_given_then_cache_then_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    monkeypatch.setattr(datasets, "shared_home", lambda: shared)
    with pytest.raises(datasets.DataMissing) as missing:
        datasets.find("mnist")
    message = str(missing.value)
    assert "run `einc data fetch mnist`" in message and "\n" not in message
    shared.mkdir()
    (shared / "mnist.npz").write_bytes(b"x")
    assert datasets.find("mnist") == shared / "mnist.npz"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "mnist.npz").write_bytes(b"x")
    assert datasets.find("mnist") == tmp_path / "cache" / "mnist.npz"
    assert datasets.find("mnist", given=shared / "mnist.npz") == shared / "mnist.npz"
    with pytest.raises(datasets.DataMissing, match="nope.npz: no such file"):
        datasets.find("mnist", given=tmp_path / "nope.npz")


def test_data_command_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in ((["data", "fetch", "debd", "ad"], "no verified checksums"),
                          (["data", "fetch", "debd", "nltc"], "unknown DEBD data set 'nltc'"),
                          (["data", "fetch"], "which data set?"),
                          (["data", "path", "mnist"], "run `einc data fetch mnist`")):
        assert cli.main(argv) == 1
        error = capsys.readouterr().err
        assert error.startswith("einc: error: ") and message in error and error.count("\n") == 1
    assert cli.main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert "mnist" in listing and "debd nltcs" in listing and "not fetched" in listing


@pytest.mark.skipif(not SHARED.is_dir(), reason="the developers' ../shared/data copy is not on this machine")
def test_table_content_checksums_match_the_developers_copy() -> None:
    """The content checksums shipped in the table are those of ../shared/data's arrays."""
    assert datasets.verify(datasets.DATASETS["mnist"], SHARED / "mnist.npz")
    for folder in [*sorted((SHARED / "debd").iterdir()), *sorted((SHARED / "debd_extra").iterdir())]:
        assert datasets.verify(datasets.DATASETS[f"debd/{folder.name}"], folder), folder.name
