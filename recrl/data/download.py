"""Downloads official datasets, verified by MD5: MovieLens from GroupLens, Coat from its authors.

GroupLens publishes ``<archive>.md5`` beside each archive. Coat's page publishes none: its files
are checked against the MD5s pinned here, and RL4Rec's pseudo-ground-truth rating matrix (the
reward of EasyRL4Rec's Coat environment) is fetched from a pinned commit and checked the same way. The archive is streamed to a ``.part``
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

#: The MovieLens archives this command knows: name -> the folder the zip unpacks to.
MOVIELENS = {"ml-100k": "ml-100k", "ml-1m": "ml-1m", "ml-latest-small": "ml-latest-small"}
#: Every dataset this command knows: name -> the folder it lands in.
DATASETS = {**MOVIELENS, "coat": "coat"}

#: Coat (Schnabel et al., ICML 2016) on its authors' page; RECRL_DATA_BASE_URL or --base-url
#: replace the host of both Coat files (mirrors, tests).
COAT_URL = "https://www.cs.cornell.edu/~schnabts/mnar/coat.zip"
#: RL4Rec's pseudo-ground-truth Coat ratings (Huang et al., RecSys 2020), which EasyRL4Rec's Coat
#: environment uses as its reward, at a pinned commit.
PSEUDO_GT_URL = ("https://raw.githubusercontent.com/BetsyHJ/RL4Rec/"
                 "f198f7dbcaba7b607f813b3a87d46613654edc6e/data/coat_pseudoGT_ratingM.ascii")
#: MD5 of the Coat files recrl reads (the archive itself has no published checksum).
COAT_MD5 = {
    "train.ascii": "14ff27d77f8130c722eac651f8856aa9",
    "test.ascii": "d890463d9b5b5fb22be2d4d5ceb22ffa",
    "propensities.ascii": "0c365440bd22e47ac108caf148fa5da0",
    "coat_pseudoGT_ratingM.ascii": "dea35971e6998da548bac2a47fc5c396",
}

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
    if name == "coat":
        return download_coat(dest, base_url, timeout)
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
    try:
        received = _save(url, part, timeout)
        if received != expected:
            raise DownloadError(
                f"{url}: checksum mismatch (MD5 {received}, GroupLens publishes "
                f"{expected}); the download is corrupt or incomplete — run the command again"
            )
        _unpack(part, dest, DATASETS[name], url)
    finally:
        part.unlink(missing_ok=True)
    return target


def _save(url: str, path: Path, timeout: float) -> str:
    """Streams ``url`` into ``path``; returns the MD5 of what was written."""
    digest = hashlib.md5()
    with _fetch(url, timeout) as response, open(path, "wb") as out:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def download_coat(dest: Path | str = "data", base_url: str | None = None,
                  timeout: float = 60.0) -> Path:
    """Coat's archive and RL4Rec's pseudo-ground-truth matrix into ``dest/coat``, each file
    checked against `COAT_MD5` before the folder is renamed into place."""
    base_url = base_url or os.environ.get("RECRL_DATA_BASE_URL")
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise DownloadError(f"base URL must be http(s), got {base_url!r}")
    coat_url = COAT_URL if base_url is None else base_url.rstrip("/") + "/coat.zip"
    truth_url = (PSEUDO_GT_URL if base_url is None
                 else base_url.rstrip("/") + "/coat_pseudoGT_ratingM.ascii")
    dest = Path(dest)
    target = dest / "coat"
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    part = dest / "coat.zip.part"
    staging = dest / ".coat.unpacking"
    try:
        _save(coat_url, part, timeout)
        _unpack(part, dest, "coat", coat_url, keep_staging=True)
        folder = staging / "coat"
        truth = folder / "coat_pseudoGT_ratingM.ascii"
        if _save(truth_url, truth, timeout) != COAT_MD5[truth.name]:
            raise DownloadError(f"{truth_url}: checksum mismatch (MD5 {_md5(truth)}, expected "
                                f"{COAT_MD5[truth.name]}); run the command again")
        for name, expected in COAT_MD5.items():
            path = folder / name
            if not path.is_file():
                raise DownloadError(f"{coat_url}: the archive has no coat/{name}")
            if _md5(path) != expected:
                raise DownloadError(f"{coat_url}: coat/{name} has MD5 {_md5(path)}, expected "
                                    f"{expected}; the download is corrupt or the page changed")
        os.replace(folder, target)
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _unpack(archive: Path, dest: Path, folder: str, url: str, keep_staging: bool = False
            ) -> None:
    """Unpacks ``archive`` (whose files lie under ``folder/``) into ``dest/folder``, or, with
    ``keep_staging``, leaves it in ``dest/.folder.unpacking/folder`` for the caller to check."""
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
    if keep_staging:
        return
    os.replace(unpacked, dest / folder)
    shutil.rmtree(staging, ignore_errors=True)
