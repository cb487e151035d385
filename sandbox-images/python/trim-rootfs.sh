#!/usr/bin/env bash
# Trims a debootstrapped root filesystem for krill/python and prepares the
# directories the sandbox expects. Run by scripts/images as root:
#   trim-rootfs.sh ROOTFS_DIR
set -euo pipefail

root=${1:?usage: trim-rootfs.sh ROOTFS_DIR}
[[ -x "$root/usr/bin/python3" ]] || { echo "trim-rootfs: no python3 in $root" >&2; exit 1; }

# Package caches and indexes: nothing in a task can (or should) run apt.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/var/lib/dpkg/*-old "$root"/var/log/* "$root"/var/cache/ldconfig/aux-cache

# Documentation, man pages, translations. Keep the copyright files.
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian \
  "$root"/usr/share/locale/* "$root"/usr/share/bug

# Stop dpkg from putting the above back if someone extends the image.
mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
cat >"$root/etc/dpkg/dpkg.cfg.d/01-krill-nodoc" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG

# Host details debootstrap copied in; Docker provides its own at run time.
rm -f "$root/etc/resolv.conf" "$root/etc/hostname" "$root/etc/machine-id"
: >"$root/etc/hosts"

# Device nodes: Docker mounts its own /dev. Empty mount points.
rm -rf "${root:?}"/dev/* "${root:?}"/proc/* "${root:?}"/sys/*

# The work dir the sandbox uses (the worker mounts a tmpfs over it) and /tmp.
mkdir -p "$root/work" "$root/tmp"
chown 65534:65534 "$root/work"
chmod 0755 "$root/work"
chmod 1777 "$root/tmp"
