package gpu

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fake is a scripted probe, a testing aid selected by BULSAJO_FAKE_GPU=FILE
// (for `bulsajo run` and `bulsajo agent`). It pretends the node has N GPUs
// and plays the file's lines; the file is re-read every 100 ms, so a test
// can append a line at the moment it chooses. Lines:
//
//	gpus 4                      the node has 4 GPUs (first line)
//	[at 5s] xid 79 gpu 2        an XID event on GPU 2
//	[at 5s] lost gpu 1          GPU 1 unavailable (an event)
//	[at 5s] recovery 2 gpu 1    recovery action changed to NODE_REBOOT
//	[at 5s] set gpu 0 KEY=V...  what later samples of GPU 0 read: temp,
//	                            reasons (hex ok), pcie, maxpcie, ecc_corr,
//	                            ecc_unc, remap_pending, remap_failed,
//	                            recovery, nvlink_down (a,b), lost (0/1)
//	[at 5s] hang gpu 3          every later call on GPU 3 blocks
//
// "at D" is measured from the probe's opening; without it a line plays as
// soon as it is read. # starts a comment.
type Fake struct {
	path   string
	start  time.Time
	events chan Event
	done   chan struct{}
	once   sync.Once

	mu     sync.Mutex
	n      int
	played int // lines played (or scheduled)
	state  map[int]*Sample
	hung   map[int]bool
}

// OpenFake opens the scripted probe of path.
func OpenFake(path string) (*Fake, error) {
	f := &Fake{path: path, start: time.Now(), events: make(chan Event, 64), done: make(chan struct{}),
		state: map[int]*Sample{}, hung: map[int]bool{}}
	lines, err := f.read()
	if err != nil {
		return nil, err
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("%s: want a first line `gpus N`", path)
	}
	fs := strings.Fields(lines[0])
	n, err := 0, error(nil)
	if len(fs) == 2 && fs[0] == "gpus" {
		n, err = strconv.Atoi(fs[1])
	}
	if len(fs) != 2 || fs[0] != "gpus" || err != nil || n < 0 || n > 1024 {
		return nil, fmt.Errorf("%s: first line %q: want `gpus N`", path, lines[0])
	}
	f.n = n
	for i := 0; i < n; i++ {
		f.state[i] = &Sample{Index: i, UUID: fakeUUID(i), TempC: 40, PCIeWidth: 16, MaxPCIeWidth: 16, SMClockMHz: 1980}
	}
	f.played = 1
	// Check every line now: a typo must fail the test that wrote it.
	for i, l := range lines[1:] {
		if _, _, err := parseFakeLine(l); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, i+2, err)
		}
	}
	go f.loop()
	return f, nil
}

func fakeUUID(i int) string { return fmt.Sprintf("GPU-fake-%04d", i) }

// read returns the file's meaningful lines.
func (f *Fake) read() ([]string, error) {
	fh, err := os.Open(f.path)
	if err != nil {
		return nil, fmt.Errorf("fake GPU script: %w", err)
	}
	defer fh.Close()
	var out []string
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		l := sc.Text()
		if i := strings.IndexByte(l, '#'); i >= 0 {
			l = l[:i]
		}
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}

// parseFakeLine splits "at D rest" into D and the command words.
func parseFakeLine(l string) (time.Duration, []string, error) {
	fs := strings.Fields(l)
	var at time.Duration
	if len(fs) >= 2 && fs[0] == "at" {
		d, err := time.ParseDuration(fs[1])
		if err != nil || d < 0 {
			return 0, nil, fmt.Errorf("%q: bad time", l)
		}
		at, fs = d, fs[2:]
	}
	if len(fs) < 3 {
		return 0, nil, fmt.Errorf("%q: too short", l)
	}
	gpuAt := map[string]int{"xid": 2, "lost": 1, "recovery": 2, "set": 1, "hang": 1}
	k, ok := gpuAt[fs[0]]
	if !ok || len(fs) <= k || fs[k] != "gpu" || len(fs) < k+2 {
		return 0, nil, fmt.Errorf("%q: want xid N gpu I | lost gpu I | recovery N gpu I | set gpu I K=V... | hang gpu I", l)
	}
	if _, err := strconv.Atoi(fs[k+1]); err != nil {
		return 0, nil, fmt.Errorf("%q: bad GPU index", l)
	}
	if k == 2 {
		if _, err := strconv.Atoi(fs[1]); err != nil {
			return 0, nil, fmt.Errorf("%q: bad number", l)
		}
	}
	if fs[0] == "set" {
		var s Sample
		for _, kv := range fs[3:] {
			if err := setField(&s, kv); err != nil {
				return 0, nil, fmt.Errorf("%q: %v", l, err)
			}
		}
	} else if len(fs) != k+2 {
		return 0, nil, fmt.Errorf("%q: trailing words", l)
	}
	return at, fs, nil
}

