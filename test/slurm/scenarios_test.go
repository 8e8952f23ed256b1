package slurm_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A training node dies mid-run (its slurmd and every process on it,
// SIGKILLed): Slurm takes it out of the --no-kill allocation, bulsajo
// moves its ranks to the spare, and the job finishes from its checkpoint.
func TestSlurmNodeDiesSpareTakesOver(t *testing.T) {
	c := startCluster(t, 3)
	t0 := time.Now()
	j := c.submit(3, 1, nil, "--steps", "80", "--step-time", "0.1", "--ckpt-every", "5")
	j.waitState(60*time.Second, "RUNNING")
	j.waitOut(90*time.Second, `step 20 loss`)
	victim := j.trainingNode()
	st, text := j.status()
	if st.Slurm == nil || st.Slurm.JobID != j.id || st.Slurm.NodeList != "n[1-3]" || st.Slurm.RestartCount != 0 {
		t.Errorf("status does not show the Slurm job %s on n[1-3], restart 0:\n%s", j.id, text)
	}
	t.Logf("status:\n%s", text)
	c.killNode(victim)
	j.waitOut(120*time.Second, `resumed from step \d+ world 2`)
	j.waitState(120*time.Second, "COMPLETED")
	out := j.out()
	for _, want := range []string{`done steps=80`, `node ` + victim + ` lost`, `training finished`} {
		if !contains(out, want) {
			t.Errorf("job output lacks %q", want)
		}
	}
	if nl := j.field("NodeList"); contains(nl, victim[1:]) {
		t.Errorf("NodeList after the loss = %q, still holds %s (want it excised)", nl, victim)
	}
	if ec := j.field("ExitCode"); ec != "0:0" {
		t.Errorf("ExitCode = %s, want 0:0", ec)
	}
	if left := orphans(j.runDir); len(left) > 0 {
		t.Errorf("processes left behind: %v", left)
	}
	t.Logf("scenario took %s", time.Since(t0).Round(time.Second))
}

// A node bulsajo quarantines (here: a worker crash on it, with
// --quarantine-after 1) is drained in Slurm with bulsajo's reason, which
// `sinfo -R` shows; its ranks move to the spare and the job finishes.
func TestSlurmQuarantinedNodeIsDrained(t *testing.T) {
	c := startCluster(t, 3)
	t0 := time.Now()
	j := c.submit(3, 1, map[string]string{"BULSAJO_COORDINATOR_ARGS": "--quarantine-after 1"},
		"--steps", "60", "--step-time", "0.1", "--ckpt-every", "5", "--crash-rank", "1", "--crash-at-step", "15")
	j.waitState(60*time.Second, "RUNNING")
	line := j.waitOut(120*time.Second, `rank 1 crashing at step 15 on (n\d)`)
	bad := line[len(line)-2:]
	var reason string
	c.waitFor(60*time.Second, "sinfo -R to list "+bad+" drained by bulsajo", func() bool {
		out, _ := c.run("sinfo", "-R", "-h", "-o", "%N|%E")
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, bad+"|bulsajo: ") {
				reason = l
				return true
			}
		}
		return false
	})
	t.Logf("sinfo -R: %s", reason)
	if st := c.must("scontrol", "show", "node", bad); !contains(st, "DRAIN") {
		t.Errorf("node %s is not draining:\n%s", bad, st)
	}
	st, text := j.status()
	for _, n := range st.Nodes {
		if n.Name == bad && (!n.Quarantined || n.Slurm != "drained") {
			t.Errorf("status of %s: quarantined %v, slurm %q; want quarantined, drained:\n%s", bad, n.Quarantined, n.Slurm, text)
		}
	}
	j.waitState(120*time.Second, "COMPLETED")
	if out := j.out(); !contains(out, "done steps=60") {
		t.Errorf("the job did not finish its steps")
	}
	t.Logf("scenario took %s", time.Since(t0).Round(time.Second))
}

// SIGTERM to the batch script, as Slurm sends it before the time limit
// (--signal=B:TERM@T; here `scancel --batch --signal=TERM`): the workers
// write a checkpoint at the next step boundary, the job is requeued and the
// next run resumes from that step. A final scancel leaves nothing running.
func TestSlurmTermCheckpointsRequeuesAndResumes(t *testing.T) {
	c := startCluster(t, 3)
	t0 := time.Now()
	j := c.submit(3, 1, nil, "--steps", "100000", "--step-time", "0.1", "--ckpt-every", "1000")
	j.waitState(60*time.Second, "RUNNING")
	j.waitOut(120*time.Second, `fresh start world 2`)
	time.Sleep(3 * time.Second) // some steps past the start, none checkpointed (--ckpt-every 1000)
	c.must("scancel", "--batch", "--signal=TERM", j.id)
	// --ckpt-every 1000: only the SIGTERM path writes a checkpoint.
	var step int
	c.waitFor(60*time.Second, "a checkpoint written on SIGTERM", func() bool {
		b, err := os.ReadFile(filepath.Join(j.ckpt, "ckpt.pt.step"))
		step, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && step > 0
	})
	j.waitOut(150*time.Second, fmt.Sprintf(`resumed from step %d world 2`, step))
	if r := j.field("Restarts"); r != "1" {
		t.Errorf("Restarts = %s, want 1", r)
	}
	c.must("scancel", j.id)
	j.waitState(60*time.Second, "CANCELLED")
	c.waitFor(90*time.Second, "no process of the job left", func() bool { return len(orphans(j.runDir)) == 0 })
	t.Logf("checkpoint at step %d on SIGTERM, resumed there; scenario took %s", step, time.Since(t0).Round(time.Second))
}

// The batch host dies (the coordinator with it). Slurm neither ends nor
// requeues a --no-kill job for that; the surviving agents requeue it after
// --slurm-requeue-after, and the next run resumes from the checkpoint.
func TestSlurmBatchHostDiesJobIsRequeued(t *testing.T) {
	c := startCluster(t, 4)
	t0 := time.Now()
	j := c.submit(3, 1, nil, "--steps", "80", "--step-time", "0.1", "--ckpt-every", "5")
	j.waitState(60*time.Second, "RUNNING")
	j.waitOut(120*time.Second, `step 20 loss`)
	batch := j.field("BatchHost")
	c.killNode(batch)
	j.waitOut(90*time.Second, `requeued Slurm job `+j.id)
	c.waitFor(120*time.Second, "the job to run again", func() bool { return j.field("Restarts") == "1" && j.field("JobState") == "RUNNING" })
	t.Logf("requeued and running again on %s after %s", j.field("NodeList"), time.Since(t0).Round(time.Second))
	j.waitOut(120*time.Second, `resumed from step (\d+) world 2`)
	j.waitState(120*time.Second, "COMPLETED")
	out := j.out()
	if !contains(out, "done steps=80") || !contains(out, "restart 1 on") {
		t.Errorf("the requeued run did not finish the training")
	}
	if nl := j.field("NodeList"); contains(nl, batch[1:]) && nl != "n[1-3]" && !contains(nl, "2-4") {
		t.Logf("NodeList of the requeued run: %s", nl)
	}
	if left := orphans(j.runDir); len(left) > 0 {
		t.Errorf("processes left behind: %v", left)
	}
	t.Logf("scenario took %s", time.Since(t0).Round(time.Second))
}

func contains(s, sub string) bool { return len(sub) == 0 || indexOf(s, sub) >= 0 }

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}
