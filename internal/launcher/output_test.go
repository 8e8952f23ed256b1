package launcher

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/console"
)

// What a worker's death is owed to: only an error printed in the moments
// before it exited of its own accord.
func TestExitCause(t *testing.T) {
	type line struct {
		at   time.Duration // since the worker started
		text string
	}
	warn := []line{
		{0, "/usr/lib/python3/dist-packages/torch/optim/lr_scheduler.py:131: UserWarning: Seems like `optimizer.step()` has been overridden"},
		{0, `  warnings.warn("Seems like ...overridden after learning rate scheduler ")`},
	}
	tb := func(at time.Duration, exc ...string) []line {
		out := []line{{at, "Traceback (most recent call last):"}, {at, `  File "train.py", line 9, in <module>`},
			{at, "    main()"}}
		for _, e := range exc {
			out = append(out, line{at, e})
		}
		return out
	}
	// faulthandler's report of a fatal signal (Python 3.11).
	faultDump := func(at time.Duration, what string) []line {
		return []line{{at, "Fatal Python error: " + what}, {at, ""},
			{at, "Thread 0x00007f1c2a3fe6c0 (most recent call first):"},
			{at, `  File "/usr/lib/python3.11/threading.py", line 320 in wait`},
			{at, ""}, {at, "Current thread 0x00007f1c3b2e7740 (most recent call first):"},
			{at, `  File "train.py", line 9 in <module>`}, {at, ""},
			{at, "Extension modules: numpy.core._multiarray_umath, torch._C (total: 2)"}}
	}
	cat := func(ls ...[]line) []line {
		var out []line
		for _, l := range ls {
			out = append(out, l...)
		}
		return out
	}
	tests := []struct {
		name  string
		lines []line
		code  int
		sig   string
		at    time.Duration
		want  string
	}{
		{"warned early, killed later", warn, 137, "SIGKILL", 20 * time.Second, ""},
		{"warned just before the kill", cat(warn[:1], []line{{20 * time.Second, warn[1].text}}), 137, "SIGKILL", 20 * time.Second, ""},
		{"own exception", cat(warn, tb(5*time.Second, "ValueError: bad batch 7")), 1, "", 5*time.Second + 40*time.Millisecond, "ValueError: bad batch 7"},
		{"torch error with a message over lines", tb(time.Second, "RuntimeError: [../gloo/pair.cc:589] Read error: Connection reset by peer", "",
			"At:", "  train.py(117): per_param_allreduce"), 1, "", time.Second, "RuntimeError: [../gloo/pair.cc:589] Read error: Connection reset by peer"},
		{"chained: the last exception", cat(tb(time.Second, "KeyError: 'lr'", "", "During handling of the above exception, another exception occurred:", ""),
			tb(time.Second, "RuntimeError: config broken")), 1, "", time.Second, "RuntimeError: config broken"},
		{"torch 2.x: every line prefixed with its rank", func() []line {
			var out []line
			for _, l := range tb(time.Second, "RuntimeError: loss is not a tensor", "    ~~~~^^") {
				out = append(out, line{l.at, "[rank3]: " + l.text})
			}
			return out
		}(), 1, "", time.Second, "RuntimeError: loss is not a tensor"},
		{"traceback long before a silent exit 1", tb(time.Second, "ValueError: caught and logged"), 1, "", 30 * time.Second, ""},
		// An uncaught exception, then seconds of teardown under load.
		{"traceback, the last output, 8 s before exit 1", tb(time.Second, "ValueError: bad batch 7", "", "At:", "  train.py(9)"),
			1, "", 9 * time.Second, "ValueError: bad batch 7"},
		{"traceback 8 s before exit 1, then a stderr line", cat(tb(time.Second, "ValueError: caught and logged"),
			[]line{{2 * time.Second, "retrying with a smaller batch"}}), 1, "", 9 * time.Second, ""},
		{"traceback 8 s before exit 1, then a stdout line", cat(tb(time.Second, "ValueError: caught and logged"),
			[]line{{2 * time.Second, "1>epoch 3 loss 0.5"}}), 1, "", 9 * time.Second, ""},
		{"traceback, then a warning, 8 s before exit 1", cat(tb(time.Second, "ValueError: caught and logged"),
			[]line{{2 * time.Second, warn[0].text}, {2 * time.Second, warn[1].text}}),
			1, "", 9 * time.Second, ""},
		{"the last output, but killed from outside", tb(time.Second, "ValueError: bad batch 7"), 137, "SIGKILL", 9 * time.Second, ""},
		{"traceback, then killed from outside", tb(time.Second, "ValueError: caught and logged"), 137, "SIGKILL", time.Second, ""},
		{"uncaught C++ exception", []line{{time.Second, "terminate called after throwing an instance of 'c10::Error'"}},
			134, "SIGABRT", time.Second, "terminate called after throwing an instance of 'c10::Error'"},
		// Python's faulthandler (PYTHONFAULTHANDLER, which workers get) dumps
		// every thread's stack when the process raises a fatal signal.
		{"uncaught C++ exception, then faulthandler's stacks", cat([]line{
			{time.Second, "terminate called after throwing an instance of 'std::runtime_error'"},
			{time.Second, "  what():  pybind11_object_dealloc(): Tried to deallocate unregistered instance!"}},
			faultDump(time.Second, "Aborted")), 134, "SIGABRT", time.Second,
			"what():  pybind11_object_dealloc(): Tried to deallocate unregistered instance!"},
		{"os.abort() with faulthandler", faultDump(time.Second, "Aborted"), 134, "SIGABRT", time.Second, "Fatal Python error: Aborted"},
		{"segfault with faulthandler", faultDump(time.Second, "Segmentation fault"), 139, "SIGSEGV", time.Second,
			"Fatal Python error: Segmentation fault"},
		{"C++ exception long before faulthandler's stacks", cat([]line{
			{time.Second, "terminate called after throwing an instance of 'std::runtime_error'"}},
			faultDump(5*time.Second, "Segmentation fault")), 139, "SIGSEGV", 5 * time.Second,
			"Fatal Python error: Segmentation fault"},
		{"argparse", []line{{0, "usage: train.py [-h] [--steps STEPS]"}, {0, "train.py: error: unrecognized arguments: --stpes"}},
			2, "", 0, "train.py: error: unrecognized arguments: --stpes"},
		{"a warning is no error", warn, 1, "", 0, ""},
		{"exit 0", tb(0, "ValueError: caught"), 0, "", 0, ""},
		{"nothing printed", nil, 1, "", time.Second, ""},
		{"sys.exit(message)", []line{{time.Second, "no data in /data/train"}}, 1, "", time.Second + 5*time.Millisecond, "no data in /data/train"},
		{"a plain line long before exit 1", []line{{time.Second, "loading data"}}, 1, "", 10 * time.Second, ""},
		{"a plain line, then killed", []line{{time.Second, "loading data"}}, 137, "SIGKILL", time.Second, ""},
		{"an error line beats a later plain line", cat(tb(time.Second, "OSError: disk full"), []line{{2 * time.Second, "cleaning up"}}),
			1, "", 2 * time.Second, "OSError: disk full"},
	}
	t0 := time.Now()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s stderrState
			for _, l := range tt.lines {
				if out, ok := strings.CutPrefix(l.text, "1>"); ok && out != "" {
					s.stdout() // a line on stdout
					continue
				}
				s.observe(l.text, t0.Add(l.at))
			}
			if got := s.exitCause(tt.code, tt.sig, t0.Add(tt.at)); got != tt.want {
				t.Errorf("cause %q, want %q", got, tt.want)
			}
		})
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// faultWorker is run as every rank. Rank 1 warns at once, then does what
// argv[2] says; rank 0 plays the survivor: the moment rank 1's error is out
// (or it is gone) it fails with the traceback a broken collective gives.
const faultWorker = `
import os, sys, time, warnings
rank, mode, d = int(os.environ["RANK"]), sys.argv[2], sys.argv[1]
if rank == 1:
    warnings.warn("Seems like optimizer.step() has been overridden after learning rate scheduler initialization")
    with open(os.path.join(d, "pid.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.path.join(d, "pid.tmp"), os.path.join(d, "pid"))  # whole, for rank 0
    time.sleep(1.0)
    if mode == "raise":
        raise ValueError("bad batch 7")
    if mode == "raise-slow-exit":
        import atexit
        atexit.register(lambda: (open(os.path.join(d, "peer-gone"), "w").close(), time.sleep(0.5)))
        raise ValueError("bad batch 7")
    time.sleep(60)
else:
    while not os.path.exists(os.path.join(d, "pid")):
        time.sleep(0.005)
    pid = int(open(os.path.join(d, "pid")).read())
    def gone():
        if os.path.exists(os.path.join(d, "peer-gone")):
            return True
        try:
            os.kill(pid, 0)
            with open("/proc/%d/stat" % pid) as f:
                return f.read().split(") ")[1][0] == "Z"
        except OSError:
            return True
    while not gone():
        time.sleep(0.001)
    if mode == "raise-slow-exit":
        time.sleep(0.2)  # rank 1's error is out well before this one
    def allreduce():
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:589] Read error [127.0.0.1]:11701: Connection reset by peer")
    allreduce()
`

