#!/bin/sh
# PID 1 of a kernel-matrix guest (kernels/matrix.py): mount what socklb
# needs, run socklb doctor, socklb demo and the tests, write the results
# into /socklb-results (the host reads them through the shared 9p root), and
# power off.  No network device: every packet stays in the lab's namespaces.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
R=/socklb-results
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /run/netns "$R"
ip link set lo up
hostname socklb-guest
echo "socklb-guest: up $(uname -r)" | tee /dev/console "$R/up"
if [ -e /socklb-kernels-probe ]; then echo o > /proc/sysrq-trigger; sleep 30; fi
cd /socklb
PY=/socklb/.venv/bin/python
# Under software emulation everything is ~20x slower: the lab waits longer.
export SOCKLB_LAB_TIMEOUT_SCALE=10
step() { echo "socklb-guest: $*" > /dev/console; }
step "doctor"
"$PY" -m socklb.cli doctor > "$R/doctor.txt" 2>&1
"$PY" -m socklb.cli doctor -o json > "$R/doctor.json" 2>>"$R/doctor.txt"
cat "$R/doctor.txt" > /dev/console
step "demo"
"$PY" -m socklb.cli demo > "$R/demo.out" 2>&1; echo $? > "$R/demo.rc"
tail -n 15 "$R/demo.out" > /dev/console
step "tests: $(cat /socklb-kernels-tests)"
# shellcheck disable=SC2046
CI=true SOCKLB_KERNEL_MATRIX=1 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$R/junit.xml" \
  $(cat /socklb-kernels-tests) > "$R/pytest.out" 2>&1
echo $? > "$R/pytest.rc"
tail -n 30 "$R/pytest.out" > /dev/console
step "done"
sync
echo o > /proc/sysrq-trigger
sleep 30
