package wire

import "strconv"

// Heartbeats and their acks are most of a coordinator's traffic (10,000 a
// second at 10,000 agents): they skip encoding/json's reflection and its
// allocations, which otherwise set the pace of garbage collection. Only the
// shape bulsajo's agents send takes this path: known keys, in any order,
// each once, plain decimal numbers, no whitespace inside. Anything else
// goes through encoding/json, and FuzzFastHeartbeat checks that the two
// paths agree.

const heartbeatPrefix = `{"type":"heartbeat"`

// decodeHeartbeat parses {"type":"heartbeat"[,"seq":N][,"free_port":N]
// [,"heartbeat_ms":N]} with each key at most once and N a plain decimal;
// ok is false for anything else.
func decodeHeartbeat(line []byte) (m Msg, ok bool) {
	for len(line) > 0 {
		c := line[len(line)-1]
		if c != '\n' && c != '\r' && c != ' ' && c != '\t' {
			break
		}
		line = line[:len(line)-1]
	}
	if len(line) < len(heartbeatPrefix)+1 || string(line[:len(heartbeatPrefix)]) != heartbeatPrefix || line[len(line)-1] != '}' {
		return Msg{}, false
	}
	m.Type = THeartbeat
	rest := line[len(heartbeatPrefix) : len(line)-1]
	var seen [3]bool
	for len(rest) > 0 {
		if len(rest) < 2 || rest[0] != ',' || rest[1] != '"' {
			return Msg{}, false
		}
		rest = rest[2:]
		k := 0
		for k < len(rest) && rest[k] != '"' {
			k++
		}
		if k+1 >= len(rest) || rest[k+1] != ':' {
			return Msg{}, false
		}
		var i int
		switch string(rest[:k]) { // no allocation: only compared
		case "seq":
			i = 0
		case "free_port":
			i = 1
		case "heartbeat_ms":
			i = 2
		default:
			return Msg{}, false
		}
		if seen[i] {
			return Msg{}, false
		}
		seen[i] = true
		rest = rest[k+2:]
		var v int64
		d := 0
		for d < len(rest) && rest[d] >= '0' && rest[d] <= '9' {
			v = v*10 + int64(rest[d]-'0')
			d++
		}
		// JSON allows no leading zero; 18 digits cannot overflow an int64.
		if d == 0 || d > 18 || (d > 1 && rest[0] == '0') {
			return Msg{}, false
		}
		rest = rest[d:]
		switch i {
		case 0:
			m.Seq = uint64(v)
		case 1:
			m.FreePort = int(v)
		case 2:
			m.HeartbeatMS = int(v)
		}
	}
	return m, true
}

// AppendAck is Encode(Msg{Type: TAck, Seq: seq}), appended to b.
func AppendAck(b []byte, seq uint64) []byte {
	b = append(b, `{"type":"ack"`...)
	if seq != 0 {
		b = append(b, `,"seq":`...)
		b = strconv.AppendUint(b, seq, 10)
	}
	return append(b, "}\n"...)
}