// A fault shows on the terminal as its own error only; the errors of the
// other ranks that follow from it, in the same milliseconds, go to the logs.
// Real processes (python3), real signals.
func TestFaultOutput(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found")
	}
	tests := []struct {
		name      string
		mode      string
		kill      bool   // SIGKILL rank 1 from outside
		wantCause string // rank 1's Exited.LastError
		shown     []string
	}{
		{"warns early, killed later", "sleep", true, "", []string{"[rank1] ", "UserWarning: Seems like"}},
		{"dies of its own exception", "raise", false, "ValueError: bad batch 7",
			[]string{"[rank1] Traceback (most recent call last):", "[rank1] ValueError: bad batch 7"}},
		// Its peer fails (and exits) first, while rank 1 is still finishing.
		{"own exception, slow to exit", "raise-slow-exit", false, "ValueError: bad batch 7",
			[]string{"[rank1] ValueError: bad batch 7"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			script := filepath.Join(dir, "w.py")
			os.WriteFile(script, []byte(faultWorker), 0o644)
			var term lockedBuffer
			a, err := New(Config{Command: []string{py, script, dir, tt.mode}, RunID: "faultout", RunDir: dir,
				StopGrace: time.Second, Console: console.New(&term)})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if err := a.StartGeneration(GenerationSpec{Gen: 1, WorldSize: 2, Ranks: []int{0, 1}, GroupWorldSize: 1,
				MasterAddr: "127.0.0.1", MasterPort: 1}); err != nil {
				t.Fatal(err)
			}
			if tt.kill {
				deadline := time.Now().Add(20 * time.Second)
				for !strings.Contains(term.String(), "UserWarning") {
					if time.Now().After(deadline) {
						t.Fatalf("rank 1 never warned; terminal:\n%s", term.String())
					}
					time.Sleep(10 * time.Millisecond)
				}
				if err := a.Signal(1, 1, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
			var first *Exited
			var atFirst string // the terminal when the fault was reported
			timeout := time.After(30 * time.Second)
			for exits := 0; exits < 2; {
				select {
				case ev := <-a.Events():
					if e, ok := ev.(Exited); ok {
						exits++
						// The generation is not stopped: rank 0's error must stay
						// off the terminal whenever it comes.
						if first == nil && (e.Code != 0 || e.Signal != "") {
							first, atFirst = &e, term.String()
						}
					}
				case <-timeout:
					t.Fatalf("workers did not exit; terminal:\n%s", term.String())
				}
			}
			time.Sleep(blockMax) // anything still held has been let go
			out := term.String()
			if first == nil || first.Rank != 1 {
				t.Fatalf("first failure %+v, want rank 1; terminal:\n%s", first, out)
			}
			if first.LastError != tt.wantCause {
				t.Errorf("cause %q, want %q", first.LastError, tt.wantCause)
			}
			if first.Log != filepath.Join(dir, "logs", "rank1.log") {
				t.Errorf("log %q", first.Log)
			}
			for _, s := range tt.shown {
				if !strings.Contains(atFirst, s) {
					t.Errorf("terminal lacks %q when the fault is reported:\n%s", s, atFirst)
				}
			}
			if strings.Contains(out, "Connection reset") || strings.Contains(out, "[rank0]") {
				t.Errorf("rank 0's error (a consequence) reached the terminal:\n%s", out)
			}
			log0, _ := os.ReadFile(filepath.Join(dir, "logs", "rank0.log"))
			if !strings.Contains(string(log0), "Connection reset by peer") {
				t.Errorf("rank 0's log lacks its error:\n%s", log0)
			}
		})
	}
}
