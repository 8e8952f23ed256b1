// Package slurm_test runs examples/slurm/bulsajo.sbatch on a real Slurm
// (Debian's slurmctld/slurmd 22.05) started on this machine: one slurmctld
// and one `slurmd -N nI` per node, each slurmd in its own PID namespace so
// that SIGKILL of it takes every process of that node with it, as a dead
// host would. auth/none and no cgroups: a test cluster only. Needs root;
// these tests do not skip (make test installs Slurm).
package slurm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var bulsajoBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bulsajo-slurm-bin")
	if err != nil {
		panic(err)
	}
	bulsajoBin = filepath.Join(dir, "bulsajo")
	cmd := exec.Command("go", "build", "-o", bulsajoBin, "./cmd/bulsajo")
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building bulsajo: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cluster is a Slurm controller and its nodes on this machine.
type cluster struct {
	t      *testing.T
	dir    string
	conf   string
	ctld   *exec.Cmd
	nodes  map[string]*exec.Cmd // unshare processes
	nNodes int
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// freeRange finds n consecutive free ports.
func freeRange(t *testing.T, n int) int {
	for try := 0; try < 50; try++ {
		// Below the ephemeral range (32768-): no process binding port 0
		// (etcd, gloo, torch's store) can take these meanwhile.
		base := 20000 + (os.Getpid()*7+try*97)%12000
		ok := true
		var ls []net.Listener
		for i := 0; i < n && ok; i++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, l)
		}
		for _, l := range ls {
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free port range")
	return 0
}

func need(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the Slurm tests run slurmctld/slurmd and namespaces: they need root")
	}
	for _, bin := range []string{"slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "scancel", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: run scripts/deps.sh (apt-get install slurmctld slurmd slurm-client)", bin)
		}
	}
}

