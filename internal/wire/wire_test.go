package wire

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// Real messages of every type, as a peer sends them; also the fuzz seeds.
var validLines = map[string]string{
	"hello":          `{"type":"hello","name":"node-1","version":"0.3.0","nproc":8,"addr":"10.0.0.7","instance":"a1b2","free_port":29500}`,
	"hello spare":    `{"type":"hello","name":"n2.rack_a","nproc":1,"spare":true,"addr":"gpu2.example.com"}`,
	"hello current":  `{"type":"hello","name":"node-1","nproc":2,"addr":"10.0.0.7","current":{"job":"job1","gen":3,"running":[0,1],"step":120}}`,
	"hello exited":   `{"type":"hello","name":"node-1","nproc":2,"addr":"10.0.0.7","current":{"job":"job1","gen":3,"running":[1],"exited":[{"type":"exited","job":"job1","gen":3,"rank":0,"code":-1,"sig":"SIGKILL","err":"oom","at_ms":1700000000000}],"stopped":false,"step":7}}`,
	"hello stopped":  `{"type":"hello","name":"node-1","nproc":2,"addr":"10.0.0.7","current":{"job":"job1","gen":3,"running":[],"stopped":true,"step":0}}`,
	"heartbeat":      `{"type":"heartbeat","seq":42,"free_port":40000}`,
	"heartbeat bare": `{"type":"heartbeat"}`,
	"ack":            `{"type":"ack","seq":42}`,
	"ack timing":     `{"type":"ack","seq":43,"lease_ms":6500,"heartbeat_ms":1000}`,
	"heartbeat on":   `{"type":"heartbeat","seq":44,"free_port":40000,"heartbeat_ms":1000}`,
	"welcome":        `{"type":"welcome","lease_ms":10000,"heartbeat_ms":2000}`,
	"welcome min":    `{"type":"welcome","lease_ms":100,"heartbeat_ms":10}`,
	"launched":       `{"type":"launched","job":"job1","gen":1,"at_ms":1700000000000}`,
	"exited":         `{"type":"exited","job":"job1","gen":1,"rank":3,"code":1,"err":"Traceback ...","at_ms":1700000000000}`,
	"exited signal":  `{"type":"exited","job":"job1","gen":1,"rank":0,"code":-9,"sig":"SIGKILL"}`,
	"progress":       `{"type":"progress","job":"job1","gen":2,"rank":0,"step":1500,"at_ms":1700000000000}`,
	"stopped":        `{"type":"stopped","job":"job1","gen":2}`,
	"fenced":         `{"type":"fenced","job":"job1","gen":2,"reason":"lease expired"}`,
	"start":          `{"type":"start","job":"job1","gen":1,"spec":{"run_id":"run-7","command":["python","train.py","--lr","3e-4"],"dir":"/work","max_restarts":3,"progress_regex":"step (\\d+)","stop_grace_ms":5000,"restart_count":0,"world_size":4,"ranks":[2,3],"group_rank":1,"group_world_size":2,"master_addr":"10.0.0.7","master_port":29500}}`,
	"start standby":  `{"type":"start","job":"job1","gen":4,"spec":{"run_id":"r","command":["sleep"],"max_restarts":0,"standby":true,"restart_count":2,"world_size":1,"ranks":[0],"group_rank":0,"group_world_size":1,"master_addr":"h","master_port":1}}`,
	"stop":           `{"type":"stop","job":"job1","gen":1,"grace_ms":3000}`,
	"signal":         `{"type":"signal","job":"job1","gen":1,"rank":2,"sig":"SIGTERM"}`,
	"end":            `{"type":"end","job":"job1"}`,
	"reject":         `{"type":"reject","reason":"node name node-1 already connected"}`,
	"whitespace":     " \t{\"type\":\"ack\"}\r\n ",
	"gpu drain":      `{"type":"gpu_health","job":"job1","gen":2,"gpu":3,"uuid":"GPU-5f1c","class":"drain","reason":"XID 79 (GPU fell off the bus)"}`,
	"gpu warn idle":  `{"type":"gpu_health","class":"warn","reason":"PCIe link width x8 of x16"}`,
	"gpu all":        `{"type":"gpu_health","gpu":-1,"class":"drain","reason":"NVML event wait: Unknown Error"}`,
	"work":           `{"type":"work","job":"job1","gen":2,"rank":5,"steps":31,"work_us":612000,"wall_us":1003000}`,
	"proc stopped":   `{"type":"proc_stopped","job":"job1","gen":2,"stopped_ranks":[0,3]}`,
	"none stopped":   `{"type":"proc_stopped","job":"job1","gen":2}`,
	"probe":          `{"type":"probe","job":"job1","gen":2}`,
	"busy":           `{"type":"busy","job":"job1","gen":2,"busy_ranks":[1,3]}`,
	"busy stopped":   `{"type":"busy","job":"job1","gen":2,"stopped_ranks":[0]}`,
	"none busy":      `{"type":"busy","job":"job1","gen":2}`,
}

