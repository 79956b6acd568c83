"""``python -m recrl.data download ml-100k|ml-1m|coat [--dest data]``: fetch an official dataset."""

from __future__ import annotations

import argparse
import sys

from recrl.data.download import DATASETS, DownloadError, download


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recrl.data")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("download", help="download, verify (MD5) and unpack a dataset")
    fetch.add_argument("name", choices=sorted(DATASETS))
    fetch.add_argument("--dest", default="data", help="folder to unpack into (default: data/)")
    fetch.add_argument("--base-url", default=None,
                       help="a mirror of files.grouplens.org/datasets/movielens/ (coat: "
                            "a folder serving coat.zip and coat_pseudoGT_ratingM.ascii)")
    args = parser.parse_args(argv)
    try:
        folder = download(args.name, args.dest, args.base_url)
    except DownloadError as err:
        print(f"recrl.data: {err}", file=sys.stderr)
        return 1
    print(f"{args.name}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
