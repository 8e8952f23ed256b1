#!/bin/bash
# cpu-limit.sh PERCENT CMD [ARG...]: run CMD, and every process it starts, in a
# cgroup held to PERCENT of one CPU (v1's cpu controller where it is mounted,
# else v2's cpu.max); the cgroup is removed when CMD ends. Exits with CMD's
# status, or 0 with a note when no cgroup can be made here (not root, no cpu
# controller): the check then cannot be made, and says so.
set -u
if [ $# -lt 2 ] || ! [[ $1 =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ]; then
	echo "usage: cpu-limit.sh PERCENT CMD [ARG...]" >&2
	exit 2
fi
percent=$1
shift
name=bulsajo-cpu-limit-$$
if [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
	parent=/sys/fs/cgroup/cpu
	dir=$parent/$name
	limit() { echo 100000 >"$dir/cpu.cfs_period_us" && echo $((percent * 1000)) >"$dir/cpu.cfs_quota_us"; }
elif grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
	parent=/sys/fs/cgroup
	dir=$parent/$name
	limit() { echo "$((percent * 1000)) 100000" >"$dir/cpu.max"; }
else
	echo "cpu-limit.sh: no cgroup cpu controller here (v1 /sys/fs/cgroup/cpu or v2 cpu.max): not run: $*"
	exit 0
fi
if ! mkdir "$dir" 2>/dev/null || ! limit 2>/dev/null; then
	rmdir "$dir" 2>/dev/null
	echo "cpu-limit.sh: cannot make a CPU-limited cgroup at $dir: not run: $*"
	exit 0
fi
remove() {
	# Whatever is left in it (nothing, normally) goes back to the parent first.
	for p in $(cat "$dir/cgroup.procs" 2>/dev/null); do echo "$p" >"$parent/cgroup.procs" 2>/dev/null; done
	for _ in $(seq 50); do rmdir "$dir" 2>/dev/null && return; [ -d "$dir" ] || return; sleep 0.1; done
	echo "cpu-limit.sh: cgroup $dir not removed" >&2
}
trap remove EXIT
# The child moves itself in before it execs CMD, so CMD never runs unlimited.
bash -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' cpu-limit "$dir" "$@"
rc=$?
echo "cpu-limit.sh: $percent% of one CPU, throttled $(grep -m1 nr_throttled "$dir/cpu.stat" 2>/dev/null | cut -d' ' -f2) times: $*"
exit $rc
