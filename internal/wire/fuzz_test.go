package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
)

func addSeeds(f *testing.F) {
	for _, line := range validLines {
		f.Add([]byte(line))
	}
	for _, line := range []string{
		``, `{}`, `null`, `{"type":"ack"}}`, `{"type":"ack"} {"type":"ack"}`,
		`{"type":"hello","name":"n","nproc":1,"addr":"h","current":{"job":"j","gen":1,"running":[0,0]}}`,
		`{"type":"welcome","lease_ms":100,"heartbeat_ms":100}`,
		`{"type":"ack","seq":1,"lease_ms":100,"heartbeat_ms":99}`, `{"type":"ack","heartbeat_ms":10}`,
		`{"type":"heartbeat","seq":2,"heartbeat_ms":600000}`, `{"type":"heartbeat","heartbeat_ms":-1,"lease_ms":0}`,
		`{"type":"start","job":"j","gen":1,"spec":{"run_id":"r","command":["x"],"world_size":2,"ranks":[1,1],"group_world_size":1,"master_addr":"h","master_port":1}}`,
		`{"type":"reject","reason":"<\u2028\ufffd>"}`,
		"{\"type\":\"reject\",\"reason\":\"\xff\xfe\"}",
		`{"Type":"ACK","SEQ":1}`,
	} {
		f.Add([]byte(line))
	}
}

// canonical is m as generic JSON, so that fields omitempty drops (an empty
// slice against nil) compare equal.
func canonical(t *testing.T, m Msg) any {
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	return v
}

// FuzzDecode: Decode never panics, errors are ErrInvalid or ErrTooLarge, and
// whatever decodes re-encodes to a line that decodes to the same message.
func FuzzDecode(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := Decode(line)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Decode error %v wraps neither ErrInvalid nor ErrTooLarge", err)
			}
			return
		}
		b, err := Encode(m)
		if err != nil {
			t.Fatalf("decoded %+v but Encode: %v", m, err)
		}
		if bytes.IndexByte(b, '\n') != len(b)-1 {
			t.Fatalf("Encode is not one line: %q", b)
		}
		m2, err := Decode(b[:len(b)-1])
		if err != nil {
			t.Fatalf("Decode(Encode(%q)) = %v (encoded %q)", line, err, b)
		}
		if !reflect.DeepEqual(canonical(t, m), canonical(t, m2)) {
			t.Fatalf("round trip changed the message:\n in  %q\n out %q", line, b)
		}
		// From then on encoding is a fixed point.
		b2, err := Encode(m2)
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("second Encode = %q, %v; want %q", b2, err, b)
		}
		if !reflect.DeepEqual(m2, mustDecode(t, b2)) {
			t.Fatalf("second round trip changed the message: %q", b2)
		}
	})
}

func mustDecode(t *testing.T, b []byte) Msg {
	m, err := Decode(b)
	if err != nil {
		t.Fatalf("Decode(%q): %v", b, err)
	}
	return m
}

// FuzzReader: any byte stream read to its end never panics and ends.
func FuzzReader(f *testing.F) {
	var all []byte
	for _, line := range validLines {
		f.Add([]byte(line + "\n"))
		all = append(all, line+"\n"...)
	}
	f.Add(all)
	f.Add([]byte("\n\n\r\n"))
	f.Add([]byte(validLines["ack"] + "\r\n{\"type\":\"bogus\"}\n" + validLines["end"]))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data))
		// Each Read consumes at least one line: never more reads than lines.
		limit := bytes.Count(data, []byte("\n")) + 2
		for i := 0; ; i++ {
			if i > limit {
				t.Fatalf("Read did not end after %d calls", i)
			}
			m, err := r.Read()
			switch {
			case err == io.EOF:
				return
			case errors.Is(err, ErrTooLarge):
				return
			case errors.Is(err, ErrInvalid):
				continue
			case err != nil:
				t.Fatalf("Read: unexpected error %v", err)
			}
			if err := m.Validate(); err != nil {
				t.Fatalf("Read returned an invalid message %+v: %v", m, err)
			}
			if _, err := Encode(m); err != nil {
				t.Fatalf("Read returned %+v that does not encode: %v", m, err)
			}
		}
	})
}

