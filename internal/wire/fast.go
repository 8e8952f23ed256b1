package wire

import "strconv"

// Heartbeats and their acks are most of a coordinator's traffic (10,000 a
// second at 10,000 agents), and a generation change brings a stop to every
// agent and one launched and one stopped from each: these skip encoding/json's reflection and
// its allocations, which otherwise cost the coordinator of 10,000 agents
// about a tenth of a second of each loss and set the pace of its garbage
// collection (and cost every agent a little). Only the flat
// shape bulsajo's agents send takes this path: the type first, then known
// keys, each once, plain decimal numbers, printable ASCII strings without
// escapes, no whitespace inside. Anything else goes through encoding/json,
// and FuzzFastPath checks that the two paths agree.

// fastTypes are the message types the fast path decodes.
var fastTypes = [...]string{THeartbeat, TAck, TLaunched, TStopped, TProgress, TStop}

// The keys the fast path knows, in the order of seen's slots.
const (
	keySeq = iota
	keyFreePort
	keyHeartbeatMS
	keyJob
	keyGen
	keyRank
	keyStep
	keyAtMS
	keyLeaseMS
	keyGraceMS
	nKeys
)

// decodeFast parses {"type":T[,"key":value]...} for T in fastTypes; ok is
// false for anything it does not handle.
func decodeFast(line []byte) (m Msg, ok bool) {
	for len(line) > 0 {
		c := line[len(line)-1]
		if c != '\n' && c != '\r' && c != ' ' && c != '\t' {
			break
		}
		line = line[:len(line)-1]
	}
	const typePrefix = `{"type":"`
	if len(line) < len(typePrefix)+2 || string(line[:len(typePrefix)]) != typePrefix || line[len(line)-1] != '}' {
		return Msg{}, false
	}
	rest := line[len(typePrefix) : len(line)-1]
	for _, t := range fastTypes {
		if len(rest) > len(t) && string(rest[:len(t)]) == t && rest[len(t)] == '"' {
			m.Type = t
			rest = rest[len(t)+1:]
			break
		}
	}
	if m.Type == "" {
		return Msg{}, false
	}
	var seen [nKeys]bool
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
		i := -1
		switch string(rest[:k]) { // no allocation: only compared
		case "seq":
			i = keySeq
		case "free_port":
			i = keyFreePort
		case "heartbeat_ms":
			i = keyHeartbeatMS
		case "job":
			i = keyJob
		case "gen":
			i = keyGen
		case "rank":
			i = keyRank
		case "step":
			i = keyStep
		case "at_ms":
			i = keyAtMS
		case "lease_ms":
			i = keyLeaseMS
		case "grace_ms":
			i = keyGraceMS
		}
		if i < 0 || seen[i] {
			return Msg{}, false
		}
		seen[i] = true
		rest = rest[k+2:]
		if i == keyJob {
			// A string of printable ASCII, no escapes: the bytes are the value.
			if len(rest) == 0 || rest[0] != '"' {
				return Msg{}, false
			}
			e := 1
			for e < len(rest) && rest[e] != '"' {
				if c := rest[e]; c < 0x20 || c > 0x7e || c == '\\' {
					return Msg{}, false
				}
				e++
			}
			if e == len(rest) {
				return Msg{}, false
			}
			m.Job = string(rest[1:e])
			rest = rest[e+1:]
			continue
		}
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
		case keySeq:
			m.Seq = uint64(v)
		case keyFreePort:
			m.FreePort = int(v)
		case keyHeartbeatMS:
			m.HeartbeatMS = int(v)
		case keyGen:
			m.Gen = int(v)
		case keyRank:
			m.Rank = int(v)
		case keyStep:
			m.Step = int(v)
		case keyAtMS:
			m.AtMS = v
		case keyLeaseMS:
			m.LeaseMS = int(v)
		case keyGraceMS:
			m.Grace = int(v)
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
