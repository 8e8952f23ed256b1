package coordinator_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/coordinator"
	"github.com/bulsajo/bulsajo/internal/wire"
)

// serve runs one request through h.
func serve(h http.Handler, method, path string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testToken)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// endJob cancels the coordinator's job, if one runs, and waits for it to
// end (Server.Close hangs while a job runs; a new submit needs it done).
func endJob(t testing.TB, srv *coordinator.Server, h http.Handler) {
	t.Helper()
	st := srv.Status()
	if st.Job == nil || st.Job.State == "done" {
		return
	}
	serve(h, "POST", "/v1/jobs/current/cancel", nil)
	for deadline := time.Now().Add(wait); ; time.Sleep(time.Millisecond) {
		if st := srv.Status(); st.Job.State == "done" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job did not end after a cancel: %+v", srv.Status().Job)
		}
	}
}

// FuzzSubmitBody: any bytes as a submit body are answered 201, 400 or 409,
// never anything else and never a panic; refusals are one line of JSON.
func FuzzSubmitBody(f *testing.F) {
	for _, s := range []string{
		`{"id":"j","command":["python","train.py"],"nnodes_min":1,"nnodes_max":2,"nproc_per_node":8}`,
		`{"id":"j2","command":["x"],"nnodes_min":2,"nnodes_max":2,"nproc_per_node":1,"recovery":"live","max_restarts":3,"progress_regex":"step (\\d+)"}`,
		`{"id":"j3","command":["x"],"nnodes_min":1,"nnodes_max":1,"nproc_per_node":1,"hang_timeout_ms":1,"hang_floor_ms":1,"stop_grace_ms":1,"exit_grace_ms":1,"crash_loop_limit":1,"standby":true,"no_replace":true,"dir":"/tmp"}`,
		`{"id":"j","command":["x"],"nnodes_min":1,"nnodes_max":1,"nproc_per_node":1}{"id":"k"}`,
		`{"id":"../x","command":["x"],"nnodes_min":1,"nnodes_max":1,"nproc_per_node":1}`,
		`{"id":"j","command":[""],"nnodes_min":0,"nnodes_max":-1,"nproc_per_node":1}`,
		`{"id":"j","command":["x"],"nnodes_min":1,"nnodes_max":1,"nproc_per_node":1,"progress_regex":"("}`,
		`{"id":"j","command":["x"],"nnodes_min":1e400,"nnodes_max":1,"nproc_per_node":1}`,
		`{"id":"j","command":null,"unknown":1}`,
		`{"id":"\u0000","command":["\ud800"]}`,
		`null`, `[]`, `""`, `{}`, ``, `{`, `{"id":`, "\xff\xfe",
	} {
		f.Add([]byte(s))
	}
	c := newCoord(f)
	h := c.srv.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := serve(h, "POST", "/v1/jobs", body)
		switch rec.Code {
		case http.StatusCreated:
			endJob(t, c.srv, h)
		case http.StatusBadRequest, http.StatusConflict:
			b := rec.Body.Bytes()
			var e struct{ Error string }
			if bytes.IndexByte(b, '\n') != len(b)-1 || json.Unmarshal(b, &e) != nil || e.Error == "" {
				t.Fatalf("%d refusal is not one line of JSON with an error: %q", rec.Code, b)
			}
		default:
			t.Fatalf("submit %q: %d %s", body, rec.Code, rec.Body.Bytes())
		}
		if rec := serve(h, "GET", "/v1/status", nil); rec.Code != 200 {
			t.Fatalf("status: %d", rec.Code)
		}
	})
}