func setField(s *Sample, kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	if !ok {
		return fmt.Errorf("%q: want KEY=VALUE", kv)
	}
	if k == "nvlink_down" {
		s.NVLinkDown = nil
		for _, x := range strings.Split(v, ",") {
			n, err := strconv.Atoi(x)
			if err != nil {
				return fmt.Errorf("%q: bad link list", kv)
			}
			s.NVLinkDown = append(s.NVLinkDown, n)
		}
		return nil
	}
	n, err := strconv.ParseInt(v, 0, 64)
	if err != nil {
		return fmt.Errorf("%q: bad number", kv)
	}
	switch k {
	case "temp":
		s.TempC = uint32(n)
	case "reasons":
		s.ClockEventReasons = uint64(n)
	case "pcie":
		s.PCIeWidth = int(n)
	case "maxpcie":
		s.MaxPCIeWidth = int(n)
	case "ecc_corr":
		s.ECCVolCorr = uint64(n)
	case "ecc_unc":
		s.ECCVolUncorr = uint64(n)
	case "remap_pending":
		s.RemapPending = n != 0
	case "remap_failed":
		s.RemapFailed = n != 0
	case "recovery":
		s.RecoveryAction = int(n)
	case "lost":
		s.Lost = n != 0
		if s.Lost {
			s.Err = "fake: lost"
		}
	default:
		return fmt.Errorf("%q: unknown key", k)
	}
	return nil
}

func (f *Fake) loop() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		f.poll()
		select {
		case <-f.done:
			return
		case <-t.C:
		}
	}
}

// poll plays the lines that are due, in order; a line not yet due holds
// back the ones after it.
func (f *Fake) poll() {
	lines, err := f.read()
	if err != nil {
		return
	}
	for {
		f.mu.Lock()
		if f.played >= len(lines) {
			f.mu.Unlock()
			return
		}
		at, fs, err := parseFakeLine(lines[f.played])
		if err != nil || time.Since(f.start) < at {
			f.mu.Unlock()
			if err != nil {
				fmt.Fprintf(os.Stderr, "bulsajo: fake GPU script line %d: %v (skipped)\n", f.played+1, err)
				f.mu.Lock()
				f.played++
				f.mu.Unlock()
				continue
			}
			return
		}
		f.played++
		ev, isEv := f.apply(fs)
		f.mu.Unlock()
		if isEv {
			select {
			case f.events <- ev:
			case <-f.done:
				return
			}
		}
	}
}

// apply plays one command (f.mu held); an event is returned to send.
func (f *Fake) apply(fs []string) (Event, bool) {
	switch fs[0] {
	case "xid":
		x, _ := strconv.Atoi(fs[1])
		i, _ := strconv.Atoi(fs[3])
		return Event{Index: i, Kind: EventXID, XID: x}, true
	case "recovery":
		v, _ := strconv.Atoi(fs[1])
		i, _ := strconv.Atoi(fs[3])
		if s := f.state[i]; s != nil {
			s.RecoveryAction = v
		}
		return Event{Index: i, Kind: EventRecovery, Value: v}, true
	case "lost":
		i, _ := strconv.Atoi(fs[2])
		if s := f.state[i]; s != nil {
			s.Lost, s.Err = true, "fake: lost"
		}
		return Event{Index: i, Kind: EventLost, Detail: "GPU unavailable"}, true
	case "hang":
		i, _ := strconv.Atoi(fs[2])
		f.hung[i] = true
	case "set":
		i, _ := strconv.Atoi(fs[2])
		if s := f.state[i]; s != nil {
			for _, kv := range fs[3:] {
				setField(s, kv)
			}
		}
	}
	return Event{}, false
}

// Devices lists the pretended GPUs.
func (f *Fake) Devices(ctx context.Context) ([]Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Device, f.n)
	for i := range out {
		out[i] = Device{Index: i, UUID: fakeUUID(i), Name: "Fake GPU", MaxPCIeWidth: 16}
	}
	return out, nil
}

// Sample reads GPU i's scripted state; a hung GPU blocks until Close.
func (f *Fake) Sample(ctx context.Context, i int) (Sample, error) {
	f.mu.Lock()
	s, hung := f.state[i], f.hung[i]
	var out Sample
	if s != nil {
		out = *s
		out.NVLinkDown = append([]int(nil), s.NVLinkDown...)
	}
	f.mu.Unlock()
	if s == nil {
		return Sample{}, fmt.Errorf("gpu: no device %d", i)
	}
	if hung {
		<-f.done // as a wedged driver call: ctx does not help
		return Sample{}, fmt.Errorf("gpu: closed")
	}
	return out, nil
}

// Events delivers the scripted events.
func (f *Fake) Events() <-chan Event { return f.events }

// Close stops the script and releases hung calls.
func (f *Fake) Close() error {
	f.once.Do(func() { close(f.done) })
	return nil
}
