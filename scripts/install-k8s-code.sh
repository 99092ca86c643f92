#!/usr/bin/env bash
# Builds Kubernetes' own CRD validation into .tools/k8s/bin/crd-check (source:
# tests/k8s/crd-check/main.go) and its RBAC rule comparison into .tools/k8s/bin/rbac-check
# (tests/k8s/rbac-check/main.go), from Debian sid's Go packages of the Kubernetes libraries,
# unpacked with `dpkg -x` into a private prefix. A private APT configuration (its own
# sources list, lists, cache and an empty dpkg status) resolves them: nothing is installed
# system-wide and no root is needed.
#
# Idempotent: the resolved package list (name=version) is recorded in .tools/k8s/packages.txt;
# the prefix is unpacked again only when that list changes (sid moves without notice, so
# versions never mix), and a binary is rebuilt only when the list or its source changes.
# If sid cannot be reached or no longer resolves, an existing prefix is kept with a warning.
#
# K8S_APISERVER=1 also builds a standalone CRD API server (k8s.io/apiextensions-apiserver)
# into .tools/k8s/bin/apiextensions-apiserver and extracts etcd from sid's etcd-server into
# .tools/k8s/bin/etcd, for scripts/k8s-apiserver.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools/k8s"
aptdir="$tools/apt"
debs="$tools/debs"
root="$tools/root"
mirror="${K8S_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$tools/bin" "$aptdir/lists/partial" "$aptdir/cache/archives/partial" \
  "$aptdir/etc/sources.list.d" "$aptdir/etc/preferences.d" "$debs"

# One run at a time per clone (the prefix is replaced as a whole).
exec 9>"$tools/.lock"
flock 9

now() { date +%s.%N; }
t_start="$(now)"
t_phase="$t_start"
phase_done() { # phase_done NAME: prints how long the phase since the previous call took
  local t; t="$(now)"
  awk -v n="$1" -v a="$t_phase" -v b="$t" 'BEGIN{printf "k8s-code: %-28s %6.1f s\n", n, b-a}'
  t_phase="$t"
}

# --- private APT: sid only, empty dpkg status -------------------------------------------
sig="signed-by=$keyring"
[ -r "$keyring" ] || sig="trusted=yes"
echo "deb [$sig] $mirror sid main" > "$aptdir/etc/sources.list"
[ -f "$aptdir/status" ] || : > "$aptdir/status"
apt_opts=(
  -o "Dir::State::status=$aptdir/status"
  -o "Dir::State::Lists=$aptdir/lists"
  -o "Dir::Cache=$aptdir/cache"
  -o "Dir::Etc::SourceList=$aptdir/etc/sources.list"
  -o "Dir::Etc::SourceParts=$aptdir/etc/sources.list.d"
  -o "Dir::Etc::Preferences=$aptdir/etc/preferences"
  -o "Dir::Etc::PreferencesParts=$aptdir/etc/preferences.d"
  -o APT::Architecture=amd64
  -o "APT::Architectures::=amd64"
  -o Acquire::Check-Valid-Until=false
  -o Acquire::Languages=none
  -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"
  -o Debug::NoLocking=1
)
# As root, APT downloads as user _apt and chowns its directories; keep the files ours.
[ "$(id -u)" = 0 ] && apt_opts+=(-o APT::Sandbox::User=root)
apt_private() { apt-get -q "${apt_opts[@]}" "$@"; }

# resolve PACKAGE...: the closure's golang-*/etcd-* packages as name=version, sorted
resolve() {
  apt_private -s install --no-install-recommends "$@" \
    | awk '/^Inst /{v=$3; gsub(/[()]/, "", v); print $2 "=" v}' \
    | grep -E '^(golang-|etcd-server=)' | sort
}