// FuzzFastPath: whatever the fast path accepts, encoding/json decodes to
// the same message with the same verdict.
func FuzzFastPath(f *testing.F) {
	addSeeds(f)
	for _, line := range []string{
		`{"type":"heartbeat","seq":1,"free_port":20001,"heartbeat_ms":1000}`,
		`{"type":"heartbeat","heartbeat_ms":250,"seq":18446744073709551615}`,
		`{"type":"heartbeat","seq":01}`, `{"type":"heartbeat","seq":1,"seq":2}`,
		`{"type":"heartbeat","free_port":70000}`, `{"type":"heartbeat"}` + "\r\n",
		`{"type":"heartbeat","seq":-1}`, `{"type":"heartbeat","seq":1.5}`, `{"type":"heartbeat","Seq":1}`,
		`{"type":"launched","job":"train-1","gen":3}`, `{"type":"stopped","job":"j","gen":12}`,
		`{"type":"progress","job":"j","gen":2,"rank":7,"step":1500}`, `{"type":"stopped","job":"","gen":1}`,
		`{"type":"launched","job":"a\\u0041","gen":1}`, `{"type":"launched","job":"\xff","gen":1}`,
		`{"type":"stopped","job":"j","gen":1,"at_ms":1733140000000}`, `{"type":"launchedx","gen":1}`,
		`{"type":"stopped","job":"j","gen":1,"job":"k"}`, `{"type":"progress","job":"j","gen":1,"rank":-1}`,
		`{"type":"ack","seq":3,"heartbeat_ms":2000,"lease_ms":10000}`, `{"type":"stop","job":"j","gen":4,"grace_ms":3000}`,
		`{"type":"ack","seq":3,"lease_ms":0}`, `{"type":"stop","job":"j"}`,
	} {
		f.Add([]byte(line))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		fast, ok := decodeFast(line)
		if !ok {
			return
		}
		slow, err := decodeJSON(line)
		ferr := fast.Validate()
		if (err == nil) != (ferr == nil) {
			t.Fatalf("%q: encoding/json says %v, the fast path %v", line, err, ferr)
		}
		if err == nil && !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: encoding/json %+v, the fast path %+v", line, slow, fast)
		}
	})
}

func TestAppendAckIsEncode(t *testing.T) {
	for _, seq := range []uint64{0, 1, 42, 1<<64 - 1} {
		want, err := Encode(Msg{Type: TAck, Seq: seq})
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendAck(nil, seq); !bytes.Equal(got, want) {
			t.Errorf("seq %d: AppendAck %q, Encode %q", seq, got, want)
		}
	}
}

// The messages agents send most take the fast path (else it saves nothing).
func TestFastPathTakesAgentMessages(t *testing.T) {
	for _, m := range []Msg{
		{Type: THeartbeat, Seq: 9, FreePort: 20001, HeartbeatMS: 1000},
		{Type: TLaunched, Job: "train-1", Gen: 3},
		{Type: TStopped, Job: "train-1", Gen: 3},
		{Type: TProgress, Job: "train-1", Gen: 3, Rank: 5, Step: 1200},
		{Type: TAck, Seq: 9},
		{Type: TAck, Seq: 10, HeartbeatMS: 2000, LeaseMS: 10000},
		{Type: TStop, Job: "train-1", Gen: 3, Grace: 3000},
	} {
		b, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := decodeFast(b)
		if !ok || !reflect.DeepEqual(got, m) {
			t.Errorf("%s: fast path ok=%v %+v, want %+v", b, ok, got, m)
		}
	}
}
