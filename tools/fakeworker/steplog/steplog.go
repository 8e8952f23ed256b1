// Package steplog is the fake worker's step log (-step-log FILE): one line
// "GEN RANK STEP UNIXNANO" per step, appended by every worker of every
// generation. Multi-node tests and benchmarks read it to prove fencing (no
// step of generation N after generation N+1's first) and to time recovery.
package steplog

import (
	"bufio"
	"fmt"
	"os"
	"time"
)

// Record is one step of one rank.
type Record struct {
	Gen, Rank, Step int
	At              time.Time
}

// Line is how a worker writes a record.
func Line(gen, rank, step int, at time.Time) string {
	return fmt.Sprintf("%d %d %d %d\n", gen, rank, step, at.UnixNano())
}

// Read returns the records in path (none when it does not exist yet); a
// line cut short by a concurrent write is skipped.
func Read(path string) []Record {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r Record
		var ns int64
		if n, _ := fmt.Sscan(sc.Text(), &r.Gen, &r.Rank, &r.Step, &ns); n == 4 {
			r.At = time.Unix(0, ns)
			out = append(out, r)
		}
	}
	return out
}
