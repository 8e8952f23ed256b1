// Package kubernetes_test validates deploy/kubernetes without a cluster (none
// can be had here; the manifests have not been applied to one): every
// document decodes strictly into the k8s.io/api types, the cross-references
// hold, the bulsajo command lines parse with bulsajo's own flag parser, and
// the probes hit endpoints the binary serves.
package kubernetes_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/bulsajo/bulsajo/internal/cli"
	"github.com/bulsajo/bulsajo/internal/coordinator"
	"github.com/bulsajo/bulsajo/internal/health"
	"github.com/bulsajo/bulsajo/internal/store"
)

const dir = "../../deploy/kubernetes"

// manifests is the decoded set.
type manifests struct {
	secrets  map[string]*corev1.Secret
	services map[string]*corev1.Service
	pvcs     map[string]*corev1.PersistentVolumeClaim
	sts      map[string]*appsv1.StatefulSet
	jobs     map[string]*batchv1.Job
}

// pod is one pod template and what owns it.
type pod struct {
	owner  string // Kind/name
	labels map[string]string
	spec   *corev1.PodSpec
	claims []string // volumeClaimTemplates (StatefulSet)
	sts    *appsv1.StatefulSet
}

func (m *manifests) pods() []pod {
	var ps []pod
	for _, n := range sortedKeys(m.sts) {
		s := m.sts[n]
		var claims []string
		for _, c := range s.Spec.VolumeClaimTemplates {
			claims = append(claims, c.Name)
		}
		ps = append(ps, pod{"StatefulSet/" + n, s.Spec.Template.Labels, &s.Spec.Template.Spec, claims, s})
	}
	for _, n := range sortedKeys(m.jobs) {
		j := m.jobs[n]
		ps = append(ps, pod{"Job/" + n, j.Spec.Template.Labels, &j.Spec.Template.Spec, nil, nil})
	}
	return ps
}

func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// decode splits files into documents and decodes each strictly: an unknown
// or duplicated field is an error, as is a kind this test does not know.
func decode(files map[string][]byte) (*manifests, error) {
	m := &manifests{secrets: map[string]*corev1.Secret{}, services: map[string]*corev1.Service{},
		pvcs: map[string]*corev1.PersistentVolumeClaim{}, sts: map[string]*appsv1.StatefulSet{}, jobs: map[string]*batchv1.Job{}}
	for _, name := range sortedKeys(files) {
		for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(files[name]), -1) {
			if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(doc, "")) == "" {
				continue
			}
			where := fmt.Sprintf("%s document %d", name, i+1)
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				return nil, fmt.Errorf("%s: %v", where, err)
			}
			var obj interface{ GetName() string }
			switch tm.APIVersion + " " + tm.Kind {
			case "v1 Secret":
				obj = &corev1.Secret{}
			case "v1 Service":
				obj = &corev1.Service{}
			case "v1 PersistentVolumeClaim":
				obj = &corev1.PersistentVolumeClaim{}
			case "apps/v1 StatefulSet":
				obj = &appsv1.StatefulSet{}
			case "batch/v1 Job":
				obj = &batchv1.Job{}
			default:
				return nil, fmt.Errorf("%s: unexpected %q %q", where, tm.APIVersion, tm.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				return nil, fmt.Errorf("%s (%s): %v", where, tm.Kind, err)
			}
			if obj.GetName() == "" {
				return nil, fmt.Errorf("%s: %s without a name", where, tm.Kind)
			}
			switch o := obj.(type) {
			case *corev1.Secret:
				m.secrets[o.Name] = o
			case *corev1.Service:
				m.services[o.Name] = o
			case *corev1.PersistentVolumeClaim:
				m.pvcs[o.Name] = o
			case *appsv1.StatefulSet:
				m.sts[o.Name] = o
			case *batchv1.Job:
				m.jobs[o.Name] = o
			}
		}
	}
	return m, nil
}

