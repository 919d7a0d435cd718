#!/usr/bin/env bash
# Create .venv in the project folder (if needed) and install the package with the given extras.
#   tools/setup-venv.sh test      ->  pip install -e '.[test]'
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-test}
if ! python3 -c "import venv, ensurepip" 2> /dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip > /dev/null
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
