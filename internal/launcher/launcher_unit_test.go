package launcher

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func envMap(t *testing.T, env []string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if _, dup := m[k]; dup {
			t.Errorf("key %q appears twice in %q", k, env)
		}
		m[k] = v
	}
	return m
}

func TestMergeEnv(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		set  map[string]string
		want map[string]string
	}{
		{"nil inputs", nil, nil, map[string]string{}},
		{"keep all", []string{"A=1", "B=2"}, nil, map[string]string{"A": "1", "B": "2"}},
		{"add", []string{"A=1"}, map[string]string{"B": "2"}, map[string]string{"A": "1", "B": "2"}},
		{"replace", []string{"A=1", "B=2"}, map[string]string{"A": "9"}, map[string]string{"A": "9", "B": "2"}},
		{"replace and add", []string{"PATH=/bin", "RANK=7", "HOME=/root"},
			map[string]string{"RANK": "0", "WORLD_SIZE": "4"},
			map[string]string{"PATH": "/bin", "RANK": "0", "HOME": "/root", "WORLD_SIZE": "4"}},
		{"value with equals sign", []string{"OPTS=a=b=c"}, map[string]string{"X": "k=v"},
			map[string]string{"OPTS": "a=b=c", "X": "k=v"}},
		{"empty value replaced", []string{"EMPTY="}, map[string]string{"EMPTY": "full"}, map[string]string{"EMPTY": "full"}},
		{"set to empty", []string{"A=1"}, map[string]string{"A": ""}, map[string]string{"A": ""}},
		{"prefix key not replaced", []string{"RANKX=1", "RANK_=2"}, map[string]string{"RANK": "3"},
			map[string]string{"RANKX": "1", "RANK_": "2", "RANK": "3"}},
		{"duplicate key in env replaced once", []string{"A=1", "A=2"}, map[string]string{"A": "3"}, map[string]string{"A": "3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := slices.Clone(tt.env)
			got := mergeEnv(tt.env, tt.set)
			if m := envMap(t, got); fmt.Sprint(m) != fmt.Sprint(tt.want) {
				t.Errorf("mergeEnv = %q, want %v", got, tt.want)
			}
			if !slices.Equal(tt.env, orig) {
				t.Errorf("mergeEnv modified its input: %q", tt.env)
			}
		})
	}
}

// Entries not in set keep their order, ahead of the set ones.
func TestMergeEnvKeepsOrder(t *testing.T) {
	got := mergeEnv([]string{"C=3", "A=1", "B=2"}, map[string]string{"A": "x", "Z": "z"})
	if !slices.Equal(got[:2], []string{"C=3", "B=2"}) {
		t.Errorf("kept entries = %q, want [C=3 B=2] first", got)
	}
}

