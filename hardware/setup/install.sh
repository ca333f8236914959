#!/usr/bin/env bash
# Installs everything ShadowMesh needs on a Debian (bookworm) machine, as root:
# system packages (swtpm, iproute2, iperf3, openvpn, nftables, Node.js), a Python
# virtual environment in .venv with the project and its dev tools, and the npm
# packages for the contracts (solc-js, Anvil, Hardhat with Node.js 22).
# Idempotent: a second run only checks.
# With --bench, also what bench/traffic (the traffic-analysis corpus and classifiers) needs:
# Debian's chromium, tcpdump and curl, and the project's "bench" extra (scikit-learn). CI's
# test install does not pass it; no test needs them.
set -euo pipefail
BENCH=0
[ "${1:-}" = "--bench" ] && BENCH=1
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

APT_PACKAGES=(
  swtpm swtpm-tools libtss2-dev tpm2-tools pkg-config gcc python3-dev python3-venv
  iproute2 iputils-ping iperf3 openvpn nftables iptables ethtool procps psmisc
  nodejs npm ca-certificates
  # the reference web server the front-door tests compare the exit with (1.22 on bookworm)
  nginx-light
  # a real DHCP server and client for the DHCP guard's tests
  dnsmasq-base busybox
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The machine may already have a newer Node.js outside Debian's packages.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
# Same for Python: a python3 with venv and headers already present is enough.
if python3 -c 'import venv, sysconfig, os; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null; then
  missing=("${missing[@]/python3-dev}"); missing=("${missing[@]/python3-venv}")
fi
read -r -a missing <<<"${missing[*]}"
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python environment.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.shadowmesh-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: pip install -e .[dev]"
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
  touch "$stamp"
fi

# Slither (static analysis of the registry contract, run by tests/integration/contracts/
# test_slither.py) in a virtual environment of its own: slither-analyzer pins web3 < 8,
# which the project's own environment must not be downgraded to. It analyses the solc-js
# build (contracts/compile.js --build-info), so no native solc is ever downloaded.
SLITHER_VERSION=0.11.6
if [ ! -x .venv-slither/bin/slither ] \
   || ! .venv-slither/bin/pip show slither-analyzer 2>/dev/null | grep -qx "Version: $SLITHER_VERSION"; then
  echo "setup: slither-analyzer $SLITHER_VERSION (.venv-slither)"
  python3 -m venv .venv-slither
  .venv-slither/bin/pip install -q --disable-pip-version-check "slither-analyzer==$SLITHER_VERSION"
fi

# npm packages for the contracts and local chains (versions pinned in package.json).
if [ -f contracts/package.json ]; then
  nstamp=contracts/node_modules/.shadowmesh-installed
  if [ ! -f "$nstamp" ] || [ contracts/package.json -nt "$nstamp" ] \
     || [ contracts/package-lock.json -nt "$nstamp" ]; then
    # npm ci installs exactly what the committed lock file says and never rewrites it.
    echo "setup: npm ci (contracts)"
    (cd contracts && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    touch "$nstamp"
  fi
fi
if [ "$BENCH" = 1 ]; then
  bench_missing=()
  for p in chromium tcpdump curl valgrind; do  # valgrind: the callgrind counts (bench/frame_path.py, circuit_cost.py, gro_merge.py)
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || bench_missing+=("$p")
  done
  if [ "${#bench_missing[@]}" -gt 0 ]; then
    echo "setup: apt-get install ${bench_missing[*]} (bench)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${bench_missing[@]}" >/dev/null
  fi
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev,bench]"
fi
echo "setup: done ($ROOT)"
