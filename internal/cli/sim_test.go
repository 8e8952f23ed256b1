package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSimUsageErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"gpus": 16, "no_such_field": 1}`), 0o644)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--gpus", "0"}, "gpus must be at least 1, got 0"},
		{[]string{"--days", "-1"}, "days must be > 0"},
		{[]string{"--ckpt-interval", "0s"}, "checkpoint interval must be > 0"},
		{[]string{"--mode", "restart,fast"}, `--mode "fast"`},
		{[]string{"--trials", "0"}, "--trials must be between 1 and 100000"},
		{[]string{"--rate", "-3"}, "--rate must be > 0"},
		{[]string{"--spares", "-2"}, "spares must be >= 0"},
		{[]string{"--params", filepath.Join(dir, "missing.json")}, "--params:"},
		{[]string{"--params", bad}, `unknown field "no_such_field"`},
		{[]string{"--gpus", "many"}, "invalid argument"},
		{[]string{"extra"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			err := Execute(context.Background(), append([]string{"sim"}, tt.args...), &out, &errb)
			if ExitCode(err) != 2 {
				t.Fatalf("exit code %d (%v), want 2", ExitCode(err), err)
			}
			msg := Message(err)
			if strings.Contains(msg, "\n") || !strings.Contains(msg, tt.want) {
				t.Fatalf("message %q, want one line containing %q", msg, tt.want)
			}
		})
	}
}

// One seed, the same bytes: table, JSON and charts.
func TestSimSameSeedSameBytes(t *testing.T) {
	run := func(dir string, extra ...string) (string, map[string][]byte) {
		args := append([]string{"sim", "--gpus", "2048", "--days", "5", "--trials", "3", "--sweep-trials", "2", "--seed", "9", "--out", dir}, extra...)
		var out, errb bytes.Buffer
		if err := Execute(context.Background(), args, &out, &errb); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		files := map[string][]byte{}
		for _, f := range []string{"ettr.svg", "timeline.svg"} {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			files[f] = b
		}
		return out.String(), files
	}
	a, fa := run(t.TempDir())
	b, fb := run(t.TempDir())
	if a != b {
		t.Fatalf("same seed, different tables:\n%s\n---\n%s", a, b)
	}
	for f := range fa {
		if !bytes.Equal(fa[f], fb[f]) {
			t.Fatalf("same seed, different %s", f)
		}
	}
	for _, want := range []string{"checkpoint-restart", "restart", "peer", "live", "ETTR", "rollback", "regroup", "ETTR by checkpoint interval"} {
		if !strings.Contains(a, want) {
			t.Errorf("table lacks %q:\n%s", want, a)
		}
	}
	j1, _ := run(t.TempDir(), "--json")
	j2, _ := run(t.TempDir(), "--json")
	if j1 != j2 {
		t.Fatal("same seed, different JSON")
	}
	var v struct {
		Results []struct {
			Mode string
			ETTR struct{ Mean, SE float64 }
		}
	}
	if err := json.Unmarshal([]byte(j1), &v); err != nil || len(v.Results) != 4 || v.Results[0].ETTR.Mean <= 0 {
		t.Fatalf("JSON %v: %+v", err, v)
	}
}