func TestDecodeValid(t *testing.T) {
	for name, line := range validLines {
		t.Run(name, func(t *testing.T) {
			m, err := Decode([]byte(line))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			b, err := Encode(m)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if !bytes.HasSuffix(b, []byte("\n")) || bytes.Count(b, []byte("\n")) != 1 {
				t.Fatalf("Encode: not one line: %q", b)
			}
			m2, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode(Encode): %v", err)
			}
			if !reflect.DeepEqual(m, m2) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", m2, m)
			}
		})
	}
}

func TestDecodeFields(t *testing.T) {
	m, err := Decode([]byte(validLines["hello exited"]))
	if err != nil {
		t.Fatal(err)
	}
	want := Msg{Type: THello, Name: "node-1", NProc: 2, Addr: "10.0.0.7", Current: &NodeState{
		Job: "job1", Gen: 3, Running: []int{1}, Step: 7,
		Exited: []Msg{{Type: TExited, Job: "job1", Gen: 3, Rank: 0, Code: -1, Sig: "SIGKILL", Err: "oom", AtMS: 1700000000000}},
	}}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got %+v\nwant %+v", m, want)
	}
	m, err = Decode([]byte(validLines["start"]))
	if err != nil {
		t.Fatal(err)
	}
	if s := m.Spec; s == nil || s.RunID != "run-7" || !reflect.DeepEqual(s.Command, []string{"python", "train.py", "--lr", "3e-4"}) ||
		!reflect.DeepEqual(s.Ranks, []int{2, 3}) || s.ProgressRegex != `step (\d+)` || s.MasterPort != 29500 {
		t.Fatalf("spec: %+v", m.Spec)
	}
}

// spec returns a start message whose spec has field set to the raw JSON value.
func spec(field, value string) string {
	fields := []string{
		`"run_id":"r1"`, `"command":["python","t.py"]`, `"max_restarts":1`, `"restart_count":0`,
		`"world_size":4`, `"ranks":[0,1]`, `"group_rank":0`, `"group_world_size":2`,
		`"master_addr":"10.0.0.1"`, `"master_port":29500`,
	}
	set := false
	for i, f := range fields {
		if strings.HasPrefix(f, `"`+field+`":`) {
			fields[i] = `"` + field + `":` + value
			set = true
		}
	}
	if !set {
		fields = append(fields, `"`+field+`":`+value)
	}
	return `{"type":"start","job":"j","gen":1,"spec":{` + strings.Join(fields, ",") + `}}`
}

// hello returns a hello message with the given current state (raw JSON).
func hello(current string) string {
	return `{"type":"hello","name":"n1","nproc":1,"addr":"h","current":` + current + `}`
}

