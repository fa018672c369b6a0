#!/usr/bin/env bash
# Peak memory of a whole job (driver + Ray processes): samples the machine's used memory
# every 2 s while CMD runs and writes the peak increase over the baseline to OUTFILE.
# usage: bench/peak_memory.sh OUTFILE CMD...
out=$1; shift
base=$(free -m | awk '/Mem:/{print $3}')
"$@" & pid=$!
peak=$base
while kill -0 $pid 2>/dev/null; do u=$(free -m | awk '/Mem:/{print $3}'); [ "$u" -gt "$peak" ] && peak=$u; sleep 2; done
wait $pid; rc=$?
echo "baseline_used_mib=$base peak_used_mib=$peak increase_mib=$((peak-base)) rc=$rc" > "$out"
