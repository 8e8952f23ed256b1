package gpu

import (
	"strconv"
	"strings"
)

// SlotMap maps GPU indices (NVML: PCI bus order) to worker slots (CUDA's
// order; the workers get CUDA_DEVICE_ORDER=PCI_BUS_ID so the two agree).
// CUDA_VISIBLE_DEVICES, when set, selects and orders the GPUs by index or
// UUID; GPUs it leaves out are not the job's.
func SlotMap(devs []Device, cvd string) map[int]int {
	out := map[int]int{}
	if strings.TrimSpace(cvd) == "" {
		for i, d := range devs {
			out[d.Index] = i
		}
		return out
	}
	for slot, id := range strings.Split(cvd, ",") {
		id = strings.TrimSpace(id)
		if n, err := strconv.Atoi(id); err == nil {
			for _, d := range devs {
				if d.Index == n {
					out[d.Index] = slot
				}
			}
			continue
		}
		for _, d := range devs {
			if d.UUID != "" && strings.HasPrefix(d.UUID, id) {
				out[d.Index] = slot
			}
		}
	}
	return out
}