func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// fieldSample is what the downward API would put in an env var.
var fieldSample = map[string]string{"spec.nodeName": "gpu-node-1", "status.podIP": "10.1.2.3", "metadata.name": "pod-0"}

// argv is a container's bulsajo command line with $(VAR) expanded from its
// env, or nil when the container does not run bulsajo.
func argv(c *corev1.Container) ([]string, error) {
	var args []string
	switch {
	case len(c.Command) > 0 && path.Base(c.Command[0]) == "bulsajo":
		args = append(slices.Clone(c.Command[1:]), c.Args...)
	case len(c.Command) == 0 && strings.HasPrefix(c.Image, "bulsajo:"):
		args = slices.Clone(c.Args)
	default:
		return nil, nil
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			v, ok := fieldSample[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				return nil, fmt.Errorf("env %s: fieldRef %q not known to this test", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			env[e.Name] = v
		default:
			env[e.Name] = e.Value
		}
	}
	var bad error
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for i, a := range args {
		args[i] = ref.ReplaceAllStringFunc(a, func(s string) string {
			name := s[2 : len(s)-1]
			v, ok := env[name]
			if !ok {
				bad = fmt.Errorf("argument %q: $(%s) is not in the container's env (Kubernetes would pass it literally)", a, name)
			}
			return v
		})
	}
	return args, bad
}

// flag is the value of --name in a parsed bulsajo command line.
func flag(args []string, name string) string {
	_, fs, err := cli.Check(args)
	if err != nil {
		return ""
	}
	if f := fs.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

func portOf(hostport string) int {
	i := strings.LastIndex(hostport, ":")
	p, _ := strconv.Atoi(hostport[i+1:])
	return p
}

// containerPort resolves a probe's or Service's port (a number or a name).
func containerPort(cs []corev1.Container, p intstr.IntOrString) (int, bool) {
	if p.Type == intstr.Int {
		return int(p.IntVal), true
	}
	for _, c := range cs {
		for _, cp := range c.Ports {
			if cp.Name == p.StrVal {
				return int(cp.ContainerPort), true
			}
		}
	}
	return 0, false
}

// check returns every problem found in m.
func check(m *manifests) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	pods := m.pods()
	var stopGrace time.Duration
	for _, p := range pods {
		for _, c := range p.spec.Containers {
			if a, _ := argv(&c); len(a) > 0 && a[0] == "submit" {
				stopGrace, _ = time.ParseDuration(flag(a, "stop-grace"))
			}
		}
	}
	for _, p := range pods {
		// Volumes and what they reference.
		vols := map[string]*corev1.Volume{}
		for i, v := range p.spec.Volumes {
			vols[v.Name] = &p.spec.Volumes[i]
			switch {
			case v.Secret != nil && m.secrets[v.Secret.SecretName] == nil:
				fail("%s: volume %s: no Secret %q", p.owner, v.Name, v.Secret.SecretName)
			case v.PersistentVolumeClaim != nil && m.pvcs[v.PersistentVolumeClaim.ClaimName] == nil:
				fail("%s: volume %s: no PersistentVolumeClaim %q", p.owner, v.Name, v.PersistentVolumeClaim.ClaimName)
			}
		}
		all := append(slices.Clone(p.spec.InitContainers), p.spec.Containers...)
		for _, c := range all {
			for _, vm := range c.VolumeMounts {
				if vols[vm.Name] == nil && !slices.Contains(p.claims, vm.Name) {
					fail("%s: container %s mounts %q, which is not a volume of the pod", p.owner, c.Name, vm.Name)
				}
			}
		}
		// mountOf is the volume mounted at the longest prefix of file.
		mountOf := func(c *corev1.Container, file string) (*corev1.Volume, string) {
			best := ""
			var vol *corev1.Volume
			for _, vm := range c.VolumeMounts {
				if strings.HasPrefix(file, strings.TrimSuffix(vm.MountPath, "/")+"/") && len(vm.MountPath) > len(best) {
					best, vol = vm.MountPath, vols[vm.Name]
				}
			}
			return vol, strings.TrimPrefix(strings.TrimPrefix(file, best), "/")
		}

		for ci := range p.spec.Containers {
			c := &p.spec.Containers[ci]
			args, err := argv(c)
			if err != nil {
				fail("%s: container %s: %v", p.owner, c.Name, err)
				continue
			}
			if args == nil {
				continue
			}
			sub, _, err := cli.Check(args)
			if err != nil {
				fail("%s: container %s: bulsajo %s: %v", p.owner, c.Name, strings.Join(args, " "), err)
				continue
			}
			// The token file is a key of the token Secret.
			if tf := flag(args, "token-file"); tf != "" {
				v, key := mountOf(c, tf)
				switch {
				case v == nil || v.Secret == nil:
					fail("%s: %s: --token-file %s is not on a Secret volume", p.owner, c.Name, tf)
				case m.secrets[v.Secret.SecretName] != nil:
					s := m.secrets[v.Secret.SecretName]
					if _, ok := s.StringData[key]; !ok {
						if _, ok := s.Data[key]; !ok {
							fail("%s: %s: --token-file %s: Secret %s has no key %q", p.owner, c.Name, tf, s.Name, key)
						}
					}
				}
			} else if sub != "coordinator" {
				fail("%s: %s: bulsajo %s without --token-file", p.owner, c.Name, sub)
			}
			// The coordinator address names a pod of the coordinator's StatefulSet
			// through its headless Service, on the port it listens on.
			if co := flag(args, "coordinator"); co != "" {
				checkCoordinatorAddr(m, p.owner+": "+c.Name, co, fail)
			}
			// Probes: liveness on /healthz, readiness on /readyz, on the port
			// the binary serves them on.
			var healthPorts []int
			switch sub {
			case "coordinator":
				healthPorts = append(healthPorts, portOf(flag(args, "listen")))
				if h := flag(args, "health-addr"); h != "" {
					healthPorts = append(healthPorts, portOf(h))
				}
			case "agent":
				if h := flag(args, "health-addr"); h != "" {
					healthPorts = append(healthPorts, portOf(h))
				}
			}
			for _, pr := range []struct {
				kind, path string
				probe      *corev1.Probe
			}{{"liveness", "/healthz", c.LivenessProbe}, {"readiness", "/readyz", c.ReadinessProbe}} {
				if sub != "coordinator" && sub != "agent" {
					continue
				}
				if pr.probe == nil || pr.probe.HTTPGet == nil {
					fail("%s: %s: no HTTP %s probe", p.owner, c.Name, pr.kind)
					continue
				}
				port, ok := containerPort([]corev1.Container{*c}, pr.probe.HTTPGet.Port)
				if !ok || !slices.Contains(healthPorts, port) {
					fail("%s: %s: %s probe on port %v, but bulsajo %s serves probes on %v", p.owner, c.Name, pr.kind, pr.probe.HTTPGet.Port.String(), sub, healthPorts)
				}
				if pr.probe.HTTPGet.Path != pr.path {
					fail("%s: %s: %s probe on %q, want %q", p.owner, c.Name, pr.kind, pr.probe.HTTPGet.Path, pr.path)
				} else if !servesProbe(sub, pr.path) {
					fail("%s: %s: bulsajo %s does not serve %s", p.owner, c.Name, sub, pr.path)
				}
			}
			if sub == "agent" {
				checkAgentPod(p, c, args, vols, stopGrace, mountOf, fail)
			}
			if sub == "submit" {
				if p.spec.RestartPolicy != corev1.RestartPolicyNever {
					fail("%s: submit must not be restarted in place (restartPolicy %q): a retry submits a second job", p.owner, p.spec.RestartPolicy)
				}
			}
		}
	}
	// Services select pods, and their named target ports exist there.
	for _, n := range sortedKeys(m.services) {
		svc := m.services[n]
		var sel []pod
		for _, p := range pods {
			if matches(svc.Spec.Selector, p.labels) {
				sel = append(sel, p)
			}
		}
		if len(sel) == 0 {
			fail("Service %s: selector %v matches no pod template", n, svc.Spec.Selector)
			continue
		}
		for _, sp := range svc.Spec.Ports {
			for _, p := range sel {
				if _, ok := containerPort(p.spec.Containers, sp.TargetPort); sp.TargetPort.String() != "0" && !ok {
					fail("Service %s: port %s targets %q, which %s does not expose", n, sp.Name, sp.TargetPort.String(), p.owner)
				}
			}
		}
	}
	for _, n := range sortedKeys(m.sts) {
		s := m.sts[n]
		if s.Spec.Selector == nil || !matches(s.Spec.Selector.MatchLabels, s.Spec.Template.Labels) {
			fail("StatefulSet %s: selector does not match its pod labels", n)
		}
		svc := m.services[s.Spec.ServiceName]
		switch {
		case svc == nil:
			fail("StatefulSet %s: serviceName %q is not a Service here", n, s.Spec.ServiceName)
		case svc.Spec.ClusterIP != corev1.ClusterIPNone:
			fail("StatefulSet %s: Service %s must be headless (clusterIP: None) for per-pod DNS", n, svc.Name)
		case !matches(svc.Spec.Selector, s.Spec.Template.Labels):
			fail("StatefulSet %s: its Service %s does not select its pods", n, svc.Name)
		}
	}
	for _, n := range sortedKeys(m.jobs) {
		if j := m.jobs[n]; j.Spec.BackoffLimit == nil || *j.Spec.BackoffLimit != 0 {
			fail("Job %s: backoffLimit must be 0 (a retried submit is a second job)", n)
		}
	}
	return errs
}

// checkCoordinatorAddr: host POD.SERVICE where POD is an ordinal of a
// StatefulSet governed by SERVICE, which selects coordinator pods and
// exposes the port they listen on.
func checkCoordinatorAddr(m *manifests, who, addr string, fail func(string, ...any)) {
	for _, a := range strings.Split(addr, ",") {
		host, port := a[:strings.LastIndex(a, ":")], portOf(a)
		parts := strings.Split(host, ".")
		if len(parts) < 2 {
			fail("%s: --coordinator %s: want POD.SERVICE[:...], the coordinator pod's stable DNS name", who, a)
			continue
		}
		podName, svcName := parts[0], parts[1]
		svc := m.services[svcName]
		if svc == nil {
			fail("%s: --coordinator %s: no Service %q", who, a, svcName)
			continue
		}
		var sts *appsv1.StatefulSet
		for _, s := range m.sts {
			if s.Spec.ServiceName == svcName {
				if i := strings.LastIndex(podName, "-"); i > 0 && podName[:i] == s.Name {
					if ord, err := strconv.Atoi(podName[i+1:]); err == nil && ord >= 0 && s.Spec.Replicas != nil && ord < int(*s.Spec.Replicas) {
						sts = s
					}
				}
			}
		}
		if sts == nil {
			fail("%s: --coordinator %s: %q is no pod of a StatefulSet governed by Service %s", who, a, podName, svcName)
			continue
		}
		var listen int
		for _, c := range sts.Spec.Template.Spec.Containers {
			if args, _ := argv(&c); len(args) > 0 && args[0] == "coordinator" {
				listen = portOf(flag(args, "listen"))
			}
		}
		if listen == 0 {
			fail("%s: --coordinator %s: StatefulSet %s runs no bulsajo coordinator", who, a, sts.Name)
			continue
		}
		if port != listen {
			fail("%s: --coordinator %s: the coordinator listens on %d", who, a, listen)
		}
		found := false
		for _, sp := range svc.Spec.Ports {
			tp, ok := containerPort(sts.Spec.Template.Spec.Containers, sp.TargetPort)
			found = found || (int(sp.Port) == port && ok && tp == listen)
		}
		if !found {
			fail("%s: --coordinator %s: Service %s has no port %d to the coordinator's %d", who, a, svcName, port, listen)
		}
	}
}

func checkAgentPod(p pod, c *corev1.Container, args []string, vols map[string]*corev1.Volume, stopGrace time.Duration,
	mountOf func(*corev1.Container, string) (*corev1.Volume, string), fail func(string, ...any)) {
	if q, ok := c.Resources.Limits["nvidia.com/gpu"]; !ok || q.Value() < 1 {
		fail("%s: agent without a GPU limit", p.owner)
	} else if n, _ := strconv.Atoi(flag(args, "nproc-per-node")); int64(n) != q.Value() {
		fail("%s: --nproc-per-node %d but %d GPUs", p.owner, n, q.Value())
	}
	// One agent per node.
	anti := false
	if a := p.spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		for _, t := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
			anti = anti || (t.TopologyKey == "kubernetes.io/hostname" && t.LabelSelector != nil && matches(t.LabelSelector.MatchLabels, p.labels))
		}
	}
	if !anti {
		fail("%s: agents need required pod anti-affinity on kubernetes.io/hostname selecting their own pods", p.owner)
	}
	// The node name comes from the downward API.
	ok := false
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			ok = ok || slices.Contains(append(slices.Clone(c.Command), c.Args...), "$("+e.Name+")")
		}
	}
	if !ok {
		fail("%s: --node-name must be the node's name from the downward API (spec.nodeName)", p.owner)
	}
	if v, rest := mountOf(c, "/dev/shm/x"); v == nil || v.EmptyDir == nil || v.EmptyDir.Medium != corev1.StorageMediumMemory || rest != "x" {
		fail("%s: /dev/shm must be an in-memory emptyDir (the default 64 MiB breaks NCCL and DataLoader workers)", p.owner)
	}
	if g := p.spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= stopGrace {
		fail("%s: terminationGracePeriodSeconds must exceed the job's --stop-grace (%s) so workers can checkpoint", p.owner, stopGrace)
	}
	// The binary comes from the init container, through a shared volume.
	if len(c.Command) == 0 {
		fail("%s: the agent runs the user's image: its command must be the copied binary", p.owner)
		return
	}
	v, _ := mountOf(c, c.Command[0])
	copied := false
	for _, ic := range p.spec.InitContainers {
		if len(ic.Command) == 3 && ic.Command[0] == "cp" && ic.Command[2] == c.Command[0] {
			if iv, _ := mountOf(&ic, ic.Command[2]); iv != nil && v != nil && iv.Name == v.Name && iv.EmptyDir != nil {
				copied = true
			}
		}
	}
	if !copied {
		fail("%s: no init container copies the binary to %s on a shared emptyDir", p.owner, c.Command[0])
	}
	if strings.HasPrefix(c.Image, "bulsajo:") {
		fail("%s: the agent should run the user's training image, not bulsajo's", p.owner)
	}
}

