package slurm_test

import (
	"strconv"
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

func contains(s, sub string) bool { return len(sub) == 0 || indexOf(s, sub) >= 0 }

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

var _ = strconv.Itoa