func TestShimArgs(t *testing.T) {
	sdk := "/run/x/sdk"
	shim := filepath.Join(sdk, "bulsajo", "_standby.py")
	tests := []struct {
		name   string
		cmd    []string
		sdkDir string
		want   []string
	}{
		{"python script", []string{"python", "train.py"}, sdk, []string{"python", shim, "train.py"}},
		{"python3 script with args", []string{"python3", "train.py", "--steps", "10", "-v"}, sdk,
			[]string{"python3", shim, "train.py", "--steps", "10", "-v"}},
		{"python3.11", []string{"python3.11", "t.py"}, sdk, []string{"python3.11", shim, "t.py"}},
		{"absolute interpreter path", []string{"/usr/bin/python3", "examples/ddp_train.py"}, sdk,
			[]string{"/usr/bin/python3", shim, "examples/ddp_train.py"}},
		{"venv interpreter", []string{"/opt/venv/bin/python", "t.py"}, sdk, []string{"/opt/venv/bin/python", shim, "t.py"}},
		{"-m module", []string{"python3", "-m", "pkg.train", "--lr", "1"}, sdk,
			[]string{"python3", shim, "-m", "pkg.train", "--lr", "1"}},
		{"-m without module", []string{"python3", "-m"}, sdk, nil},
		{"-u flag", []string{"python3", "-u", "train.py"}, sdk, nil},
		{"-O flag", []string{"python", "-O", "train.py"}, sdk, nil},
		{"-c code", []string{"python3", "-c", "print(1)"}, sdk, nil},
		{"-X option", []string{"python3", "-X", "dev", "t.py"}, sdk, nil},
		{"stdin", []string{"python3", "-"}, sdk, nil},
		{"interpreter alone", []string{"python3"}, sdk, nil},
		{"empty command", nil, sdk, nil},
		{"non-python", []string{"/bin/sh", "train.sh"}, sdk, nil},
		{"bash running a py", []string{"bash", "train.py"}, sdk, nil},
		{"pythonw is not python", []string{"pythonw", "t.py"}, sdk, nil},
		{"python-config is not python", []string{"python3-config", "t.py"}, sdk, nil},
		{"ipython is not python", []string{"ipython", "t.py"}, sdk, nil},
		{"empty sdk dir", []string{"python3", "train.py"}, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := slices.Clone(tt.cmd)
			got := shimArgs(tt.cmd, tt.sdkDir)
			if !slices.Equal(got, tt.want) || (got == nil) != (tt.want == nil) {
				t.Errorf("shimArgs(%q, %q) = %q, want %q", tt.cmd, tt.sdkDir, got, tt.want)
			}
			if !slices.Equal(tt.cmd, orig) {
				t.Errorf("shimArgs modified its input: %q", tt.cmd)
			}
		})
	}
}

