#!/usr/bin/env bash
# Unpacks the PostgreSQL majors Debian still ships besides the system's own (13 from
# bullseye, 17 from trixie, 18 from sid) into .tools/postgresql/<major>/, for the test that
# regenerates the setting tables of src/validate/settings/ from each server's pg_settings.
# 14 and 16 are in no Debian release, so they are not installed (see README, "Setting checks").
#
# Each major comes with its own suite's glibc and libraries, unpacked with `dpkg -x` through
# a private APT configuration (nothing is installed system-wide); the binaries are patched
# (patchelf) to use that loader and those libraries, because trixie's and sid's builds need a
# newer glibc than Debian 12's. The binaries then live at
# .tools/postgresql/<major>/root/usr/lib/postgresql/<major>/bin and find their share
# directory relative to themselves.
#
# Idempotent: a major is unpacked again only when its resolved package list changes, and the
# suites are asked at most every 6 hours. If a suite cannot be reached, an existing prefix is
# kept with a warning.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools/postgresql"
mirror="${POSTGRES_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$tools"
exec 9>"$tools/.lock"
flock 9

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v patchelf >/dev/null 2>&1; then
  install_patchelf() { sudo_if_needed apt-get install -y -qq --no-install-recommends patchelf >/dev/null; }
  install_patchelf || { sudo_if_needed apt-get update -qq && install_patchelf; }
fi

sig="signed-by=$keyring"
[ -r "$keyring" ] || sig="trusted=yes"

# install MAJOR SUITE
install_major() {
  local major="$1" suite="$2"
  local dir="$tools/$major" apt="$tools/apt-$suite"
  # Checked against the suite within the last 6 hours: nothing to do.
  if [ -x "$dir/bin/postgres" ] && [ -n "$(find "$dir/packages.txt" -mmin -360 2>/dev/null)" ]; then
    return 0
  fi
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/etc/sources.list.d" \
    "$apt/etc/preferences.d" "$dir/debs"
  echo "deb [$sig] $mirror $suite main" > "$apt/etc/sources.list"
  [ -f "$apt/status" ] || : > "$apt/status"
  local opts=(
    -o "Dir::State::status=$apt/status" -o "Dir::State::Lists=$apt/lists"
    -o "Dir::Cache=$apt/cache" -o "Dir::Etc::SourceList=$apt/etc/sources.list"
    -o "Dir::Etc::SourceParts=$apt/etc/sources.list.d"
    -o "Dir::Etc::Preferences=$apt/etc/preferences"
    -o "Dir::Etc::PreferencesParts=$apt/etc/preferences.d"
    -o APT::Architecture=amd64 -o "APT::Architectures::=amd64"
    -o Acquire::Check-Valid-Until=false -o Acquire::Languages=none
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"
    -o Debug::NoLocking=1
  )
  [ "$(id -u)" = 0 ] && opts+=(-o APT::Sandbox::User=root)
  if ! apt-get -q "${opts[@]}" update >"$apt/update.log" 2>&1; then
    if [ -x "$dir/bin/postgres" ]; then
      echo "postgresql-$major: $suite unreachable, keeping $dir" >&2
      return 0
    fi
    echo "postgresql-$major: apt update of $suite failed, see $apt/update.log" >&2
    return 1
  fi
  # The server, its libraries and the C library they were built against; the JIT (LLVM)
  # is loaded only when a query is costly enough, which the tests never make.
  local wanted
  wanted="$(apt-get -q "${opts[@]}" -s install --no-install-recommends "postgresql-$major" \
    | awk '/^Inst /{v=$3; gsub(/[()]/, "", v); print $2 "=" v}' \
    | grep -E "^(postgresql-(client-)?$major=|lib|zlib1g=)" | grep -vE '^libllvm|^libperl|^libpython' | sort)"
  if [ -x "$dir/bin/postgres" ] && [ "$(cat "$dir/packages.txt" 2>/dev/null)" = "$wanted" ]; then
    touch "$dir/packages.txt"
    return 0
  fi
  echo "postgresql-$major: unpacking from $suite into $dir"
  rm -rf "$dir/root" "$dir/bin" "$dir/debs"
  mkdir -p "$dir/debs" "$dir/root"
  # shellcheck disable=SC2086
  (cd "$dir/debs" && apt-get -q "${opts[@]}" download $wanted >/dev/null) || return 1
  for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$dir/root"; done
  local libs="$dir/root/lib/x86_64-linux-gnu:$dir/root/usr/lib/x86_64-linux-gnu"
  # lib64/ holds an absolute symlink (it would resolve to the system's loader).
  local loader="$dir/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
  [ -e "$loader" ] || loader="$dir/root/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
  local pgbin="$dir/root/usr/lib/postgresql/$major/bin"
  # DT_RPATH (not RUNPATH) so the libraries' own dependencies and dlopen'ed modules
  # resolve in the prefix too.
  for exe in "$pgbin"/*; do
    if file -L "$exe" 2>/dev/null | grep -q ELF || head -c4 "$exe" | grep -q ELF; then
      patchelf --set-interpreter "$loader" --force-rpath --set-rpath "$libs" "$exe"
    fi
  done
  # The tests run the server as `postgres` when root.
  chmod -R a+rX "$dir"
  ln -sfn "$pgbin" "$dir/bin"
  "$dir/bin/postgres" --version >/dev/null || return 1
  echo "$wanted" > "$dir/packages.txt"
  rm -rf "$dir/debs"
}

# A major that cannot be installed fails only the test that needs it (which says so), not
# every test.
for pair in 13:bullseye 17:trixie 18:sid; do
  major="${pair%%:*}"
  if install_major "$major" "${pair#*:}" && [ -x "$tools/$major/bin/postgres" ]; then
    echo "postgresql-$major: $("$tools/$major/bin/postgres" --version)"
  else
    echo "postgresql-$major: NOT installed (tests/setting_tables.rs will fail)" >&2
  fi
done
