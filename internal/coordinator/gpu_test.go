package coordinator

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// gpuOnly collects the GPU series of a fixed status.
type gpuOnly struct{ st Status }

func (g gpuOnly) Describe(ch chan<- *prometheus.Desc) { ch <- descGPUProblem; ch <- descGPUsDrained }
func (g gpuOnly) Collect(ch chan<- prometheus.Metric) { gpuMetrics(ch, g.st) }

func TestGPUMetrics(t *testing.T) {
	c := gpuOnly{Status{Nodes: []NodeStatus{
		{Name: "a"},
		{Name: "b", GPUs: []GPUState{{GPU: 1, UUID: "GPU-x", State: "drained", Reason: "XID 79"}, {GPU: 3, State: "warn", Reason: "PCIe"}}},
	}}}
	want := `
# HELP bulsajo_gpu_problem GPUs an agent reported (state drained, restart or warn; the last verdict).
# TYPE bulsajo_gpu_problem gauge
bulsajo_gpu_problem{Hostname="b",UUID="",gpu="3",state="warn"} 1
bulsajo_gpu_problem{Hostname="b",UUID="GPU-x",gpu="1",state="drained"} 1
# HELP bulsajo_gpus_drained GPUs drained (their nodes quarantined).
# TYPE bulsajo_gpus_drained gauge
bulsajo_gpus_drained 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
