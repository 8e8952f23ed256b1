// Package gpu watches the node's GPUs: a Probe reads them (NVML on a real
// node, a scripted fake in tests), Rules class what it reads (drain the
// GPU, restart its worker, warn), and a Monitor runs the probe with a
// timeout on every call, so a wedged GPU (NVML blocks on one) is reported as
// lost instead of hanging bulsajo.
package gpu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Device is one GPU as enumerated at start.
type Device struct {
	Index        int    // NVML index (PCI bus order)
	UUID         string // GPU-...
	Name         string
	PCIBusID     string
	MaxPCIeWidth int
	NVLinksUp    []int // links up when the probe opened
}

// Sample is one reading of one GPU.
type Sample struct {
	Index             int
	UUID              string
	Lost              bool   // fell off the bus, or the probe call timed out
	Err               string // why it is lost
	TempC             uint32
	PowerMW           uint32
	SMClockMHz        uint32
	ClockEventReasons uint64 // NVML clocks event (throttle) reason bits
	PCIeWidth         int
	MaxPCIeWidth      int
	ECCVolCorr        uint64 // volatile corrected ECC errors
	ECCVolUncorr      uint64 // volatile uncorrected ECC errors
	RemapCorr         int
	RemapUnc          int
	RemapPending      bool
	RemapFailed       bool
	RecoveryAction    int   // NVML GPU recovery action; -1 where the driver has none (< r570)
	NVLinkDown        []int // links that were up when the probe opened and are not now
}

// Clock event reason bits that mean the hardware slowed the GPU down.
const (
	ReasonHwSlowdown   = 0x8
	ReasonSwThermal    = 0x20
	ReasonHwThermal    = 0x40
	ReasonHwPowerBrake = 0x80
	ReasonsHardware    = ReasonHwSlowdown | ReasonHwThermal | ReasonHwPowerBrake
)

// ReasonNames spells the hardware throttle bits of r.
func ReasonNames(r uint64) string {
	var out []string
	for _, b := range []struct {
		bit  uint64
		name string
	}{{ReasonHwSlowdown, "HW_SLOWDOWN"}, {ReasonSwThermal, "SW_THERMAL"}, {ReasonHwThermal, "HW_THERMAL"}, {ReasonHwPowerBrake, "HW_POWER_BRAKE"}} {
		if r&b.bit != 0 {
			out = append(out, b.name)
		}
	}
	return strings.Join(out, "|")
}

// NVML GPU recovery actions (FI_DEV_GET_GPU_RECOVERY_ACTION, r570+).
const (
	RecoveryNone          = 0
	RecoveryGPUReset      = 1
	RecoveryNodeReboot    = 2
	RecoveryDrainP2P      = 3
	RecoveryDrainAndReset = 4
)

// RecoveryName spells a recovery action.
func RecoveryName(a int) string {
	switch a {
	case -1:
		return "unsupported"
	case RecoveryNone:
		return "NONE"
	case RecoveryGPUReset:
		return "GPU_RESET"
	case RecoveryNodeReboot:
		return "NODE_REBOOT"
	case RecoveryDrainP2P:
		return "DRAIN_P2P"
	case RecoveryDrainAndReset:
		return "DRAIN_AND_RESET"
	}
	return fmt.Sprintf("action %d", a)
}

// EventKind says what an Event reports.
type EventKind string

const (
	EventXID      EventKind = "xid"
	EventLost     EventKind = "lost"     // GPU unavailable, or the event wait failed
	EventRecovery EventKind = "recovery" // the recovery action changed (Value)
)

// Event is something the driver reported asynchronously.
type Event struct {
	Index  int // -1: every GPU (the event source itself failed)
	Kind   EventKind
	XID    int
	Value  int
	Detail string
}

// Probe reads the GPUs of this node. Calls may block (a wedged GPU); the
// Monitor bounds each with a timeout.
type Probe interface {
	Devices(ctx context.Context) ([]Device, error)
	Sample(ctx context.Context, index int) (Sample, error)
	// Events delivers XID and similar events until Close.
	Events() <-chan Event
	Close() error
}

// ErrUnavailable: no NVML library or driver, or no GPU. Not an error for
// bulsajo: it runs without GPU health.
var ErrUnavailable = errors.New("GPU health unavailable")

// FakeEnv names the scripted fake probe's file (a testing aid; see
// fake.go). When set, it replaces NVML.
const FakeEnv = "BULSAJO_FAKE_GPU"

// Open returns this node's probe: the fake when FakeEnv is set, else NVML
// when bulsajo was built with the nvml tag and a driver is present.
func Open() (Probe, error) {
	if path := os.Getenv(FakeEnv); path != "" {
		return OpenFake(path)
	}
	return openNVML()
}
