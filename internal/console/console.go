// Package console serializes what bulsajo prints to the terminal: workers'
// output lines (with their rank prefix) and bulsajo's own status lines, so
// that lines from different goroutines never interleave mid-line.
package console

import (
	"fmt"
	"io"
	"sync"
)

// Console writes whole lines to one writer.
type Console struct {
	mu sync.Mutex
	w  io.Writer
}

// New returns a Console writing to w.
func New(w io.Writer) *Console { return &Console{w: w} }

// Line writes prefix+text and a newline as one write.
func (c *Console) Line(prefix, text string) {
	b := make([]byte, 0, len(prefix)+len(text)+1)
	b = append(append(append(b, prefix...), text...), '\n')
	c.mu.Lock()
	c.w.Write(b)
	c.mu.Unlock()
}

// Printf writes one formatted status line.
func (c *Console) Printf(format string, args ...any) {
	c.Line("", fmt.Sprintf(format, args...))
}
