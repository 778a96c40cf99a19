#!/bin/sh
# Lays out the root filesystem of a devicelink image: the given binaries in /usr/local/bin,
# exactly the shared libraries they link (and the dynamic loader), passwd and group entries for
# root and the non-root user 65532, and a sticky /tmp. No shell, no package manager, nothing
# else: what the program does not open cannot be used against it.
#
# One recipe for both ways of building: `cargo xtask image` (buildah, no daemon) and the
# Dockerfiles beside this file run it, so both images hold the same files.
#
#   deploy/image/rootfs.sh DEST BINARY...
set -eu
dest=$1
shift
mkdir -p "$dest/usr/local/bin" "$dest/etc" "$dest/tmp"
for bin in "$@"; do
    install -m 0755 "$bin" "$dest/usr/local/bin/"
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)";
    # linux-vdso has no file.
    ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
        while read -r lib; do
            mkdir -p "$dest$(dirname "$lib")"
            cp -L "$lib" "$dest$lib"
        done
done
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$dest/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$dest/etc/group"
chmod 1777 "$dest/tmp"
