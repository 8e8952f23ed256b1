package coordinator

import (
	"strings"
	"testing"
)

func TestGPUMetrics(t *testing.T) {
	var b strings.Builder
	writeGPUMetrics(&b, Status{Nodes: []NodeStatus{
		{Name: "a"},
		{Name: "b", GPUs: []GPUState{{GPU: 1, UUID: "GPU-x", State: "drained", Reason: "XID 79"}, {GPU: 3, State: "warn", Reason: "PCIe"}}},
	}})
	for _, want := range []string{
		`bulsajo_gpu_problem{Hostname="b",gpu="1",UUID="GPU-x",state="drained"} 1`,
		`bulsajo_gpu_problem{Hostname="b",gpu="3",UUID="",state="warn"} 1`,
		"bulsajo_gpus_drained 1\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in:\n%s", want, b.String())
		}
	}
}
