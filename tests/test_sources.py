"""Catalogue sources recognised by their content, not their names: an image file is one
image whatever its extension, a file is a catalogue only if it parses as one, anything else
is refused in one line naming what it looks like (before anything is recorded), and a
folder build says what it skipped and why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from helpers import heic, jpeg, photo, png, shrink, write

from echoimage.cli import cli

pytestmark = pytest.mark.usefixtures("no_network")

SVG = (b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
       b'width="10" height="10"><rect width="10" height="10"/></svg>\n')
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" + bytes(300)
HTML = (b"<!DOCTYPE html>\n<html lang=en><head><title>Shop</title></head><body>"
        b"<img src=a.jpg></body></html>\n")


def run(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args])


def small(name: str) -> np.ndarray:
    return shrink(photo(name), 256)


def status(data_dir: Path) -> dict:
    return json.loads(run(data_dir, "index", "status", "--json").output)


@pytest.mark.parametrize("name, make", [
    ("photo", lambda: jpeg(small("coffee"))),  # a JPEG with no extension
    ("IMG_0001.HEIC", lambda: heic(small("coffee"))),
    ("photo.txt", lambda: png(small("coffee"))),  # a PNG with the wrong extension
    ("photo.json", lambda: jpeg(small("coffee"))),
])
def test_an_image_file_is_one_image_whatever_its_name(tmp_path: Path, name: str,
                                                      make) -> None:
    source = write(tmp_path / name, make())
    result = run(tmp_path / "d", "index", "build", "-q", "--json", str(source))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["counts"] == {"indexed": 1}, summary
    st = status(tmp_path / "d")
    assert st["sources"][0]["kind"] == "image" and st["counts"] == {"indexed": 1}


@pytest.mark.parametrize("name, data, what", [
    ("logo.svg", SVG, "SVG"),
    ("manual.pdf", PDF, "PDF"),
    ("shop.html", HTML, "HTML"),
    ("saved-page", HTML, "HTML"),
    ("junk", np.random.default_rng(0).bytes(20_000), "binary data"),
    ("archive.dat", b"PK\x03\x04" + bytes(400), "ZIP archive"),
    ("clip.mp4", b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(400),
     "MP4/QuickTime video"),
])
def test_anything_else_is_refused_in_one_line(tmp_path: Path, name: str, data: bytes,
                                              what: str) -> None:
    good = tmp_path / "good"
    write(good / "coffee.jpg", jpeg(small("coffee")))
    source = write(tmp_path / name, data)
    result = run(tmp_path / "d", "index", "build", "-q", str(good), str(source))
    assert result.exit_code == 1, result.output
    assert result.output == (f"Error: {source}: neither an image nor a catalogue file "
                             f"(looks like {what})\n")
    assert not (tmp_path / "d").exists()  # nothing recorded, not even a store


def test_an_empty_file_named_as_an_image_is_refused(tmp_path: Path) -> None:
    """An empty photo.jpg is an image that was not written, not an empty catalogue; an
    empty list of images is a catalogue with nothing in it yet."""
    source = write(tmp_path / "photo.jpg", b"")
    result = run(tmp_path / "d", "index", "build", "-q", str(source))
    assert result.exit_code == 1
    assert result.output == f"Error: {source}: an empty file (not an image)\n"
    assert not (tmp_path / "d").exists()
    listed = write(tmp_path / "urls.txt", b"")
    result = run(tmp_path / "d", "index", "build", "-q", "--json", str(listed))
    assert result.exit_code == 0, result.output
    assert status(tmp_path / "d")["sources"][0]["kind"] == "text"


@pytest.mark.parametrize("text, line", [
    ("# Notes\nBuy milk.\nphotos/a.jpg\n", 2),
    ("https://shop.example/a.jpg\nhello world\n", 2),
])
def test_text_that_is_no_list_of_images_is_refused(tmp_path: Path, text: str,
                                                   line: int) -> None:
    source = write(tmp_path / "notes", text.encode())
    result = run(tmp_path / "d", "index", "build", "-q", str(source))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {source}: not a list of images: line {line} is "
                                    "neither a URL nor an image's path")
    assert result.output.count("\n") == 1
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("kind, content", [
    ("json", lambda rel: json.dumps([{"url": r, "title": "t"} for r in rel])),
    ("jsonl", lambda rel: "\n".join(json.dumps({"url": r}) for r in rel) + "\n"),
    ("csv", lambda rel: "url,title\n" + "".join(f"{r},t\n" for r in rel)),
    ("text", lambda rel: "# my photos\n" + "\n".join(rel) + "\n"),
])
def test_a_catalogue_is_read_by_its_content(tmp_path: Path, kind: str, content) -> None:
    rel = [f"images/{n}.jpg" for n in ("coffee", "rocket")]
    for r in rel:
        write(tmp_path / r, jpeg(small(Path(r).stem)))
    source = write(tmp_path / "catalogue", content(rel).encode())  # no extension
    result = run(tmp_path / "d", "index", "build", "-q", "--json", str(source))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"] == {"indexed": 2}
    assert status(tmp_path / "d")["sources"][0]["kind"] == kind


def test_a_folder_build_says_what_it_skipped(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write(root / "coffee.jpg", jpeg(small("coffee")))
    write(root / "iphone" / "IMG_0002.HEIC", heic(small("rocket")))
    write(root / "iphone" / "IMG_0003.heif", heic(small("moon")))
    write(root / "scan", png(small("camera")))  # no extension: an image by its bytes
    write(root / "logo.svg", SVG)
    write(root / "docs" / "manual.pdf", PDF)
    write(root / ".DS_Store", bytes(64))  # hidden: passed over without a word
    result = run(tmp_path / "d", "index", "build", "-q", str(root))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("build: indexed: 4 in ")
    assert lines[1] == "  2 files skipped: 1 PDF, 1 SVG"
    again = run(tmp_path / "d2", "index", "build", "-q", "--json", str(root))
    summary = json.loads(again.output)
    assert summary["counts"] == {"indexed": 4}
    assert summary["skipped"] == {"SVG": 1, "PDF": 1}


def test_a_folder_of_heic_photos_is_indexed(tmp_path: Path) -> None:
    """A folder of iPhone photos: every one indexed, found by a JPEG copy."""
    root = tmp_path / "iphone"
    for n in ("coffee", "rocket", "moon"):
        write(root / f"{n}.HEIC", heic(small(n)))
    data = tmp_path / "d"
    result = run(data, "index", "build", "-q", "--json", str(root))
    assert json.loads(result.output)["counts"] == {"indexed": 3}, result.output
    q = write(tmp_path / "q.jpg", jpeg(small("rocket"), 70))
    found = json.loads(run(data, "query", "--json", str(q)).output)
    assert found["results"][0]["url"] == str((root / "rocket.HEIC").resolve())
    assert found["results"][0]["duplicate"] is True
