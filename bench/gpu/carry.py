"""Send a large file to a GPU machine in two folders, each copied there by a separate command, compressed and
sha1-checked; join it there once both have arrived.

    python bench/gpu/carry.py pack FILE DIR1 DIR2 [--beside PATH]   # FILE -> DIR1/NAME.xz.0, DIR2/NAME.xz.1
    python bench/gpu/carry.py unpack FOLDER NAME [--sha1 HEX]       # FOLDER/NAME.xz.* -> FOLDER/NAME

``pack`` compresses FILE with LZMA (preset 9) and splits the result in two, with a manifest beside each part
(NAME.xz.json: the parts' sizes and the sha1 of FILE). ``--beside PATH``: DIR1 also holds PATH (a data set
that travels with the first part), and the split evens out the two folders' sizes. Where a machine takes at
most 64 MiB per command, the Inception weights (87 MB, 79.6 MB compressed) then travel with CIFAR-10 (46.5 MB)
in two commands instead of three, each folder about 60 MiB.

``unpack`` joins the parts found in FOLDER once every part the manifest names is there with its size, and
writes FOLDER/NAME only if the result's sha1 is the manifest's (and HEX, where given); exit status 0 with a
message while parts are missing, 1 if the joined file is wrong.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import sys
from pathlib import Path


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def pack(file: Path, dir1: Path, dir2: Path, beside: Path | None = None) -> list[int]:
    """Write the two parts and their manifests; return the parts' sizes in bytes."""
    raw = file.read_bytes()
    xz = lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    extra = beside.stat().st_size if beside is not None else 0
    # the first part: half of what both folders hold, less what already travels in the first
    first = max((len(xz) - extra) // 2, 0)
    sizes = [first, len(xz) - first]
    manifest = {"name": file.name, "sha1": sha1(raw), "bytes": len(raw), "parts": sizes}
    for i, (d, chunk) in enumerate(zip((dir1, dir2), (xz[:first], xz[first:]))):
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{file.name}.xz.{i}").write_bytes(chunk)
        (d / f"{file.name}.xz.json").write_text(json.dumps(manifest))
    return sizes


def unpack(folder: Path, name: str, expect_sha1: str | None = None) -> bool:
    """Join FOLDER/NAME.xz.* into FOLDER/NAME if all parts are there; True once FOLDER/NAME is written. Raises
    ValueError when the parts are complete but their join is not the packed file."""
    m = json.loads((folder / f"{name}.xz.json").read_text())
    parts = [folder / f"{name}.xz.{i}" for i in range(len(m["parts"]))]
    missing = [p.name for p, n in zip(parts, m["parts"]) if not p.exists() or p.stat().st_size != n]
    if missing:
        print(f"{name}: waiting for {', '.join(missing)} (the other folder of `carry.py pack`)")
        return False
    try:
        raw = lzma.decompress(b"".join(p.read_bytes() for p in parts))
    except lzma.LZMAError as e:
        raise ValueError(f"{name}: the joined parts do not decompress ({e}): pack the file again") from None
    got = sha1(raw)
    for want in filter(None, (m["sha1"], expect_sha1)):
        if got != want:
            raise ValueError(f"{name}: the joined parts have sha1 {got}, not {want}: pack the file again")
    tmp = folder / f"{name}.tmp"
    tmp.write_bytes(raw)
    os.replace(tmp, folder / name)
    print(f"{name}: joined from {len(parts)} parts, sha1 {got}")
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("file", type=Path)
    a.add_argument("dir1", type=Path)
    a.add_argument("dir2", type=Path)
    a.add_argument("--beside", type=Path, default=None)
    b = sub.add_parser("unpack")
    b.add_argument("folder", type=Path)
    b.add_argument("name")
    b.add_argument("--sha1", default=None)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        sizes = pack(args.file, args.dir1, args.dir2, args.beside)
        print(f"{args.file.name}: parts of {sizes[0]} and {sizes[1]} bytes")
        return 0
    try:
        unpack(args.folder, args.name, args.sha1)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
