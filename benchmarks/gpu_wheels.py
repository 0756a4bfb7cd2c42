"""Download the wheels a GPU machine without network lacks, for benchmarks/gpu_check.sh to install (``make gpu-wheels``).

    python benchmarks/gpu_wheels.py [--dest benchmarks/wheels] [--python-version 3.12] [--bnb-cuda 130 132]

The GPU machine's own Python has torch, transformers 5.17, peft and accelerate, but no trl, datasets, evaluate or
bitsandbytes. This fetches, at the versions installed here (the ones align is tested with), trl, datasets, evaluate
and their missing pure-Python needs (dill, multiprocess), transformers and peft at align's pins, and bitsandbytes with
only the CUDA builds named by --bnb-cuda (torch's CUDA there: 13.0; the full wheel is 43 MB, this one ~4 MB).
Everything must fit in what travels with the working tree (64 MiB together); the sizes are printed.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import zipfile
from base64 import urlsafe_b64encode
from importlib.metadata import version
from pathlib import Path

CARRIED = ("transformers", "trl", "peft", "datasets", "evaluate", "dill", "multiprocess", "bitsandbytes")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "any")
LIMIT_MIB = 56  # of the 64 MiB that travel, leave room for the working tree (about 1.5 MiB)


def slim_bitsandbytes(wheel: Path, keep_cuda: list[str]) -> Path:
    """The wheel without the native libraries of other CUDA versions, ROCm and XPU (RECORD rewritten to match)."""
    keep = re.compile(r"libbitsandbytes_(cpu|" + "|".join(f"cuda{v}" for v in keep_cuda) + r")\.so$")
    native = re.compile(r"libbitsandbytes_\w+\.so$")
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        names = [n for n in src.namelist() if not native.search(n) or keep.search(n)]
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        lines = []
        for name in names:
            if name == record:
                continue
            data = src.read(name)
            dst.writestr(src.getinfo(name), data)
            digest = urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{name},sha256={digest},{len(data)}")
        dst.writestr(record, "\n".join([*lines, f"{record},,"]) + "\n")
    slim.replace(wheel)
    return wheel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default="benchmarks/wheels")
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--bnb-cuda", nargs="+", default=["130", "132"], help="CUDA builds of bitsandbytes to keep")
    args = parser.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    pins = [f"{name}=={version(name)}" for name in CARRIED]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               args.python_version, "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(dest),
               *pins]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    for wheel in dest.glob("bitsandbytes-*.whl"):
        slim_bitsandbytes(wheel, args.bnb_cuda)
    total = 0
    for wheel in sorted(dest.glob("*.whl")):
        total += wheel.stat().st_size
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{total / 2**20:7.2f} MiB  in all ({dest}; carry it: run(..., carry=['{dest}']))")
    if total > LIMIT_MIB * 2**20:
        print(f"more than {LIMIT_MIB} MiB: it will not travel with the working tree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
