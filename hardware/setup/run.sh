#!/usr/bin/env bash
# One entry point for people and CI:
#   bash hardware/setup/run.sh demo   install everything, then run the demo
#   bash hardware/setup/run.sh test   install everything, then run the whole test suite
#   bash hardware/setup/run.sh lint   ruff and mypy
set -euo pipefail
cd "$(dirname "$0")/../.."
bash hardware/setup/install.sh
export PATH="$(pwd)/.venv/bin:$PATH"
case "${1:-}" in
  demo)
    shift
    exec shadowmesh demo "$@"
    ;;
  test)
    shift
    ruff check .
    ruff format --check .
    mypy
    # pytest exits 5 when nothing was collected: that is a failure here too.
    exec python -m pytest -p no:cacheprovider "$@"
    ;;
  lint)
    ruff check .
    ruff format --check .
    exec mypy
    ;;
  *)
    echo "usage: $0 demo|test|lint [args]" >&2
    exit 2
    ;;
esac
