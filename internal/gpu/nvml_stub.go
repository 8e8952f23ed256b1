//go:build !nvml || !cgo || !linux

package gpu

import "fmt"

// Built without the nvml tag (or without cgo): no real probe.
func openNVML() (Probe, error) {
	return nil, fmt.Errorf("%w (bulsajo built without the nvml tag)", ErrUnavailable)
}
