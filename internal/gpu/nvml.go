//go:build nvml && cgo && linux

package gpu

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// nvmlProbe reads the GPUs through NVML. go-nvml dlopens libnvidia-ml.so.1
// in Init, so this builds without a driver; without one Open reports
// ErrUnavailable.
type nvmlProbe struct {
	devs   []nvml.Device
	info   []Device
	events chan Event
	set    nvml.EventSet
	done   chan struct{}
	once   sync.Once
}

func openNVML() (Probe, error) {
	if ret := nvml.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("%w: NVML: %s", ErrUnavailable, nvml.ErrorString(ret))
	}
	n, ret := nvml.DeviceGetCount()
	if ret != nvml.SUCCESS || n == 0 {
		nvml.Shutdown()
		return nil, fmt.Errorf("%w: no GPU (%s)", ErrUnavailable, nvml.ErrorString(ret))
	}
	p := &nvmlProbe{events: make(chan Event, 64), done: make(chan struct{})}
	for i := 0; i < n; i++ {
		d, ret := nvml.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			// Listed but not reachable: report it lost from the first sample.
			p.devs = append(p.devs, nil)
			p.info = append(p.info, Device{Index: i})
			continue
		}
		info := Device{Index: i}
		info.UUID, _ = d.GetUUID()
		info.Name, _ = d.GetName()
		if pci, ret := d.GetPciInfo(); ret == nvml.SUCCESS {
			info.PCIBusID = cstr(pci.BusIdLegacy[:])
		}
		if w, ret := d.GetMaxPcieLinkWidth(); ret == nvml.SUCCESS {
			info.MaxPCIeWidth = w
		}
		for l := 0; l < nvml.NVLINK_MAX_LINKS; l++ {
			st, ret := d.GetNvLinkState(l)
			if ret != nvml.SUCCESS {
				break // no more links (or no NVLink)
			}
			if st == nvml.FEATURE_ENABLED {
				info.NVLinksUp = append(info.NVLinksUp, l)
			}
		}
		p.devs = append(p.devs, d)
		p.info = append(p.info, info)
	}
	p.startEvents()
	return p, nil
}

func cstr(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

func (p *nvmlProbe) Devices(ctx context.Context) ([]Device, error) {
	return append([]Device(nil), p.info...), nil
}

func (p *nvmlProbe) Sample(ctx context.Context, i int) (Sample, error) {
	if i < 0 || i >= len(p.devs) {
		return Sample{}, fmt.Errorf("gpu: no device %d", i)
	}
	s := Sample{Index: i, UUID: p.info[i].UUID, MaxPCIeWidth: p.info[i].MaxPCIeWidth, RecoveryAction: -1}
	d := p.devs[i]
	if d == nil {
		s.Lost, s.Err = true, "no handle"
		return s, nil
	}
	// A lost GPU answers every call with GPU_IS_LOST; the UUID is the
	// cheapest call to ask first.
	if uuid, ret := d.GetUUID(); ret == nvml.ERROR_GPU_IS_LOST || ret == nvml.ERROR_RESET_REQUIRED {
		s.Lost, s.Err = true, nvml.ErrorString(ret)
		return s, nil
	} else if ret == nvml.SUCCESS && s.UUID != "" && uuid != s.UUID {
		s.Lost, s.Err = true, "UUID changed from "+s.UUID+" to "+uuid
		return s, nil
	}
	s.TempC, _ = d.GetTemperature(nvml.TEMPERATURE_GPU)
	s.PowerMW, _ = d.GetPowerUsage()
	s.SMClockMHz, _ = d.GetClockInfo(nvml.CLOCK_SM)
	s.ClockEventReasons, _ = d.GetCurrentClocksEventReasons()
	s.PCIeWidth, _ = d.GetCurrPcieLinkWidth()
	s.ECCVolCorr, _ = d.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC)
	s.ECCVolUncorr, _ = d.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC)
	if c, u, pend, fail, ret := d.GetRemappedRows(); ret == nvml.SUCCESS {
		s.RemapCorr, s.RemapUnc, s.RemapPending, s.RemapFailed = c, u, pend, fail
	}
	fv := []nvml.FieldValue{{FieldId: nvml.FI_DEV_GET_GPU_RECOVERY_ACTION}}
	if ret := d.GetFieldValues(fv); ret == nvml.SUCCESS && fv[0].NvmlReturn == uint32(nvml.SUCCESS) {
		s.RecoveryAction = int(binary.LittleEndian.Uint32(fv[0].Value[:4]))
	}
	for _, l := range p.info[i].NVLinksUp {
		if st, ret := d.GetNvLinkState(l); ret != nvml.SUCCESS || st != nvml.FEATURE_ENABLED {
			s.NVLinkDown = append(s.NVLinkDown, l)
		}
	}
	return s, nil
}

// startEvents registers XID, double-bit ECC, GPU-unavailable and
// recovery-action events and waits for them in a goroutine, as the k8s
// device plugin does: a Wait error other than a timeout means the event
// source broke, reported as every GPU lost.
func (p *nvmlProbe) startEvents() {
	set, ret := nvml.EventSetCreate()
	if ret != nvml.SUCCESS {
		return
	}
	p.set = set
	want := uint64(nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError |
		nvml.EventTypeGpuUnavailableError | nvml.EventTypeGpuRecoveryAction)
	for _, d := range p.devs {
		if d == nil {
			continue
		}
		sup, ret := d.GetSupportedEventTypes()
		if ret != nvml.SUCCESS {
			continue
		}
		d.RegisterEvents(want&sup, set)
	}
	go func() {
		for {
			select {
			case <-p.done:
				return
			default:
			}
			e, ret := set.Wait(1000)
			if ret == nvml.ERROR_TIMEOUT {
				continue
			}
			if ret != nvml.SUCCESS {
				select {
				case <-p.done:
					return
				default:
				}
				p.emit(Event{Index: -1, Kind: EventLost, Detail: "NVML event wait: " + nvml.ErrorString(ret)})
				return
			}
			idx := p.indexOf(e.Device)
			switch {
			case e.EventType&nvml.EventTypeXidCriticalError != 0:
				p.emit(Event{Index: idx, Kind: EventXID, XID: int(e.EventData)})
			case e.EventType&nvml.EventTypeDoubleBitEccError != 0:
				p.emit(Event{Index: idx, Kind: EventXID, XID: 48, Detail: "double-bit ECC error"})
			case e.EventType&nvml.EventTypeGpuUnavailableError != 0:
				p.emit(Event{Index: idx, Kind: EventLost, Detail: "GPU unavailable"})
			case e.EventType&nvml.EventTypeGpuRecoveryAction != 0:
				p.emit(Event{Index: idx, Kind: EventRecovery, Value: int(e.EventData)})
			}
		}
	}()
}

func (p *nvmlProbe) indexOf(d nvml.Device) int {
	if d == nil {
		return -1
	}
	uuid, ret := d.GetUUID()
	if ret != nvml.SUCCESS {
		return -1 // as the k8s device plugin: an event we cannot place hits every GPU
	}
	for i, info := range p.info {
		if info.UUID == uuid {
			return i
		}
	}
	return -1
}

func (p *nvmlProbe) emit(e Event) {
	select {
	case p.events <- e:
	case <-p.done:
	}
}

func (p *nvmlProbe) Events() <-chan Event { return p.events }

func (p *nvmlProbe) Close() error {
	p.once.Do(func() {
		close(p.done)
		if p.set != nil {
			p.set.Free()
		}
		nvml.Shutdown()
	})
	return nil
}
