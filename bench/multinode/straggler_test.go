package multinode

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// e) Stragglers: a live job (examples/live_ddp.py, gloo) on 4 nodes of one
// worker each and a spare; at a known time the worker on n3 is capped by a
// cgroup (v1 cpu quota, --straggler-quota percent of a CPU, default 5). Once
// with --straggler-action warn, once with replace: time to the coordinator's
// "⚠ straggler" line, to the move and the replacement's admission, and rank
// 0's steps/s before, during and after. Results are logged (not merged
// into results-multinode.json); BENCHMARKS.md quotes them.
func TestStraggler4Nodes(t *testing.T) {
	gate(t)
	quota := 5
	if v, err := strconv.Atoi(os.Getenv("BULSAJO_BENCH_STRAGGLER_QUOTA")); err == nil && v > 0 {
		quota = v
	}
	for _, action := range []string{"warn", "replace"} {
		t.Run(action, func(t *testing.T) {
			c := newCluster(t, []string{"n1", "n2", "n3", "n4", "s1"}, 1, torchEnv)
			sub := startIn(t, c.lab, "coord", c.dir, nil, bulsajoBin, "submit", "--coordinator", c.coordAddr(),
				"--token-file", c.tokenFile(), "--nnodes", "3:4", "--nproc-per-node", "1", "--run-id", "job1",
				"--recovery", "live", "--straggler-action", action, "--straggler-replace-after", "10s", "--",
				torchPython, filepath.Join(repoRoot, "examples", "live_ddp.py"), "--steps", "1000000", "--log-every", "10")
			rank0 := func() *proc {
				for _, n := range []string{"n1", "n2", "n3", "n4", "s1"} {
					if strings.Contains(c.agents[n].out.String(), "[rank0] step ") {
						return c.agents[n]
					}
				}
				return nil
			}
			waitFor(t, 4*time.Minute, "step 100", func() bool {
				p := rank0()
				return p != nil && strings.Contains(p.out.String(), "[rank0] step 100 ")
			})
			p := rank0()
			time.Sleep(10 * time.Second)
			var pid int // n3's worker
			dir := filepath.Join(c.dir, "agent-n3", "runs", "job1", "pids")
			ents, err := os.ReadDir(dir)
			for _, e := range ents {
				b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
				pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			}
			if pid == 0 {
				t.Fatalf("no worker pid on n3: %v", err)
			}
			cg := fmt.Sprintf("/sys/fs/cgroup/cpu/bulsajo-bench-%d", os.Getpid())
			if err := os.Mkdir(cg, 0o755); err != nil {
				t.Skipf("cgroup v1 cpu controller: %v", err)
			}
			defer func() {
				if b, err := os.ReadFile(cg + "/cgroup.procs"); err == nil {
					for _, p := range strings.Fields(string(b)) {
						os.WriteFile("/sys/fs/cgroup/cpu/cgroup.procs", []byte(p), 0o644)
					}
				}
				for i := 0; i < 50 && os.Remove(cg) != nil; i++ {
					time.Sleep(100 * time.Millisecond)
				}
			}()
			os.WriteFile(cg+"/cpu.cfs_period_us", []byte("100000"), 0o644)
			os.WriteFile(cg+"/cpu.cfs_quota_us", []byte(strconv.Itoa(quota*1000)), 0o644)
			if err := os.WriteFile(cg+"/cgroup.procs", []byte(strconv.Itoa(pid)), 0o644); err != nil {
				t.Fatal(err)
			}
			th := time.Now()
			waitFor(t, 2*time.Minute, "the straggler line", func() bool {
				_, ok := c.coord.out.find("⚠ straggler", th)
				return ok
			})
			named, _ := c.coord.out.find("⚠ straggler", th)
			var moved, grown time.Time
			if action == "replace" {
				waitFor(t, time.Minute, "the replacement admitted", func() bool {
					var ok1, ok2 bool
					moved, ok1 = c.coord.out.find("↻ straggler: moving", th)
					grown, ok2 = c.coord.out.find("grow: generation", th)
					return ok1 && ok2
				})
				time.Sleep(15 * time.Second)
			} else {
				time.Sleep(15 * time.Second)
			}
			end := time.Now()
			rate := func(p *proc, from, to time.Time) float64 {
				re := regexp.MustCompile(`\[rank0\] step (\d+) `)
				p.out.mu.Lock()
				defer p.out.mu.Unlock()
				var s0, s1 int
				var t0, t1 time.Time
				for _, l := range p.out.lines {
					if l.at.Before(from) || l.at.After(to) {
						continue
					}
					if m := re.FindStringSubmatch(l.s); m != nil {
						n, _ := strconv.Atoi(m[1])
						if t0.IsZero() {
							s0, t0 = n, l.at
						}
						s1, t1 = n, l.at
					}
				}
				if !t1.After(t0) {
					return 0
				}
				return float64(s1-s0) / t1.Sub(t0).Seconds()
			}
			line := ""
			for _, l := range strings.Split(c.coord.out.String(), "\n") {
				if strings.Contains(l, "⚠ straggler") {
					line = l
					break
				}
			}
			res := fmt.Sprintf("action %s, cap %d%%: named after %.1f s (%s); steps/s before %.1f, throttled %.1f",
				action, quota, named.Sub(th).Seconds(), strings.TrimSpace(line), rate(p, th.Add(-10*time.Second), th), rate(p, th, named))
			if action == "replace" {
				res += fmt.Sprintf(", moved after %.1f s, replacement admitted after %.1f s, steps/s after %.1f",
					moved.Sub(th).Seconds(), grown.Sub(th).Seconds(), rate(p, grown.Add(3*time.Second), end))
			} else {
				res += fmt.Sprintf(", steps/s 15 s later %.1f", rate(p, named, end))
			}
			t.Log(res)
			interrupt(sub)
		})
	}
}

func interrupt(p *proc) {
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
	}
}