// FuzzAgentStream: after a valid upgrade and hello, any bytes on the
// connection leave the coordinator running: the session either goes on (a
// heartbeat sent after them is acknowledged) or ends, nothing panics (in a
// handler, where net/http would hide it, or elsewhere), and status answers.
// A job is kept running on the fuzzing node, and the agent says hello with
// the generation it holds, so that well-formed messages reach the job's
// logic too: $J and $G in the input stand for the job and generation.
func FuzzAgentStream(f *testing.F) {
	lines := []string{
		`{"type":"heartbeat","seq":1,"free_port":29501}`,
		`{"type":"launched","job":"$J","gen":$G}`,
		`{"type":"progress","job":"$J","gen":$G,"rank":0,"step":5}`,
		`{"type":"exited","job":"$J","gen":$G,"rank":0,"code":1,"err":"boom","at_ms":1}`,
		`{"type":"exited","job":"$J","gen":$G,"rank":0,"code":0}`,
		`{"type":"exited","job":"$J","gen":$G,"rank":7,"sig":"SIGKILL"}`,
		`{"type":"stopped","job":"$J","gen":$G}`,
		`{"type":"fenced","reason":"lease expired"}`,
		`{"type":"collective_failed","job":"$J","gen":$G,"rank":0,"err":"nccl"}`,
		`{"type":"joiner_ready","job":"$J"}`,
		`{"type":"joiner_lost","job":"$J"}`,
		`{"type":"hello","name":"fz","nproc":1,"addr":"h"}`,
		`{"type":"ack","seq":1}`,
		`{"type":"heartbeat","seq":1,"free_port":70000}`,
		`{"type":"heartbeat"`,
		`{"type":"heartbeat","seq":1}}`,
		"\x00\xff garbage",
	}
	for _, l := range lines {
		f.Add([]byte(l + "\n"))
	}
	f.Add([]byte(lines[1] + "\n" + lines[2] + "\n" + lines[3] + "\n" + lines[6] + "\n"))
	f.Add([]byte(lines[1] + "\n" + lines[4] + "\n"))
	f.Add([]byte(""))
	f.Add([]byte(strings.Repeat("\n", 100)))

	c := newCoord(f, func(cfg *coordinator.Config) { cfg.QuarantineAfter = 1 << 30 })
	h := c.srv.Handler()
	var execs, jobs atomic.Int64
	submit := func(t *testing.T) {
		st := c.srv.Status()
		if st.Job != nil && st.Job.State != "done" {
			return
		}
		id := fmt.Sprintf("fz-%d", jobs.Add(1)-1)
		b, _ := json.Marshal(coordinator.JobSpec{ID: id, Command: []string{"x"}, NNodesMin: 1, NNodesMax: 1, NProcPerNode: 1,
			MaxRestarts: 1000, CrashLoopLimit: 1000, HangTimeoutMS: 600000})
		if rec := serve(h, "POST", "/v1/jobs", b); rec.Code != http.StatusCreated {
			t.Fatalf("submit %s: %d %s", id, rec.Code, rec.Body.Bytes())
		}
	}
	f.Cleanup(func() { endJob(f, c.srv, h) })

	f.Fuzz(func(t *testing.T, data []byte) {
		n := execs.Add(1)
		submit(t)
		o := agentOpts{instance: "fz-1", addr: "10.0.0.1", port: 31001, silent: true}
		job, gen := "none", 1
		if st := c.srv.Status(); st.Job != nil {
			job, gen = st.Job.ID, max(st.Job.Gen, 1)
			if nd, _ := nodeOf(st, "fz"); len(nd.Ranks) > 0 && st.Job.Gen > 0 {
				o.current = &wire.NodeState{Job: job, Gen: gen, Running: nd.Ranks}
			}
		}
		a := connect(t, c, "fz", o)
		data = bytes.ReplaceAll(bytes.ReplaceAll(data, []byte("$J"), []byte(job)), []byte("$G"), []byte(fmt.Sprint(gen)))
		// Then a heartbeat on a line of its own: its ack says the coordinator
		// has read everything before it.
		if len(data) > 0 && data[len(data)-1] != '\n' {
			data = append(data, '\n')
		}
		seq := uint64(1<<62) + uint64(n)
		hb, _ := wire.Encode(wire.Msg{Type: wire.THeartbeat, Seq: seq})
		a.sendRaw(append(data, hb...))
		deadline := time.After(wait)
	loop:
		for {
			got, ended, _, changed := a.snapshot()
			for _, r := range got {
				if r.m.Type == wire.TAck && r.m.Seq == seq {
					break loop
				}
			}
			if ended {
				break
			}
			select {
			case <-changed:
			case <-deadline:
				t.Fatalf("after %q the session neither acknowledged a heartbeat nor ended:%s", data, a.dump())
			}
		}
		a.close()
		if log := c.httpLog.String(); strings.Contains(log, "panic") {
			t.Fatalf("after %q the coordinator panicked:\n%s", data, firstLines(log, 30))
		}
		rec := serve(h, "GET", "/v1/status", nil)
		var st coordinator.Status
		if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &st) != nil {
			t.Fatalf("status after %q: %d %s", data, rec.Code, rec.Body.Bytes())
		}
	})
}
