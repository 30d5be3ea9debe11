#!/bin/sh
# A diagnostic guest (kernels/matrix.py --diag): load each embedded BPF object
# with bpftool and keep the verifier's log, then power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t bpf bpf /sys/fs/bpf
R=/socklb-diag
mkdir -p "$R"
echo "socklb-guest: up $(uname -r)" > /dev/console
for o in /socklb/build/csrc-gen/*.o; do
  n=$(basename "$o" .o)
  mkdir -p "/sys/fs/bpf/$n"
  if bpftool -d prog loadall "$o" "/sys/fs/bpf/$n" > "$R/load-$n.log" 2>&1; then r=ok; else r=failed; fi
  echo "socklb-guest: load $n: $r" > /dev/console
  grep -B3 -A3 -m5 "invalid\|unknown\|failed\|denied\|not supported" "$R/load-$n.log" | head -30 > /dev/console
  rm -rf "/sys/fs/bpf/$n"
done
sync
echo o > /proc/sysrq-trigger
sleep 30