// startCluster starts slurmctld and n slurmd (n1..nN) and waits until every
// node is idle.
func startCluster(t *testing.T, n int) *cluster {
	need(t)
	dir, err := os.MkdirTemp("", "bulsajo-slurm-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	for _, d := range []string{"state", "spool"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	ctldPort := freeRange(t, n+1)
	base := ctldPort + 1
	conf := fmt.Sprintf(`ClusterName=bulsajotest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=%d
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
# A requeued job may start again once the job credentials of its last run
# have expired (default 120 s): short here, for the requeue scenario.
AuthInfo=cred_expire=5
StateSaveLocation=%[2]s/state
SlurmdSpoolDir=%[2]s/spool/%%n
SlurmctldPidFile=%[2]s/slurmctld.pid
SlurmdPidFile=%[2]s/slurmd.%%n.pid
SlurmctldLogFile=%[2]s/slurmctld.log
SlurmdLogFile=%[2]s/slurmd.%%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=10
MessageTimeout=5
KillWait=30
MinJobAge=300
SchedulerParameters=sched_interval=1
NodeName=n[1-%[3]d] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[%[4]d-%[5]d] CPUs=1 RealMemory=500 State=UNKNOWN
PartitionName=test Nodes=n[1-%[3]d] Default=YES MaxTime=INFINITE State=UP
`, ctldPort, dir, n, base, base+n-1)
	c := &cluster{t: t, dir: dir, conf: filepath.Join(dir, "slurm.conf"), nodes: map[string]*exec.Cmd{}, nNodes: n}
	if err := os.WriteFile(c.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stop)
	c.ctld = c.daemon("slurmctld", "-D", "-i")
	for i := 1; i <= n; i++ {
		c.startNode(fmt.Sprintf("n%d", i))
	}
	c.waitFor(60*time.Second, "every node idle", func() bool { return c.idle() == n })
	return c
}

func (c *cluster) env() []string { return append(os.Environ(), "SLURM_CONF="+c.conf) }

func (c *cluster) daemon(args ...string) *exec.Cmd {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = c.env()
	log, _ := os.Create(filepath.Join(c.dir, filepath.Base(args[0])+"-"+strconv.Itoa(len(c.nodes))+".stderr"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("%v: %v", args, err)
	}
	return cmd
}

// startNode runs slurmd -N name as PID 1 of its own PID namespace.
func (c *cluster) startNode(name string) {
	c.nodes[name] = c.daemon("unshare", "-p", "-f", "-m", "--mount-proc", "--propagation", "private", "slurmd", "-D", "-N", name)
}

// killNode SIGKILLs the node's slurmd, the init of its PID namespace: the
// kernel kills every process of the node with it.
func (c *cluster) killNode(name string) {
	u := c.nodes[name]
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", u.Process.Pid, u.Process.Pid))
	if err != nil || len(strings.Fields(string(b))) == 0 {
		c.t.Fatalf("node %s: no slurmd under unshare %d: %v", name, u.Process.Pid, err)
	}
	pid, _ := strconv.Atoi(strings.Fields(string(b))[0])
	syscall.Kill(pid, syscall.SIGKILL)
	u.Wait()
	delete(c.nodes, name)
	c.t.Logf("killed node %s (slurmd pid %d and its namespace)", name, pid)
}

func (c *cluster) stop() {
	c.run("scancel", "--full", "--user=root")
	time.Sleep(500 * time.Millisecond)
	for name := range c.nodes {
		c.killNode(name)
	}
	if c.ctld != nil && c.ctld.Process != nil {
		c.ctld.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.ctld.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.ctld.Process.Kill()
			<-done
		}
	}
	if c.t.Failed() {
		for _, f := range []string{"slurmctld.log"} {
			b, _ := os.ReadFile(filepath.Join(c.dir, f))
			c.t.Logf("%s (tail):\n%s", f, tail(string(b), 3000))
		}
	}
	os.RemoveAll(c.dir)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// run runs a Slurm client command and returns its output.
func (c *cluster) run(args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = c.env()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (c *cluster) must(args ...string) string {
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return out
}

func (c *cluster) idle() int {
	out, err := c.run("sinfo", "-h", "-t", "idle", "-o", "%D")
	if err != nil {
		return 0
	}
	total := 0
	for _, f := range strings.Fields(out) {
		n, _ := strconv.Atoi(f)
		total += n
	}
	return total
}

func (c *cluster) waitFor(d time.Duration, what string, cond func() bool) {
	c.t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if cond() {
			return
		}
	}
	c.t.Fatalf("timed out after %s waiting for %s", d, what)
}

// job is one sbatch submission of examples/slurm/bulsajo.sbatch.
type job struct {
	c              *cluster
	id             string
	runDir, output string
	ckpt           string
	port           int
}

// submit runs the example sbatch script with the training job.
func (c *cluster) submit(nodes, spares int, env map[string]string, trainArgs ...string) *job {
	c.t.Helper()
	j := &job{c: c, port: freeRange(c.t, 1)}
	j.runDir = filepath.Join(c.dir, "run")
	j.ckpt = filepath.Join(j.runDir, "ckpt")
	os.MkdirAll(j.ckpt, 0o755)
	j.output = filepath.Join(c.dir, "job.out")
	script, _ := filepath.Abs("../../examples/slurm/bulsajo.sbatch")
	train, _ := filepath.Abs("../../examples/slurm/train.py")
	args := []string{"sbatch", "--parsable", "--nodes", strconv.Itoa(nodes), "--output", j.output, script,
		"/usr/bin/python3", train, "--ckpt-dir", j.ckpt}
	args = append(args, trainArgs...)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(c.env(), "RUN_DIR="+j.runDir, "BULSAJO="+bulsajoBin, "BULSAJO_SPARES="+strconv.Itoa(spares),
		"BULSAJO_PORT="+strconv.Itoa(j.port), "BULSAJO_STOP_GRACE=20s", "BULSAJO_REQUEUE_AFTER=8s", "OMP_NUM_THREADS=1",
		// 2 cores shared with other work: a slow step is not a hang here.
		"BULSAJO_SUBMIT_ARGS=--hang-floor 20s")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("sbatch: %v\n%s", err, out)
	}
	j.id = strings.TrimSpace(strings.Split(string(out), ";")[0])
	c.t.Logf("job %s submitted", j.id)
	c.t.Cleanup(func() {
		if c.t.Failed() {
			c.t.Logf("job output:\n%s", tail(j.out(), 16000))
		}
	})
	return j
}

// out is the job's output: the batch script's, then every agent's log.
func (j *job) out() string {
	b, _ := os.ReadFile(j.output)
	logs, _ := filepath.Glob(filepath.Join(j.runDir, "logs", "*", "agent-*.out"))
	for _, l := range logs {
		a, _ := os.ReadFile(l)
		b = append(append(b, "==> "+l+"\n"...), a...)
	}
	return string(b)
}

// field is KEY from `scontrol show job -o`.
func (j *job) field(key string) string {
	out, _ := j.c.run("scontrol", "show", "job", "-o", j.id)
	m := regexp.MustCompile(`(?:^|\s)` + key + `=(\S*)`).FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return m[1]
}

func (j *job) waitOut(d time.Duration, re string) string {
	j.c.t.Helper()
	rx := regexp.MustCompile(re)
	var m []string
	j.c.waitFor(d, fmt.Sprintf("job output to match %q", re), func() bool {
		m = rx.FindStringSubmatch(j.out())
		return m != nil
	})
	return m[0]
}

func (j *job) waitState(d time.Duration, states ...string) string {
	j.c.t.Helper()
	var st string
	j.c.waitFor(d, fmt.Sprintf("job %s in state %v", j.id, states), func() bool {
		st = j.field("JobState")
		for _, s := range states {
			if st == s {
				return true
			}
		}
		return false
	})
	return st
}

// orphans lists live processes whose command line mentions dir.
func orphans(dir string) []string {
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		if st, _ := os.ReadFile("/proc/" + e.Name() + "/stat"); bytes.Contains(st, []byte(") Z ")) {
			continue // a zombie holds nothing
		}
		found = append(found, fmt.Sprintf("%d: %s", pid, bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
	}
	return found
}

// status is `bulsajo status --json` from the job's coordinator.
type status struct {
	Nodes []struct {
		Name        string `json:"name"`
		State       string `json:"state"`
		Ranks       []int  `json:"ranks"`
		Quarantined bool   `json:"quarantined"`
		Slurm       string `json:"slurm"`
	} `json:"nodes"`
	Slurm *struct {
		JobID        string `json:"job_id"`
		NodeList     string `json:"node_list"`
		RestartCount int    `json:"restart_count"`
	} `json:"slurm"`
}

func (j *job) status() (status, string) {
	j.c.t.Helper()
	cmd := exec.Command(bulsajoBin, "status", "--coordinator", fmt.Sprintf("127.0.0.1:%d", j.port))
	text, _ := cmd.CombinedOutput()
	cmd = exec.Command(bulsajoBin, "status", "--json", "--coordinator", fmt.Sprintf("127.0.0.1:%d", j.port))
	out, err := cmd.Output()
	if err != nil {
		j.c.t.Fatalf("bulsajo status: %v\n%s", err, out)
	}
	var st status
	if err := json.Unmarshal(out, &st); err != nil {
		j.c.t.Fatalf("bulsajo status --json: %v\n%s", err, out)
	}
	return st, string(text)
}

// trainingNode is a node holding ranks that is not the batch host.
func (j *job) trainingNode() string {
	j.c.t.Helper()
	batch := j.field("BatchHost")
	st, text := j.status()
	for _, n := range st.Nodes {
		if len(n.Ranks) > 0 && n.Name != batch {
			return n.Name
		}
	}
	j.c.t.Fatalf("no training node other than the batch host %s:\n%s", batch, text)
	return ""
}
