package slurm

import (
	"testing"
)

func TestParseJobAndTurn(t *testing.T) {
	out := "JobId=7 JobName=bulsajo UserId=root(0) JobState=RUNNING Reason=None Requeue=1 Restarts=2 BatchFlag=1 NodeList=n[1-4] BatchHost=n1 NumNodes=4\n"
	j := parseJob(out)
	if j.State != "RUNNING" || j.Restarts != 2 || j.NodeList != "n[1-4]" || j.BatchHost != "n1" {
		t.Fatalf("parseJob = %+v", j)
	}
	nodes := []string{"n1", "n2", "n3", "n4"}
	for _, tt := range []struct {
		self string
		want int
	}{{"n2", 0}, {"n3", 1}, {"n4", 2}, {"n1", -1}, {"n9", -1}} {
		if got := RequeueTurn(j, nodes, tt.self); got != tt.want {
			t.Errorf("RequeueTurn(%s) = %d, want %d", tt.self, got, tt.want)
		}
	}
	// The batch host already excised by Slurm: same line.
	if got := RequeueTurn(j, nodes[1:], "n3"); got != 1 {
		t.Errorf("RequeueTurn after excision = %d, want 1", got)
	}
}