want_etcd="${K8S_APISERVER:-0}"
resolved="$tools/packages.resolved"
# Resolving the closure against an empty status takes APT ~5-10 s; it is done again only
# when sid's index (its InRelease) changed since the last resolution.
resolve_all() {
  local index_hash
  apt_private update -qq >"$tools/apt-update.log" 2>&1 || return 1
  index_hash="$(cat "$aptdir"/lists/*_InRelease | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$tools/index.sha256" 2>/dev/null)" != "$index_hash" ] || [ ! -s "$tools/resolved-golang.txt" ]; then
    rm -f "$tools/index.sha256" "$tools/resolved-etcd.txt"
    resolve golang-k8s-apiextensions-apiserver-dev golang-go >"$tools/resolved-golang.txt" 2>"$tools/resolve.log" || return 1
    grep -q '^golang-k8s-apiextensions-apiserver-dev=' "$tools/resolved-golang.txt" || return 1
    echo "$index_hash" >"$tools/index.sha256"
  fi
  cp "$tools/resolved-golang.txt" "$resolved"
  if [ "$want_etcd" = 1 ]; then
    if [ ! -s "$tools/resolved-etcd.txt" ]; then
      resolve etcd-server 2>>"$tools/resolve.log" | grep '^etcd-server=' >"$tools/resolved-etcd.txt" || return 1
    fi
    cp "$tools/resolved-etcd.txt" "$tools/etcd.resolved"
  fi
}
if ! resolve_all; then
  rm -f "$tools/index.sha256"
  if [ -s "$tools/packages.txt" ] && [ -d "$root" ] && { [ "$want_etcd" != 1 ] || [ -s "$tools/etcd.txt" ]; }; then
    echo "k8s-code: WARNING: could not resolve from Debian sid (see $tools/apt-update.log, $tools/resolve.log); keeping the recorded packages" >&2
    cp "$tools/packages.txt" "$resolved"
    if [ "$want_etcd" = 1 ]; then cp "$tools/etcd.txt" "$tools/etcd.resolved"; fi
  else
    echo "k8s-code: cannot resolve the Kubernetes packages from Debian sid:" >&2
    cat "$tools/apt-update.log" "$tools/resolve.log" >&2 2>/dev/null || true
    exit 1
  fi
fi
phase_done "apt update + resolve"

