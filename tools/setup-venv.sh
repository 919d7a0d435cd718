#!/usr/bin/env bash
# Create a venv in the project folder (if needed) and install the package with extras into it,
# beside StepUp Core 4 (.venv) or StepUp Core 3 (.venv3).
#   tools/setup-venv.sh [4|3] [EXTRAS]
#   tools/setup-venv.sh 4 dev    ->  .venv  with pip install -e '.[dev]'  and stepup 4.x
#   tools/setup-venv.sh 3 test   ->  .venv3 with pip install -e '.[test]' and stepup 3.x
set -euo pipefail
cd "$(dirname "$0")/.."
host=${1:-4}
extras=${2:-test}
case $host in
    4) venv=.venv pin="stepup>=4,<5" ;;
    3) venv=.venv3 pin="stepup>=3.1.4,<4" ;;
    *) echo "usage: tools/setup-venv.sh [4|3] [EXTRAS]" >&2; exit 2 ;;
esac
if ! python3 -c "import venv, ensurepip" 2> /dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip > /dev/null
fi
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]" "$pin"
