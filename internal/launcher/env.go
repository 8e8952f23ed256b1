package launcher

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// GenerationSpec is this node's part of a generation: which global ranks its
// local slots hold and where the group meets.
type GenerationSpec struct {
	Gen            int
	RestartCount   int
	WorldSize      int
	Ranks          []int // global rank of local slot i
	GroupRank      int   // this node's index among the nodes
	GroupWorldSize int   // number of nodes
	MasterAddr     string
	MasterPort     int
}

// baseEnv is the environment every worker process starts with, standby or
// not: the caller's environment plus what is the same in every generation.
// OMP_NUM_THREADS must be here, not in the activation: torch reads it at
// import, and a standby has imported torch before it is activated.
func (a *Launcher) baseEnv() []string {
	env := os.Environ()
	set := map[string]string{
		"PYTHONUNBUFFERED":          "1", // torchrun runs `python -u`
		"BULSAJO_RUN_ID":            a.cfg.RunID,
		"BULSAJO_RUN_DIR":           a.cfg.RunDir,
		"BULSAJO_AGENT_SOCK":        a.progressAddr,
		"BULSAJO_AGENT_CTL":         a.ctl.addr,
		"TORCHELASTIC_RUN_ID":       a.cfg.RunID,
		"TORCHELASTIC_MAX_RESTARTS": strconv.Itoa(a.cfg.MaxRestarts),
		// Rank 0 hosts the rendezvous store itself (torchrun hosts it in its
		// agent process, the single point of failure bulsajo avoids).
		"TORCHELASTIC_USE_AGENT_STORE": "False",
	}
	if !a.cfg.Live {
		// torchrun's setting: NCCL's watchdog kills a process whose
		// collective failed (in live mode that process is a survivor: the
		// SDK sets its own). Both names: torch 2.x's torchrun sets
		// TORCH_NCCL_ASYNC_ERROR_HANDLING, 1.13's the old name (2.x reads it
		// when the new one is unset). A value the user set under either name
		// is kept, and given to the other name too.
		v := "1"
		names := []string{"TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING"}
		for _, k := range names {
			if u, ok := os.LookupEnv(k); ok {
				v = u
				break
			}
		}
		for _, k := range names {
			if _, ok := os.LookupEnv(k); !ok {
				set[k] = v
			}
		}
	}
	if a.cfg.Live {
		set["BULSAJO_RECOVERY"] = "live"
	}
	if _, ok := os.LookupEnv("PYTHONFAULTHANDLER"); !ok {
		// A worker killed by a signal it raised itself (a C++ exception
		// inside torch ending in abort, a segfault) leaves every thread's
		// Python stack in its rank log: nothing else says where it was.
		set["PYTHONFAULTHANDLER"] = "1"
	}
	for k, v := range a.cfg.Env {
		if os.Getenv(k) == "" {
			set[k] = v
		}
	}
	if os.Getenv("OMP_NUM_THREADS") == "" {
		set["OMP_NUM_THREADS"] = "1"
	}
	if a.cfg.SDKDir != "" {
		pp := a.cfg.SDKDir
		if old := os.Getenv("PYTHONPATH"); old != "" {
			pp += string(os.PathListSeparator) + old
		}
		set["PYTHONPATH"] = pp
	}
	return mergeEnv(env, set)
}

// rankEnv is what differs per rank and generation: torchrun's variables.
func (a *Launcher) rankEnv(spec GenerationSpec, slot int) map[string]string {
	rank := spec.Ranks[slot]
	return map[string]string{
		"RANK":                       strconv.Itoa(rank),
		"LOCAL_RANK":                 strconv.Itoa(slot),
		"WORLD_SIZE":                 strconv.Itoa(spec.WorldSize),
		"LOCAL_WORLD_SIZE":           strconv.Itoa(len(spec.Ranks)),
		"GROUP_RANK":                 strconv.Itoa(spec.GroupRank),
		"GROUP_WORLD_SIZE":           strconv.Itoa(spec.GroupWorldSize),
		"ROLE_NAME":                  "default",
		"ROLE_RANK":                  strconv.Itoa(rank),
		"ROLE_WORLD_SIZE":            strconv.Itoa(spec.WorldSize),
		"MASTER_ADDR":                spec.MasterAddr,
		"MASTER_PORT":                strconv.Itoa(spec.MasterPort),
		"TORCHELASTIC_RESTART_COUNT": strconv.Itoa(spec.RestartCount),
		"TORCHELASTIC_ERROR_FILE":    a.errorFile(spec.Gen, rank),
		"BULSAJO_GENERATION":         strconv.Itoa(spec.Gen),
	}
}

func (a *Launcher) errorFile(gen, rank int) string {
	return filepath.Join(a.cfg.RunDir, "errors", "gen"+strconv.Itoa(gen), "rank"+strconv.Itoa(rank)+".json")
}

// mergeEnv returns env with the keys of set replaced or added.
func mergeEnv(env []string, set map[string]string) []string {
	out := make([]string, 0, len(env)+len(set))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := set[k]; !ok {
			out = append(out, kv)
		}
	}
	for k, v := range set {
		out = append(out, k+"="+v)
	}
	return out
}

var pythonName = regexp.MustCompile(`^python[0-9.]*$`)

// shimArgs returns the command that starts cmd through the standby shim, or
// nil when cmd cannot be (not `python SCRIPT ...` or `python -m MOD ...`).
// The shim imports torch ahead of time and then runs the script exactly as
// `python SCRIPT` would.
func shimArgs(cmd []string, sdkDir string) []string {
	if sdkDir == "" || len(cmd) < 2 || !pythonName.MatchString(filepath.Base(cmd[0])) {
		return nil
	}
	if strings.HasPrefix(cmd[1], "-") && !(cmd[1] == "-m" && len(cmd) >= 3) {
		return nil // interpreter options we would have to reproduce
	}
	shim := filepath.Join(sdkDir, "bulsajo", "_standby.py")
	return append([]string{cmd[0], shim}, cmd[1:]...)
}