# --- download and unpack, only when the resolved list changed ------------------------
# download LISTFILE: fetches each name=version .deb into $debs unless already there
download() {
  local missing=() line name ver
  while IFS= read -r line; do
    name="${line%%=*}"; ver="${line#*=}"
    compgen -G "$debs/${name}_${ver//:/%3a}_*.deb" >/dev/null || missing+=("$line")
  done <"$1"
  if [ ${#missing[@]} -gt 0 ]; then
    echo "k8s-code: downloading ${#missing[@]} packages from Debian sid"
    (cd "$debs" && apt_private download "${missing[@]}" >"$tools/download.log" 2>&1) || {
      cat "$tools/download.log" >&2; exit 1; }
  fi
}
# debs_of LISTFILE: the .deb paths of the listed packages
debs_of() {
  local line name ver
  while IFS= read -r line; do
    name="${line%%=*}"; ver="${line#*=}"
    compgen -G "$debs/${name}_${ver//:/%3a}_*.deb"
  done <"$1"
}

if [ ! -d "$root" ] || ! cmp -s "$resolved" "$tools/packages.txt"; then
  if [ -s "$tools/packages.txt" ]; then
    echo "k8s-code: package list changed:"
    diff "$tools/packages.txt" "$resolved" | grep '^[<>]' || true
  fi
  download "$resolved"
  phase_done "download"
  rm -rf "$root.new"
  mkdir -p "$root.new"
  debs_of "$resolved" | xargs -P "$(nproc)" -n 16 sh -c 'for d; do dpkg -x "$d" "$0"; done' "$root.new"
  # Absolute symlinks point into the system; point them into the prefix instead.
  find "$root.new" -type l -lname '/*' -print0 | while IFS= read -r -d '' link; do
    ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$root.new$(readlink "$link")")" "$link"
  done
  rm -rf "$root"
  mv "$root.new" "$root"
  cp "$resolved" "$tools/packages.txt"
  # Keep only the .debs of the current list.
  debs_of "$tools/packages.txt" | sort >"$tools/.keep"
  if [ -s "$tools/etcd.txt" ]; then debs_of "$tools/etcd.txt" >>"$tools/.keep" || true; fi
  find "$debs" -name '*.deb' | sort | comm -23 - <(sort "$tools/.keep") | xargs -r rm -f
  rm -f "$tools/.keep"
  phase_done "unpack"
fi
rm -f "$resolved"

# --- build ------------------------------------------------------------------------------
goroot="$(cd "$root/usr/lib/go" && pwd -P)"
go_env=(
  env GO111MODULE=off GOPATH="$root/usr/share/gocode" GOROOT="$goroot" GOPROXY=off
  GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS= GOENV=off GOTELEMETRY=off GOCACHE="$tools/gocache"
)
version_of() { sed -n "s/^$1=//p" "$tools/packages.txt"; }
# The versions the binaries are built against, compiled in (GOPATH mode has no module info).
ldflags="-s -w"
ldflags+=" -X main.apiextensionsVersion=$(version_of golang-k8s-apiextensions-apiserver-dev)"
ldflags+=" -X main.apiserverVersion=$(version_of golang-k8s-apiserver-dev)"
ldflags+=" -X main.celGoVersion=$(version_of golang-cel-cel-go-dev)"

# build NAME STAMP_INPUT GO_PACKAGE: builds bin/NAME unless its stamp is unchanged
build() {
  local name="$1" stamp_input="$2" pkg="$3" stamp want
  stamp="$tools/bin/.$name.stamp"
  want="$(printf '%s\n%s\n' "$stamp_input" "$ldflags" | cat - "$tools/packages.txt" | sha256sum | cut -d' ' -f1)"
  if [ -x "$tools/bin/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "k8s-code: building $name (the first build takes minutes; the Go cache is kept in $tools/gocache)"
  (cd "$repo" && "${go_env[@]}" "$goroot/bin/go" build -trimpath -ldflags "$ldflags" \
    -o "$tools/bin/$name.new" "$pkg")
  mv "$tools/bin/$name.new" "$tools/bin/$name"
  echo "$want" >"$stamp"
  phase_done "build $name"
}

build crd-check "$(cat "$repo"/tests/k8s/crd-check/*.go)" ./tests/k8s/crd-check
build rbac-check "$(cat "$repo"/tests/k8s/rbac-check/*.go)" ./tests/k8s/rbac-check

if [ "$want_etcd" = 1 ]; then
  build apiextensions-apiserver "" k8s.io/apiextensions-apiserver
  if [ ! -x "$tools/bin/etcd" ] || ! cmp -s "$tools/etcd.resolved" "$tools/etcd.txt"; then
    download "$tools/etcd.resolved"
    rm -rf "$tools/etcd.x"
    dpkg -x "$(debs_of "$tools/etcd.resolved")" "$tools/etcd.x"
    mv "$tools/etcd.x/usr/bin/etcd" "$tools/bin/etcd"
    rm -rf "$tools/etcd.x"
    cp "$tools/etcd.resolved" "$tools/etcd.txt"
    phase_done "etcd"
  fi
  rm -f "$tools/etcd.resolved"
fi

# On a machine short of disk (a CI runner), what only the build needs goes once the
# binaries are built: the Go cache and the downloaded packages (fetched again only when the
# package list changes), and below 10 GiB the unpacked sources too (unpacked again on the
# next run).
free_gib="$(df -P -BG "$tools" | awk 'NR==2 {gsub(/G/, "", $4); print $4}')"
if [ "${free_gib:-0}" -lt 20 ]; then
  echo "k8s-code: ${free_gib} GiB free: removing the Go cache and the downloaded packages"
  rm -rf "$tools/gocache" "$debs"
  if [ "${free_gib:-0}" -lt 10 ]; then
    echo "k8s-code: removing the unpacked sources as well"
    rm -rf "$root"
  fi
fi

t_phase="$t_start"; phase_done total
