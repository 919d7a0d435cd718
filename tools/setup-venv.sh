#!/usr/bin/env bash
# Create a venv in the project folder (if needed) and install the package with extras into it,
# beside StepUp Core 4 (.venv) or StepUp Core 3 (.venv3). Or install an original release from
# PyPI, which tests/test_compat.py runs to prove that job folders move both ways.
#   tools/setup-venv.sh [4|3|orig3|orig4] [EXTRAS]
#   tools/setup-venv.sh 4 dev    ->  .venv  with pip install -e '.[dev,plot]'  and stepup 4.x
#   tools/setup-venv.sh 3 test   ->  .venv3 with pip install -e '.[test,plot]' and stepup 3.x
# Our own venvs always get the plot extra (matplotlib): the tests draw timelines.
#   tools/setup-venv.sh orig3    ->  .venv-orig3 with stepup-queue==1.0.2 and stepup 3.x
#   tools/setup-venv.sh orig4    ->  .venv-orig4 with stepup-queue==2.0.1 and stepup 4.x
set -euo pipefail
cd "$(dirname "$0")/.."
host=${1:-4}
extras=${2:-test}
# The originals get the same StepUp Core pins as ours, so that both sides of a test read the
# same .stepup/ database.
case $host in
    4) venv=.venv pin="stepup>=4,<5" package=(-e ".[$extras,plot]") ;;
    3) venv=.venv3 pin="stepup>=3.1.4,<4" package=(-e ".[$extras,plot]") ;;
    orig3) venv=.venv-orig3 pin="stepup>=3.1.4,<4" package=(stepup-queue==1.0.2) ;;
    orig4) venv=.venv-orig4 pin="stepup>=4,<5" package=(stepup-queue==2.0.1) ;;
    *) echo "usage: tools/setup-venv.sh [4|3|orig3|orig4] [EXTRAS]" >&2; exit 2 ;;
esac
if ! python3 -c "import venv, ensurepip" 2> /dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip > /dev/null
fi
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${package[@]}" "$pin"
