#!/usr/bin/env bash
# The whole test suite: set up native packages, build, run every test (including real mpirun runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash cluster/setup.sh
swift build --build-tests
# The quickstart and benchmarks run release builds: a release-only optimiser or link failure must fail the suite.
swift build -c release
swift test --skip-build --disable-xctest