// servesProbe asks the real handlers whether they serve path.
func servesProbe(sub, path string) bool {
	var h http.Handler
	switch sub {
	case "coordinator":
		srv, err := coordinator.New(coordinator.Config{Token: "probe-check-token-0123456789", Store: store.NewMemory(), DataDir: os.TempDir()})
		if err != nil {
			return false
		}
		defer srv.Close()
		h = srv.Handler()
	default:
		h = health.Handler(func(context.Context) error { return nil })
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code == http.StatusOK
}

func readAll(t *testing.T) map[string][]byte {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no manifests in %s: %v", dir, err)
	}
	files := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(n)] = b
	}
	return files
}

func TestManifests(t *testing.T) {
	m, err := decode(readAll(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []struct {
		what string
		n    int
	}{{"Secret", len(m.secrets)}, {"StatefulSet", len(m.sts)}, {"Job", len(m.jobs)}, {"Service", len(m.services)}} {
		if kind.n == 0 {
			t.Errorf("no %s in %s", kind.what, dir)
		}
	}
	for _, err := range check(m) {
		t.Error(err)
	}
}

// Each mutation of the manifests must be caught: the checks can fail.
func TestManifestChecksCatchMistakes(t *testing.T) {
	tests := []struct {
		name, file, old, new, want string
	}{
		{"unknown field", "30-agents.yaml", "  podManagementPolicy: Parallel", "  podManagementPolicy: Parallel\n  replica: 3", "unknown field"},
		{"typo in a bulsajo flag", "30-agents.yaml", "- --advertise-addr", "- --advertise-address", "unknown flag"},
		{"agent points at a Service that is not the coordinator's", "30-agents.yaml", "- bulsajo-coordinator-0.bulsajo-coordinator:7070", "- bulsajo-coordinator-0.bulsajo-agent:7070", "no pod of a StatefulSet"},
		{"wrong coordinator port", "40-submit-job.yaml", "- bulsajo-coordinator-0.bulsajo-coordinator:7070", "- bulsajo-coordinator-0.bulsajo-coordinator:7077", "listens on 7070"},
		{"pod beyond the replicas", "30-agents.yaml", "- bulsajo-coordinator-0.bulsajo-coordinator:7070", "- bulsajo-coordinator-1.bulsajo-coordinator:7070", "no pod of a StatefulSet"},
		{"Service selects nothing", "10-coordinator.yaml", "    app.kubernetes.io/component: coordinator\n  ports:", "    app.kubernetes.io/component: coordinatr\n  ports:", "matches no pod template"},
		{"missing Secret", "40-submit-job.yaml", "secretName: bulsajo-token", "secretName: bulsajo-tokens", "no Secret"},
		{"token file not a key", "30-agents.yaml", "- /var/run/bulsajo/token/token", "- /var/run/bulsajo/token/join.token", "has no key"},
		{"readiness on the wrong path", "30-agents.yaml", "path: /readyz", "path: /ready", "want \"/readyz\""},
		{"probe on a port the agent does not serve", "30-agents.yaml", "- 0.0.0.0:7071", "- 0.0.0.0:7072", "serves probes on"},
		{"env var not defined", "30-agents.yaml", "- $(POD_IP)", "- $(POD_ADDR)", "not in the container's env"},
		{"no /dev/shm in memory", "30-agents.yaml", "            medium: Memory\n", "            sizeLimit: 1Gi\n", "/dev/shm"},
		{"grace shorter than the stop grace", "30-agents.yaml", "terminationGracePeriodSeconds: 180", "terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds"},
		{"no GPU", "30-agents.yaml", "nvidia.com/gpu: 8", "example.com/fpga: 8", "GPU limit"},
		{"bad nnodes", "40-submit-job.yaml", `- "2:3"`, `- "3:2"`, "--nnodes"},
		{"missing volume", "30-agents.yaml", "        - name: dshm\n          emptyDir:", "        - name: shm\n          emptyDir:", "not a volume of the pod"},
		{"retried submit", "40-submit-job.yaml", "backoffLimit: 0", "backoffLimit: 2", "backoffLimit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := readAll(t)
			b := files[tt.file]
			if !bytes.Contains(b, []byte(tt.old)) {
				t.Fatalf("%s does not contain %q: update this test", tt.file, tt.old)
			}
			files[tt.file] = bytes.Replace(b, []byte(tt.old), []byte(tt.new), 1)
			var got []string
			m, err := decode(files)
			if err != nil {
				got = append(got, err.Error())
			} else {
				for _, e := range check(m) {
					got = append(got, e.Error())
				}
			}
			for _, g := range got {
				if strings.Contains(g, tt.want) {
					return
				}
			}
			t.Errorf("mutation not caught: want an error containing %q, got %q", tt.want, got)
		})
	}
}
