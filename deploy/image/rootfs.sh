#!/bin/sh
# Usage: rootfs.sh ROOT BINARY...
# Assembles a devicelink image's root filesystem in ROOT, as `cargo xtask image` does
# (devicelink_testbed::image): each BINARY without its debug info in /usr/local/bin, exactly the
# shared libraries `ldd` names for it and the dynamic loader, under the paths ldd gives, and
# /etc/passwd and /etc/group naming root and the unprivileged user 65532 (nonroot), neither
# with a shell. Nothing else: no shell, no package manager. The Dockerfiles run it in their
# build stage and copy ROOT into a `FROM scratch` image.
set -eu
root="$1"
shift
mkdir -p "$root/usr/local/bin" "$root/etc"
for binary in "$@"; do
  target="$root/usr/local/bin/$(basename "$binary")"
  strip --strip-debug -o "$target" "$binary"
  chmod 0755 "$target"
  if ldd "$binary" | grep -q 'not found'; then
    echo "rootfs.sh: a library of $binary is not found:" >&2
    ldd "$binary" >&2
    exit 1
  fi
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
  for library in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$root$(dirname "$library")"
    cp -L "$library" "$root$library"
    chmod 0755 "$root$library"
  done
done
printf '%s\n' \
  'root:x:0:0:root:/root:/sbin/nologin' \
  'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' >"$root/etc/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
