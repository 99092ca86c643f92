#!/usr/bin/env bash
# Installs everything the test suite needs, idempotently: PostgreSQL server binaries (and
# pgaudit), restic and iproute2 from Debian, a Python virtualenv with the validation tools, and
# Kubernetes' own code (scripts/install-k8s-code.sh): the CRD validation, and a standalone
# CRD API server with etcd for the real-admission tests (tests/real_admission.rs).
# A second run only checks and returns quickly.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages -------------------------------------------------------------------
# PostgreSQL's Debian packaging creates and starts a "main" cluster on install unless told
# not to; tests start their own servers on their own ports.
if [ ! -f /etc/postgresql-common/createcluster.conf ] || ! grep -q '^create_main_cluster = false' /etc/postgresql-common/createcluster.conf; then
  sudo_if_needed mkdir -p /etc/postgresql-common
  echo 'create_main_cluster = false' | sudo_if_needed tee -a /etc/postgresql-common/createcluster.conf >/dev/null
fi
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql postgresql-contrib)
command -v restic >/dev/null 2>&1 || missing+=(restic)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v kill >/dev/null 2>&1 || missing+=(procps)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
# scripts/k8s-apiserver.sh makes its certificates with openssl and polls with curl.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# promtool checks and unit-tests the chart's alerts (tests/alerts.rs).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# pgaudit for the newest server (tests/audit.rs), once that server is there.
pg_major="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
if [ ! -f "/usr/lib/postgresql/$pg_major/lib/pgaudit.so" ]; then
  echo "installing Debian package: postgresql-$pg_major-pgaudit"
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq --no-install-recommends "postgresql-$pg_major-pgaudit" >/dev/null
fi

# --- Python tools ----------------------------------------------------------------------
venv="$repo/.tools/venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$repo/scripts/requirements-test.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing Python test tools into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$repo/scripts/requirements-test.txt"
  echo "$want" > "$stamp"
fi

# --- Kubernetes' own CRD validation and CRD API server (with etcd) ---------------------
K8S_APISERVER=1 bash "$repo/scripts/install-k8s-code.sh"

# --- Other PostgreSQL majors, for the setting tables (tests/setting_tables.rs) ---------
bash "$repo/scripts/install-postgres-majors.sh"

pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
echo "postgresql: $("$pg_bin/postgres" --version)"
echo "restic: $(restic version | head -n1)"
echo "kubernetes-validate: $("$venv/bin/pip" show kubernetes-validate | sed -n 's/^Version: //p')"
echo "helm-python-sdk: $("$venv/bin/pip" show helm-python-sdk | sed -n 's/^Version: //p')"
echo "moto: $("$venv/bin/pip" show moto | sed -n 's/^Version: //p')"
echo "crd-check: $("$repo/.tools/k8s/bin/crd-check" --version)"
echo "etcd: $("$repo/.tools/k8s/bin/etcd" --version | head -n1)"