func TestDecodeInvalid(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name string
		line string
		want error
	}{
		// framing
		{"empty", ``, ErrInvalid},
		{"blank", "  \t", ErrInvalid},
		{"not json", `hello`, ErrInvalid},
		{"null", `null`, ErrInvalid},
		{"array", `[{"type":"ack"}]`, ErrInvalid},
		{"string", `"ack"`, ErrInvalid},
		{"truncated", `{"type":"ack"`, ErrInvalid},
		{"trailing object", `{"type":"ack"} {"type":"ack"}`, ErrInvalid},
		{"trailing garbage", `{"type":"ack"}x`, ErrInvalid},
		{"trailing brace", `{"type":"ack"}}`, ErrInvalid},
		{"trailing bracket", `{"type":"ack"}]`, ErrInvalid},
		{"trailing vertical tab", "{\"type\":\"ack\"}\v", ErrInvalid},
		{"oversize", `{"type":"reject","reason":"` + strings.Repeat("x", MaxMessage) + `"}`, ErrTooLarge},
		{"oversize whitespace", `{"type":"ack"}` + strings.Repeat(" ", MaxMessage), ErrTooLarge},
		// type
		{"missing type", `{"seq":1}`, ErrInvalid},
		{"gpu bad class", `{"type":"gpu_health","class":"evict","reason":"x"}`, ErrInvalid},
		{"work no steps", `{"type":"work","job":"j","gen":1,"rank":0,"wall_us":10}`, ErrInvalid},
		{"work no wall", `{"type":"work","job":"j","gen":1,"rank":0,"steps":3}`, ErrInvalid},
		{"work negative", `{"type":"work","job":"j","gen":1,"rank":0,"steps":3,"work_us":-1,"wall_us":10}`, ErrInvalid},
		{"work no job", `{"type":"work","gen":1,"rank":0,"steps":3,"wall_us":10}`, ErrInvalid},
		{"stopped twice", `{"type":"proc_stopped","job":"j","gen":1,"stopped_ranks":[2,2]}`, ErrInvalid},
		{"stopped negative", `{"type":"proc_stopped","job":"j","gen":1,"stopped_ranks":[-1]}`, ErrInvalid},
		{"stopped no gen", `{"type":"proc_stopped","job":"j","stopped_ranks":[1]}`, ErrInvalid},
		{"busy twice", `{"type":"busy","job":"j","gen":1,"busy_ranks":[2,2]}`, ErrInvalid},
		{"busy negative", `{"type":"busy","job":"j","gen":1,"busy_ranks":[-1]}`, ErrInvalid},
		{"busy no job", `{"type":"busy","gen":1,"busy_ranks":[1]}`, ErrInvalid},
		{"probe no gen", `{"type":"probe","job":"j"}`, ErrInvalid},
		{"work absurd", `{"type":"work","job":"j","gen":1,"rank":0,"steps":3,"wall_us":10000000000000}`, ErrInvalid},
		{"gpu no reason", `{"type":"gpu_health","class":"drain"}`, ErrInvalid},
		{"gpu index", `{"type":"gpu_health","class":"drain","gpu":-2,"reason":"x"}`, ErrInvalid},
		{"gpu index high", `{"type":"gpu_health","class":"drain","gpu":1024,"reason":"x"}`, ErrInvalid},
		{"gpu long reason", `{"type":"gpu_health","class":"warn","reason":"` + strings.Repeat("x", 1025) + `"}`, ErrInvalid},
		{"gpu bad job", `{"type":"gpu_health","class":"warn","job":"a b","reason":"x"}`, ErrInvalid},
		{"empty type", `{"type":""}`, ErrInvalid},
		{"unknown type", `{"type":"launch"}`, ErrInvalid},
		{"type not string", `{"type":1}`, ErrInvalid},
		// fields
		{"unknown field", `{"type":"ack","seq":1,"bogus":true}`, ErrInvalid},
		{"unknown spec field", spec("bogus", `1`), ErrInvalid},
		{"unknown current field", hello(`{"job":"j","gen":1,"running":[],"bogus":1}`), ErrInvalid},
		{"wrong field type", `{"type":"ack","seq":"1"}`, ErrInvalid},
		{"negative seq", `{"type":"ack","seq":-1}`, ErrInvalid},
		{"fractional gen", `{"type":"stopped","job":"j","gen":1.5}`, ErrInvalid},
		{"int overflow", `{"type":"stopped","job":"j","gen":1e400}`, ErrInvalid},
		// hello
		{"hello no name", `{"type":"hello","nproc":1,"addr":"h"}`, ErrInvalid},
		{"hello name slash", `{"type":"hello","name":"a/b","nproc":1,"addr":"h"}`, ErrInvalid},
		{"hello name dot first", `{"type":"hello","name":".a","nproc":1,"addr":"h"}`, ErrInvalid},
		{"hello name space", `{"type":"hello","name":"a b","nproc":1,"addr":"h"}`, ErrInvalid},
		{"hello name newline", `{"type":"hello","name":"a\n","nproc":1,"addr":"h"}`, ErrInvalid},
		{"hello name unicode", `{"type":"hello","name":"nöde","nproc":1,"addr":"h"}`, ErrInvalid},
		{"hello name too long", `{"type":"hello","name":"` + long + `","nproc":1,"addr":"h"}`, ErrInvalid},
		{"hello nproc 0", `{"type":"hello","name":"n","addr":"h"}`, ErrInvalid},
		{"hello nproc big", `{"type":"hello","name":"n","nproc":1025,"addr":"h"}`, ErrInvalid},
		{"hello no addr", `{"type":"hello","name":"n","nproc":1}`, ErrInvalid},
		{"hello long addr", `{"type":"hello","name":"n","nproc":1,"addr":"` + strings.Repeat("h", 256) + `"}`, ErrInvalid},
		{"current bad job", hello(`{"job":"","gen":1,"running":[]}`), ErrInvalid},
		{"current gen 0", hello(`{"job":"j","gen":0,"running":[]}`), ErrInvalid},
		{"current negative rank", hello(`{"job":"j","gen":1,"running":[-1]}`), ErrInvalid},
		{"current duplicate rank", hello(`{"job":"j","gen":1,"running":[0,1,0]}`), ErrInvalid},
		{"current exited wrong type", hello(`{"job":"j","gen":1,"running":[],"exited":[{"type":"progress","job":"j","gen":1}]}`), ErrInvalid},
		{"current exited invalid", hello(`{"job":"j","gen":1,"running":[],"exited":[{"type":"exited","job":"j","gen":0}]}`), ErrInvalid},
		{"current exited bad sig", hello(`{"job":"j","gen":1,"running":[],"exited":[{"type":"exited","job":"j","gen":1,"sig":"KILL"}]}`), ErrInvalid},
		{"current exited nested state", hello(`{"job":"j","gen":1,"running":[],"exited":[{"type":"exited","job":"j","gen":1,"current":{"job":"","gen":0,"running":[],"exited":[{"type":"bogus"}]}}]}`), ErrInvalid},
		{"current exited nested spec", hello(`{"job":"j","gen":1,"running":[],"exited":[{"type":"exited","job":"j","gen":1,"spec":{}}]}`), ErrInvalid},
		{"current too many running", hello(`{"job":"j","gen":1,"running":[` + strings.TrimSuffix(strings.Repeat("0,", 1025), ",") + `]}`), ErrInvalid},
		// heartbeat, ack
		{"heartbeat port negative", `{"type":"heartbeat","free_port":-1}`, ErrInvalid},
		{"ack port too big", `{"type":"ack","free_port":65536}`, ErrInvalid},
		// welcome
		{"welcome heartbeat = lease", `{"type":"welcome","lease_ms":1000,"heartbeat_ms":1000}`, ErrInvalid},
		{"welcome heartbeat > lease", `{"type":"welcome","lease_ms":1000,"heartbeat_ms":5000}`, ErrInvalid},
		{"welcome lease short", `{"type":"welcome","lease_ms":99,"heartbeat_ms":10}`, ErrInvalid},
		{"welcome heartbeat short", `{"type":"welcome","lease_ms":1000,"heartbeat_ms":9}`, ErrInvalid},
		{"welcome empty", `{"type":"welcome"}`, ErrInvalid},
		{"welcome heartbeat over 10 min", `{"type":"welcome","lease_ms":3600000,"heartbeat_ms":600001}`, ErrInvalid},
		// a timing change on an ack: both, and as a welcome's
		{"ack heartbeat without lease", `{"type":"ack","seq":1,"heartbeat_ms":1000}`, ErrInvalid},
		{"ack lease without heartbeat", `{"type":"ack","seq":1,"lease_ms":5000}`, ErrInvalid},
		{"ack heartbeat = lease", `{"type":"ack","seq":1,"lease_ms":1000,"heartbeat_ms":1000}`, ErrInvalid},
		{"ack lease short", `{"type":"ack","seq":1,"lease_ms":50,"heartbeat_ms":10}`, ErrInvalid},
		{"ack negative heartbeat", `{"type":"ack","seq":1,"lease_ms":5000,"heartbeat_ms":-1}`, ErrInvalid},
		{"ack heartbeat as string", `{"type":"ack","seq":1,"lease_ms":5000,"heartbeat_ms":"1000"}`, ErrInvalid},
		// the interval a heartbeat says it is on
		{"heartbeat negative interval", `{"type":"heartbeat","seq":1,"heartbeat_ms":-250}`, ErrInvalid},
		{"heartbeat interval over 10 min", `{"type":"heartbeat","seq":1,"heartbeat_ms":600001}`, ErrInvalid},
		{"heartbeat with a lease", `{"type":"heartbeat","seq":1,"heartbeat_ms":250,"lease_ms":5000}`, ErrInvalid},
		// job messages
		{"launched no job", `{"type":"launched","gen":1}`, ErrInvalid},
		{"launched gen 0", `{"type":"launched","job":"j"}`, ErrInvalid},
		{"stopped bad job", `{"type":"stopped","job":"j/../x","gen":1}`, ErrInvalid},
		{"stop negative grace", `{"type":"stop","job":"j","gen":1,"grace_ms":-1}`, ErrInvalid},
		{"end no job", `{"type":"end"}`, ErrInvalid},
		{"exited negative rank", `{"type":"exited","job":"j","gen":1,"rank":-1}`, ErrInvalid},
		{"exited no gen", `{"type":"exited","job":"j","rank":0}`, ErrInvalid},
		{"progress negative step", `{"type":"progress","job":"j","gen":1,"step":-5}`, ErrInvalid},
		{"exited lowercase sig", `{"type":"exited","job":"j","gen":1,"sig":"sigkill"}`, ErrInvalid},
		{"exited number sig", `{"type":"exited","job":"j","gen":1,"sig":"9"}`, ErrInvalid},
		{"signal no sig", `{"type":"signal","job":"j","gen":1,"rank":0}`, ErrInvalid},
		{"signal short sig", `{"type":"signal","job":"j","gen":1,"sig":"SIG"}`, ErrInvalid},
		{"signal long sig", `{"type":"signal","job":"j","gen":1,"sig":"SIGABCDEFGHI"}`, ErrInvalid},
		{"signal sig newline", `{"type":"signal","job":"j","gen":1,"sig":"SIGKILL\n"}`, ErrInvalid},
		{"fenced no reason", `{"type":"fenced","job":"j","gen":1}`, ErrInvalid},
		{"reject no reason", `{"type":"reject"}`, ErrInvalid},
		// start
		{"start no spec", `{"type":"start","job":"j","gen":1}`, ErrInvalid},
		{"start null spec", `{"type":"start","job":"j","gen":1,"spec":null}`, ErrInvalid},
		{"start no job", strings.Replace(spec("x", "1"), `"job":"j",`, "", 1), ErrInvalid},
		{"start bad run id", spec("run_id", `"-r"`), ErrInvalid},
		{"start no command", spec("command", `[]`), ErrInvalid},
		{"start null command", spec("command", `null`), ErrInvalid},
		{"start empty argv0", spec("command", `["","x"]`), ErrInvalid},
		{"start world 0", spec("world_size", `0`), ErrInvalid},
		{"start no ranks", spec("ranks", `[]`), ErrInvalid},
		{"start more ranks than world", spec("ranks", `[0,1,2,3,4]`), ErrInvalid},
		{"start negative rank", spec("ranks", `[-1,0]`), ErrInvalid},
		{"start rank = world", spec("ranks", `[0,4]`), ErrInvalid},
		{"start duplicate ranks", spec("ranks", `[1,1]`), ErrInvalid},
		{"start group rank = group world", spec("group_rank", `2`), ErrInvalid},
		{"start negative group rank", spec("group_rank", `-1`), ErrInvalid},
		{"start group world 0", spec("group_world_size", `0`), ErrInvalid},
		{"start no master", spec("master_addr", `""`), ErrInvalid},
		{"start port 0", spec("master_port", `0`), ErrInvalid},
		{"start port big", spec("master_port", `65536`), ErrInvalid},
		{"start negative restarts", spec("max_restarts", `-1`), ErrInvalid},
		{"start negative restart count", spec("restart_count", `-1`), ErrInvalid},
		{"start negative grace", spec("stop_grace_ms", `-1`), ErrInvalid},
		{"start bad regex", spec("progress_regex", `"step (\\d+"`), ErrInvalid},
		{"start bad regex repeat", spec("progress_regex", `"a{2000}"`), ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Decode([]byte(tt.line))
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode(%.200q) = %+v, %v; want %v", tt.line, m, err, tt.want)
			}
			if !reflect.DeepEqual(m, Msg{}) && tt.want == ErrTooLarge {
				t.Fatalf("oversize line decoded to %+v", m)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
}

func TestDecodeValidSpecBase(t *testing.T) {
	// The base of the start cases above is itself valid, so each case fails
	// for the one field it changes.
	if _, err := Decode([]byte(spec("progress_regex", `"loss=([0-9.]+)"`))); err != nil {
		t.Fatal(err)
	}
	if _, err := Decode([]byte(hello(`{"job":"j","gen":1,"running":[3,0,1]}`))); err != nil {
		t.Fatal(err)
	}
}

func TestEncode(t *testing.T) {
	if _, err := Encode(Msg{Type: "bogus"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Encode(unknown type) = %v, want ErrInvalid", err)
	}
	if _, err := Encode(Msg{Type: TWelcome, LeaseMS: 100, HeartbeatMS: 100}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Encode(bad welcome) = %v, want ErrInvalid", err)
	}
	// '<' is escaped to six bytes: a reason that fits when decoded may not
	// fit once encoded, and Encode must refuse it rather than send it.
	big := Msg{Type: TReject, Reason: strings.Repeat("<", MaxMessage/2)}
	if _, err := Encode(big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Encode(oversize) = %v, want ErrTooLarge", err)
	}
	b, err := Encode(Msg{Type: TAck, Seq: 7})
	if err != nil || string(b) != `{"type":"ack","seq":7}`+"\n" {
		t.Fatalf("Encode(ack) = %q, %v", b, err)
	}
}

func TestReader(t *testing.T) {
	var stream bytes.Buffer
	want := []string{"hello", "heartbeat", "start", "exited", "reject"}
	for _, k := range want {
		stream.WriteString(validLines[k] + "\n")
	}
	stream.WriteString(validLines["ack"] + "\r\n") // CRLF is tolerated
	stream.WriteString(validLines["end"])          // last line without newline
	want = append(want, "ack", "end")
	r := NewReader(&stream)
	for _, k := range want {
		m, err := r.Read()
		if err != nil {
			t.Fatalf("Read %s: %v", k, err)
		}
		exp, _ := Decode([]byte(validLines[k]))
		if !reflect.DeepEqual(m, exp) {
			t.Fatalf("Read %s: got %+v", k, m)
		}
	}
	for range 2 {
		if _, err := r.Read(); err != io.EOF {
			t.Fatalf("Read at end = %v, want io.EOF", err)
		}
	}
}

func TestReaderInvalid(t *testing.T) {
	r := NewReader(strings.NewReader(validLines["ack"] + "\n" + `{"type":"nope"}` + "\n"))
	if _, err := r.Read(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Read = %v, want ErrInvalid", err)
	}
}

func TestReaderLimit(t *testing.T) {
	// A line of exactly MaxMessage bytes is accepted, one byte more is not.
	pad := func(n int) string {
		head := `{"type":"reject","reason":"`
		return head + strings.Repeat("x", n-len(head)-2) + `"}`
	}
	for _, tt := range []struct {
		name string
		line string
		want error
	}{
		{"max", pad(MaxMessage), nil},
		{"max+1", pad(MaxMessage + 1), ErrTooLarge},
		{"max+2", pad(MaxMessage + 2), ErrTooLarge},
	} {
		for _, nl := range []string{"\n", ""} {
			t.Run(tt.name+map[string]string{"\n": " newline", "": " eof"}[nl], func(t *testing.T) {
				stream := tt.line // at the end of the stream
				if nl != "" {
					stream += nl + validLines["ack"] + "\n"
				}
				r := NewReader(strings.NewReader(stream))
				_, err := r.Read()
				if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
					t.Fatalf("Read = %v, want %v", err, tt.want)
				}
				if err == nil && nl != "" {
					if m, err := r.Read(); err != nil || m.Type != TAck {
						t.Fatalf("Read after a maximal line = %+v, %v", m, err)
					}
				}
			})
		}
	}
}

// endless is a stream that never ends and never sends a newline.
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	e.n += int64(len(p))
	return len(p), nil
}

