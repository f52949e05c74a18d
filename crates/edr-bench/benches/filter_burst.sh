#!/bin/bash
set -u
# One file appended to 1000 times in a watched directory, with the given
# filters.coalesce_file_changes_ms and filters.repeat_window_ms; prints what
# the agent queued, filtered and stored. Usage, from the repository root
# after `cargo build --release`:
#   crates/edr-bench/benches/filter_burst.sh 0 0          # no filtering
#   crates/edr-bench/benches/filter_burst.sh 0 10000      # exact repeats only
#   crates/edr-bench/benches/filter_burst.sh 1000 10000   # the defaults
# A third argument sets collectors.file_monitor.source (default auto:
# fanotify as root, inotify otherwise), e.g. `0 0 inotify`.
B=${EDR_AGENT:-target/release/edr-agent}
root=$(mktemp -d); mkdir -p $root/w
cat > $root/c.yaml <<YAML
storage: {local_storage: {data_dir: $root/data}}
collectors:
  process_monitor: {enabled: false}
  network_monitor: {enabled: false}
  file_monitor: {watch_paths: [$root/w], source: ${3:-auto}}
filters: {coalesce_file_changes_ms: $1, repeat_window_ms: $2}
YAML
$B run --config $root/c.yaml --log warn & P=$!
for _ in $(seq 100); do
  $B status --data-dir $root/data --json 2>/dev/null | grep -q "$root/w" && break
  sleep 0.1
done
for i in $(seq 1000); do echo "line $i" >> $root/w/app.log; done
sleep 2
$B status --data-dir $root/data --json | python3 -c "import json,sys; t=json.load(sys.stdin)['status']['totals']; print('file events queued', t['produced'][1], 'filtered', t['filtered'][1], 'stored', t['stored'][1])"
kill $P; wait $P
echo "stored file-modified events: $($B events --data-dir $root/data | grep -c file-modified)"
rm -rf $root
