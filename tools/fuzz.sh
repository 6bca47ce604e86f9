#!/usr/bin/env bash
# Runs the crash-recovery fuzz suite in fuzz/: simulated power loss, damage
# to sealed segments, failpoint and kill loops, and coverage-guided fuzzing
# of the native parsers under ASan and UBSan.
#
#   tools/fuzz.sh          the bounded CI profile (tools/test.sh runs it too)
#   tools/fuzz.sh --long   the nightly profile: far more hypothesis examples
#                          and 30 minutes of native fuzzing; then, where clang
#                          can be installed, libFuzzer on the same target
#                          (AOFLITE_LIBFUZZER_SECONDS, default 1800; 0 skips it)
#
# Extra arguments go to pytest (e.g. tools/fuzz.sh -k damage).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=ci
if [[ "${1:-}" == "--long" ]]; then
    profile=long
    shift
fi
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
export AOFLITE_FUZZ_PROFILE=$profile

# libFuzzer on fuzz/native/fuzz_segment.c, seeded from fuzz/corpus
libfuzzer() {
    if ! command -v clang >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null || true
    fi
    if ! command -v clang >/dev/null; then
        echo "tools/fuzz.sh: clang is not available; skipping the libFuzzer run"
        return 0
    fi
    local out
    out=$(mktemp -d /tmp/aoflite-libfuzzer.XXXXXX)
    clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Inative \
        native/crc32c.c native/failpoint.c native/feed.c native/segment.c native/writer.c \
        fuzz/native/fuzz_segment.c -lpthread -o "$out/fuzz_segment"
    mkdir "$out/corpus"
    echo "tools/fuzz.sh: libFuzzer for ${AOFLITE_LIBFUZZER_SECONDS:-1800} s; inputs and any crash go to $out"
    AOF_FUZZ_DIR=$out "$out/fuzz_segment" -max_total_time="${AOFLITE_LIBFUZZER_SECONDS:-1800}" \
        -timeout=10 -artifact_prefix="$out/" "$out/corpus" fuzz/corpus
}

status=0
python3 -m pytest fuzz "$@" || status=$?
if [[ $profile == long && ${AOFLITE_LIBFUZZER_SECONDS:-1800} != 0 ]]; then
    libfuzzer || status=1
fi
exit $status
