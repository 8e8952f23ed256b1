package launcher

import (
	"os"
	"testing"
)

// Restart mode gives workers NCCL's async error handling under torch 2.x's
// name and 1.13's, as the torchrun of either version does; a value the user
// set under either name wins for both; live mode sets neither (the SDK does).
func TestNCCLAsyncErrorHandlingBothNames(t *testing.T) {
	const newName, oldName = "TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING"
	tests := []struct {
		name             string
		live             bool
		userNew, userOld string // "" = unset
		wantNew, wantOld string // "" = absent
	}{
		{"default", false, "", "", "1", "1"},
		{"user set the new name", false, "0", "", "0", "0"},
		{"user set the old name", false, "", "2", "2", "2"},
		{"user set both", false, "3", "0", "3", "0"},
		{"live mode", true, "", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range map[string]string{newName: tt.userNew, oldName: tt.userOld} {
				t.Setenv(k, v) // restored after the test
				if v == "" {
					os.Unsetenv(k)
				}
			}
			a := &Launcher{cfg: Config{RunID: "r", RunDir: t.TempDir(), Live: tt.live}, ctl: &control{}}
			env := envMap(t, a.baseEnv())
			for k, want := range map[string]string{newName: tt.wantNew, oldName: tt.wantOld} {
				got, ok := env[k]
				if want == "" && ok {
					t.Errorf("%s=%q, want it unset", k, got)
				}
				if want != "" && got != want {
					t.Errorf("%s=%q, want %q", k, got, want)
				}
			}
		})
	}
}

func TestNoLibuvDatagram(t *testing.T) {
	for in, want := range map[string]bool{"torch nolibuv": true, "torch nolibuv\n": true,
		"torch libuv": false, "step 1 0 5": false, "": false} {
		if got := isNoLibuv([]byte(in)); got != want {
			t.Errorf("isNoLibuv(%q) = %v, want %v", in, got, want)
		}
	}
}

// Workers get Python's faulthandler (their stacks in the rank log when they
// die of a signal they raised), unless the user set PYTHONFAULTHANDLER,
// to anything (even empty, which turns it off).
func TestFaultHandlerUnlessTheUserSetIt(t *testing.T) {
	tests := []struct {
		name string
		user *string // nil: unset
		want string
	}{
		{"default", nil, "1"},
		{"user turned it off", ptr(""), ""},
		{"user set it", ptr("1"), "1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PYTHONFAULTHANDLER", "") // restored after the test
			if tt.user == nil {
				os.Unsetenv("PYTHONFAULTHANDLER")
			} else {
				os.Setenv("PYTHONFAULTHANDLER", *tt.user)
			}
			for _, live := range []bool{false, true} {
				a := &Launcher{cfg: Config{RunID: "r", RunDir: t.TempDir(), Live: live}, ctl: &control{}}
				if got, ok := envMap(t, a.baseEnv())["PYTHONFAULTHANDLER"]; !ok || got != tt.want {
					t.Errorf("live=%v: PYTHONFAULTHANDLER=%q (set: %v), want %q", live, got, ok, tt.want)
				}
			}
		})
	}
}

func ptr(s string) *string { return &s }
