"""Downloads official MovieLens archives from GroupLens, verified against their published MD5.

GroupLens publishes ``<archive>.md5`` beside each archive. The archive is streamed to a ``.part``
file, its MD5 compared, the zip checked entry by entry, and only then unpacked (into a temporary
folder renamed into place), so an interrupted or corrupted download never leaves a folder that
looks like data.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

#: Where GroupLens serves the archives; RECRL_DATA_BASE_URL or --base-url replace it (mirrors, tests).
GROUPLENS_BASE_URL = "https://files.grouplens.org/datasets/movielens/"

#: The archives this command knows: name -> the folder the zip unpacks to.
DATASETS = {"ml-100k": "ml-100k", "ml-1m": "ml-1m", "ml-latest-small": "ml-latest-small"}

_MD5 = re.compile(r"\b([0-9a-fA-F]{32})\b")


class DownloadError(RuntimeError):
    """A download that cannot be completed; the message says what to do."""


def _fetch(url: str, timeout: float) -> urllib.request.addinfourl:
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http(s) only, below)
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise DownloadError(f"cannot fetch {url}: {err}") from None


def published_md5(url: str, timeout: float = 30.0) -> str:
    """The MD5 in ``<url>.md5`` (``MD5 (f) = <hex>`` or ``<hex>  f`` — both forms are used)."""
    with _fetch(url + ".md5", timeout) as response:
        text = response.read().decode("ascii", errors="replace")
    match = _MD5.search(text)
    if match is None:
        raise DownloadError(f"{url}.md5 holds no MD5 checksum: {text[:200]!r}")
    return match.group(1).lower()


def download(name: str, dest: Path | str = "data", base_url: str | None = None,
             timeout: float = 60.0) -> Path:
    """Fetches, verifies and unpacks dataset ``name`` under ``dest``; returns its folder."""
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    base_url = base_url or os.environ.get("RECRL_DATA_BASE_URL") or GROUPLENS_BASE_URL
    if not base_url.startswith(("http://", "https://")):
        raise DownloadError(f"base URL must be http(s), got {base_url!r}")
    dest = Path(dest)
    target = dest / DATASETS[name]
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    url = base_url.rstrip("/") + f"/{name}.zip"
    expected = published_md5(url)
    part = dest / f"{name}.zip.part"
    digest = hashlib.md5()
    try:
        with _fetch(url, timeout) as response, open(part, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected:
            raise DownloadError(
                f"{url}: checksum mismatch (MD5 {digest.hexdigest()}, GroupLens publishes "
                f"{expected}); the download is corrupt or incomplete — run the command again"
            )
        _unpack(part, dest, DATASETS[name], url)
    finally:
        part.unlink(missing_ok=True)
    return target


def _unpack(archive: Path, dest: Path, folder: str, url: str) -> None:
    staging = dest / f".{folder}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"{url}: the archive is damaged (entry {bad} fails its CRC)")
            for member in zf.namelist():  # no absolute paths or "..": nothing outside dest
                if member.startswith("/") or ".." in Path(member).parts:
                    raise DownloadError(f"{url}: unsafe path in archive: {member!r}")
            zf.extractall(staging)
    except zipfile.BadZipFile as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{url}: not a valid zip archive (truncated?): {err}") from None
    except DownloadError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    unpacked = staging / folder
    if not unpacked.is_dir():
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{url}: the archive has no {folder}/ folder")
    os.replace(unpacked, dest / folder)
    shutil.rmtree(staging, ignore_errors=True)
