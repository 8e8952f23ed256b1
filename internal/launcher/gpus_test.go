package launcher

import (
	"fmt"
	"testing"
)

func TestPlaceGPU(t *testing.T) {
	cases := []struct {
		name    string
		live    bool
		gpus    int
		drained []int
		cvd     string // inherited CUDA_VISIBLE_DEVICES
		want    []string
	}{
		{"health off", false, 0, nil, "", []string{"LR=0 G= CVD=", "LR=1 G= CVD=", "LR=2 G= CVD="}},
		{"nothing drained", false, 4, nil, "", []string{"LR=0 G=0 CVD=", "LR=1 G=1 CVD=", "LR=2 G=2 CVD="}},
		{"restart: healthy GPUs visible, dense LOCAL_RANK", false, 4, []int{1}, "", []string{"LR=0 G=0 CVD=0,2,3", "LR=1 G=2 CVD=0,2,3", "LR=2 G=3 CVD=0,2,3"}},
		{"restart: through the caller's CUDA_VISIBLE_DEVICES", false, 4, []int{0}, "4,5,6,7", []string{"LR=0 G=1 CVD=5,6,7", "LR=1 G=2 CVD=5,6,7", "LR=2 G=3 CVD=5,6,7"}},
		{"live: LOCAL_RANK is the GPU", true, 4, []int{1}, "", []string{"LR=0 G=0 CVD=", "LR=2 G=2 CVD=", "LR=3 G=3 CVD="}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("CUDA_VISIBLE_DEVICES", c.cvd)
			a := &Launcher{cfg: Config{GPUs: c.gpus, StandbyCount: 3, Live: c.live}}
			for _, d := range c.drained {
				a.DrainSlot(d)
			}
			for i, want := range c.want {
				env := a.placeGPU(map[string]string{"LOCAL_RANK": fmt.Sprint(i)}, i)
				got := fmt.Sprintf("LR=%s G=%s CVD=%s", env["LOCAL_RANK"], env["BULSAJO_GPU"], env["CUDA_VISIBLE_DEVICES"])
				if got != want {
					t.Errorf("worker %d: %s, want %s", i, got, want)
				}
			}
		})
	}
}