func TestParseProgress(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		want   Progress
		wantOK bool
	}{
		{"good", "step 3 1 120", Progress{Gen: 3, Rank: 1, Step: 120}, true},
		{"zeros", "step 0 0 0", Progress{}, true},
		{"trailing newline", "step 1 2 3\n", Progress{Gen: 1, Rank: 2, Step: 3}, true},
		{"extra spaces", "  step\t1  2 3 ", Progress{Gen: 1, Rank: 2, Step: 3}, true},
		{"empty", "", Progress{}, false},
		{"too few", "step 1 2", Progress{}, false},
		{"too many", "step 1 2 3 4", Progress{}, false},
		{"word only", "step", Progress{}, false},
		{"wrong verb", "stop 1 2 3", Progress{}, false},
		{"gen not a number", "step x 2 3", Progress{}, false},
		{"rank not a number", "step 1 r 3", Progress{}, false},
		{"step not a number", "step 1 2 3.5", Progress{}, false},
		{"overflow", "step 1 2 99999999999999999999999", Progress{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseProgress([]byte(tt.in))
			if ok != tt.wantOK {
				t.Fatalf("parseProgress(%q) ok = %v, want %v", tt.in, ok, tt.wantOK)
			}
			if got != tt.want {
				t.Errorf("parseProgress(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

const tcpHeader = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

func tcpLine(sl int, local, remote, state string) string {
	return fmt.Sprintf("%4d: %s %s %s 00000000:00000000 00:00000000 00000000  1000        0 %d 1 0000000000000000 100 0 0 10 0\n",
		sl, local, remote, state, 40000+sl)
}

func TestListensIn(t *testing.T) {
	table := tcpHeader +
		tcpLine(0, "0100007F:1F90", "00000000:0000", "0A") + // 127.0.0.1:8080 LISTEN
		tcpLine(1, "00000000:0016", "00000000:0000", "0A") + // 0.0.0.0:22 LISTEN
		tcpLine(2, "0100007F:D431", "0100007F:1F90", "01") + // ESTABLISHED, remote port 8080
		tcpLine(3, "0100007F:0BB8", "0100007F:9C40", "01") + // 127.0.0.1:3000 ESTABLISHED
		tcpLine(4, "0100007F:0BB9", "00000000:0000", "06") + // 127.0.0.1:3001 TIME_WAIT
		tcpLine(5, "0100007F:1389", "00000000:0000", "07") // 127.0.0.1:5001 CLOSE
	table6 := "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		tcpLine(0, "00000000000000000000000000000000:C350", "00000000000000000000000000000000:0000", "0A") // [::]:50000 LISTEN
	dir := t.TempDir()
	path, path6 := filepath.Join(dir, "tcp"), filepath.Join(dir, "tcp6")
	if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path6, []byte(table6), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		port int
		want bool
	}{
		{"listening", path, 8080, true},
		{"listening on any address", path, 22, true},
		{"established is not listening", path, 3000, false},
		{"time-wait is not listening", path, 3001, false},
		{"close is not listening", path, 5001, false},
		{"remote port does not count", path, 0xD431, false},
		{"absent port", path, 9999, false},
		{"port sharing trailing hex digits", path, 0x90, false},
		{"ipv6 table", path6, 50000, true},
		{"ipv6 table other port", path6, 8080, false},
		{"missing file", filepath.Join(dir, "nope"), 8080, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := fmt.Sprintf(":%04X", tt.port)
			if got := listensIn(tt.path, want); got != tt.want {
				t.Errorf("listensIn(%s, %q) = %v, want %v", filepath.Base(tt.path), want, got, tt.want)
			}
		})
	}
}

func TestIsListening(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if !isListening(port) {
		t.Errorf("isListening(%d) = false while a listener is open", port)
	}
	if !waitListening(port, 0) {
		t.Errorf("waitListening(%d, 0) = false while a listener is open", port)
	}
	ln.Close()
	if isListening(port) {
		t.Errorf("isListening(%d) = true after the listener closed", port)
	}

	// A port freed before it is probed at all.
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port2 := ln2.Addr().(*net.TCPAddr).Port
	ln2.Close()
	if isListening(port2) {
		t.Errorf("isListening(%d) = true for a closed port", port2)
	}
	if waitListening(port2, 0) {
		t.Errorf("waitListening(%d, 0) = true for a closed port", port2)
	}
}

// A member moved by a grow trains on in its old generation until it
// switches (after the boundary step or a later one): those steps count for
// that generation; any other generation's report is stale.
func TestStepReportsAfterAGrowCountWhereTheyRan(t *testing.T) {
	type want struct {
		reported, gen, rank int
		ok                  bool
	}
	for _, tt := range []struct {
		name   string
		from   Assignment // the worker's generation before
		to     Assignment
		checks []want
	}{
		{"grow: the old generation counts until the switch",
			Assignment{Gen: 2, Rank: 1}, Assignment{Gen: 3, Rank: 1, Grow: true, AtStep: 40},
			[]want{{2, 2, 1, true}, {3, 3, 1, true}, {1, 0, 0, false}}},
		{"regroup after a fault: the old generation is over",
			Assignment{Gen: 2, Rank: 1}, Assignment{Gen: 3, Rank: 0},
			[]want{{2, 0, 0, false}, {3, 3, 0, true}}},
		{"a joiner admitted by a grow had no generation to train on in",
			Assignment{Gen: 0, Rank: -1}, Assignment{Gen: 3, Rank: 2, Grow: true, Join: true},
			[]want{{0, 0, 0, false}, {3, 3, 2, true}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := &worker{gen: tt.from.Gen, rank: tt.from.Rank}
			w.reassign(tt.to)
			for _, c := range tt.checks {
				gen, rank, ok := w.stepGen(c.reported)
				if gen != c.gen || rank != c.rank || ok != c.ok {
					t.Errorf("step reported under gen %d: (%d, %d, %v), want (%d, %d, %v)", c.reported, gen, rank, ok, c.gen, c.rank, c.ok)
				}
			}
		})
	}
	// A fault after the grow ends the old generation too.
	w := &worker{gen: 2, rank: 1}
	w.reassign(Assignment{Gen: 3, Rank: 1, Grow: true})
	w.reassign(Assignment{Gen: 4, Rank: 1})
	if _, _, ok := w.stepGen(2); ok {
		t.Error("a step of generation 2 counted after a fault moved the worker on to 4")
	}
}