func TestReaderOversizeBounded(t *testing.T) {
	src := &endless{}
	r := NewReader(io.MultiReader(strings.NewReader(validLines["ack"]+"\n"), src))
	if _, err := r.Read(); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := r.Read()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Read = %v, want ErrTooLarge", err)
	}
	if src.n > 2*MaxMessage {
		t.Fatalf("read %d bytes of an oversize line, want at most %d", src.n, 2*MaxMessage)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8*MaxMessage {
		t.Fatalf("allocated %d bytes for an oversize line", alloc)
	}
	// The stream is not trusted after that.
	if _, err := r.Read(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Read after oversize = %v, want ErrTooLarge", err)
	}
}

func TestValidName(t *testing.T) {
	for _, tt := range []struct {
		s    string
		want bool
	}{
		{"a", true}, {"node-1", true}, {"gpu_2.rack.a", true}, {"A9", true},
		{strings.Repeat("a", 63), true}, {strings.Repeat("a", 64), false},
		{"", false}, {"-a", false}, {"_a", false}, {".", false}, {"..", false},
		{"a/b", false}, {"a b", false}, {"a\x00", false}, {"é", false}, {"a\n", false},
	} {
		if got := ValidName(tt.s); got != tt.want {
			t.Errorf("ValidName(%q) = %v, want %v", tt.s, got, tt.want)
		}
	}
}
