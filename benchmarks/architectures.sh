#!/bin/bash
# The architectures benchmark side by side: one process per architecture × mark (two CPU threads
# each; the GPU shared when there is one), each cut at $LIMIT seconds keeping the runs it finished,
# then merged into benchmarks/results/architectures.json. Usage: bash benchmarks/architectures.sh WORK [LIMIT]
set -u
work=${1:?usage: benchmarks/architectures.sh WORK [LIMIT]}; limit=${2:-3600}
results=benchmarks/results; mkdir -p "$work/logs"
parts=()
run() {   # arch mark seeds...
    local arch=$1 mark=$2; shift 2
    parts+=("$results/architectures-part-$arch-$mark.json")
    OMP_NUM_THREADS=2 timeout "$limit" "${PYTHON:-python3}" -m benchmarks.architectures --archs "$arch" --marks "$mark" \
        --seeds "$@" --work "$work" --out "architectures-part-$arch-$mark.json" > "$work/logs/$arch-$mark.log" 2>&1 &
}
for arch in resnet18 mobilenet_v3_small vit efficientnet_b0; do
    for mark in square text; do run "$arch" "$mark" 0 1 2; done
done
run resnet18_224 square 0
wait
present=(); for p in "${parts[@]}"; do [ -f "$p" ] && present+=("$p"); done
"${PYTHON:-python3}" -m benchmarks.architectures --merge "${present[@]}" --out architectures.json
