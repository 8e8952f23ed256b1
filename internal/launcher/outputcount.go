package launcher

import (
	"hash/fnv"
	"regexp"
	"strings"
	"sync"
)

// What a generation printed is the launcher's evidence, for a job that
// reports no progress, of whether a generation did work (the policy decides
// what it means): how many lines its workers printed, and how many of them
// no earlier generation had printed. Numbers that change on every run
// without meaning progress (times, dates, addresses, ports, measured
// durations and losses) are masked before lines are compared; counts such
// as epochs and steps are kept, so "Epoch 7" is new after "Epoch 6".

// lineBook remembers which (masked) lines earlier generations printed.
type lineBook struct {
	mu    sync.Mutex
	first map[uint64]int // hash of the masked line -> first generation that printed it
}

// maxBook bounds the memory of a job that prints a lot; past it, unseen
// lines count as new (the side that never calls a working job a loop).
const maxBook = 1 << 18 // about 10 MB

var (
	maskTime  = regexp.MustCompile(`\b\d{4}-\d\d-\d\d\b|\b\d{1,2}:\d\d(:\d\d)?([.,]\d+)?\b`)
	maskHex   = regexp.MustCompile(`\b0x[0-9a-fA-F]+\b`)
	maskPort  = regexp.MustCompile(`([\w\]]):\d{2,5}\b`)
	maskFloat = regexp.MustCompile(`\d+\.\d+([eE][-+]?\d+)?|\d+[eE][-+]?\d+`)
)

func maskLine(s string) string {
	s = strings.TrimSpace(s)
	s = maskTime.ReplaceAllString(s, "T")
	s = maskHex.ReplaceAllString(s, "0x")
	s = maskPort.ReplaceAllString(s, "$1:P")
	return maskFloat.ReplaceAllString(s, "F")
}

// note records that gen printed text and says whether no earlier generation
// had printed it.
func (b *lineBook) note(gen int, text string) bool {
	h := fnv.New64a()
	h.Write([]byte(maskLine(text)))
	k := h.Sum64()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.first == nil {
		b.first = map[uint64]int{}
	}
	g, ok := b.first[k]
	if !ok {
		if len(b.first) < maxBook {
			b.first[k] = gen
		}
		return true
	}
	return g >= gen
}

// genOutput counts one worker's lines in its current generation.
type genOutput struct {
	gen, lines, fresh int
}

// count records a line of w's (called with w.mu held).
func (w *worker) count(gen int, text string) {
	if strings.TrimSpace(text) == "" {
		return
	}
	if w.out.gen != gen {
		w.out = genOutput{gen: gen}
	}
	w.out.lines++
	if w.a.book.note(gen, text) {
		w.out.fresh++
	}
}

// peerOutput sums what the other workers of w's generation have printed so
// far: taken when w dies, so that what they print because of its death
// (a broken collective's traceback) is not counted as their work.
func (a *Launcher) peerOutput(w *worker, gen int) genOutput {
	sum := genOutput{gen: gen}
	a.mu.Lock()
	defer a.mu.Unlock()
	g := a.gens[gen]
	if g == nil {
		return sum
	}
	for _, p := range g.workers {
		if p == w {
			continue
		}
		p.mu.Lock()
		if p.out.gen == gen {
			sum.lines += p.out.lines
			sum.fresh += p.out.fresh
		}
		p.mu.Unlock()
	}
	return sum
}
