#!/usr/bin/env bash
# Rebuilds the committed eBPF object of the network collector from its C
# source: crates/edr-collect/src/network/bpf/conn.bpf.c -> conn.bpf.o.
#
# The object is committed so that `cargo build` needs no clang or libbpf
# headers; the test `committed_bpf_object_is_current` (edr-collect) runs
# this script's build into a temporary file and fails if it differs. The
# output is deterministic for one clang version: paths are relative, DWARF
# is stripped (BTF and its CO-RE relocations stay). Built with Debian 12's
# clang 14 and libbpf-dev 1.1 headers (scripts/setup.sh installs both).
#
# Usage: scripts/build-bpf.sh [OUTPUT]   (default: the committed object)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=crates/edr-collect/src/network/bpf
out=${1:-$dir/conn.bpf.o}
for tool in clang llvm-strip; do
    command -v "$tool" >/dev/null || {
        echo "build-bpf.sh: $tool not found (scripts/setup.sh installs clang, llvm and libbpf-dev)" >&2
        exit 1
    }
done
[ -f /usr/include/bpf/bpf_helpers.h ] || {
    echo "build-bpf.sh: libbpf headers not found (apt-get install libbpf-dev)" >&2
    exit 1
}
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
clang -target bpf -g -O2 -Wall -Werror -I"/usr/include/$(uname -m)-linux-gnu" \
    -fdebug-prefix-map="$PWD"=. -fdebug-compilation-dir=. \
    -c "$dir/conn.bpf.c" -o "$tmp"
llvm-strip -g "$tmp" -o "$out"
