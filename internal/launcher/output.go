package launcher

import (
	"regexp"
	"strings"
	"sync"
	"time"
)

// Workers' stderr on the terminal: one fault, one line.
//
// When a worker dies, its peers' collectives fail and each prints a long
// traceback (gloo's "Connection reset by peer"), often before the death is
// even reaped. Those are consequences, not news. So stderr lines are held
// briefly before they reach the terminal: a traceback block until the worker
// exits or the block goes quiet, any other line for lineHold. When they are
// let go, lines of a generation in which a worker has already died go to the
// rank log only (they always go there at once) — except the traceback of the
// worker whose death is the fault, which is its cause. Stdout is not held.
//
// The same reading of stderr finds a death's cause: the exception line of a
// traceback, or an error line, printed in the moments before a worker exited
// of its own accord (an exit code, or a crash signal it raised itself).
const (
	// plainWindow: a plain line (`sys.exit("no data")`) this close to an
	// exit with an error code is its cause.
	plainWindow = time.Second
	lineHold    = 200 * time.Millisecond // an ordinary stderr line
	blockQuiet  = 500 * time.Millisecond // a traceback block: since its last line
	blockMax    = 2 * time.Second        // a traceback block: since its first line
	causeWindow = 3 * time.Second        // an error this long before exit is not its cause
	// lastCauseWindow: an error that was the worker's last output is its
	// cause for longer. An uncaught exception is printed before the
	// interpreter's teardown (finalization, threads joined, libraries'
	// destructors), which takes seconds on a loaded machine.
	lastCauseWindow = 10 * time.Second
	// deferMax bounds how long an exit waits for a peer that printed its own
	// traceback earlier (and so may be the real fault) to exit first.
	deferMax = time.Second
)

// stderrState follows one worker's stderr: the held lines, the traceback
// being printed, the latest error line. Guarded by worker.mu.
type stderrState struct {
	held      []string
	heldGen   int // the generation the held lines were printed in
	firstHeld time.Time
	timer     *time.Timer
	exiting   bool // the process is gone: the exit path lets the held lines go

	inBlock    bool // inside a traceback (until it goes quiet)
	blockStart time.Time
	lastLine   time.Time
	excSeen    bool // the block's exception line was seen (what follows is its message)

	cause     string // latest exception or error line
	causeAt   time.Time
	causeLast bool   // nothing but the cause's own traceback was printed since (stdout included)
	plain     string // latest other line at column 0 that is no warning
	plainAt   time.Time
}

// observe reads one stderr line: traceback structure and error lines.
func (s *stderrState) observe(text string, now time.Time) {
	// torch 2.x prefixes an uncaught exception's lines with "[rankN]: ";
	// the line under it is what is read (and the cause must not depend on
	// which rank printed it).
	if m := torchRankPrefix.FindString(text); m != "" {
		text = text[len(m):]
	}
	if s.inBlock && now.Sub(s.lastLine) > blockQuiet {
		s.inBlock = false // that traceback is over
	}
	s.lastLine = now
	t := strings.TrimSpace(text)
	switch {
	case t == "Traceback (most recent call last):":
		if !s.inBlock {
			s.blockStart = now
		}
		s.inBlock, s.excSeen = true, false
	case s.inBlock && isChainLine(t):
		s.excSeen = false // another traceback follows
	case s.inBlock && !s.excSeen:
		// Frames are indented; the first line at column 0 is the exception.
		if t != "" && text[0] != ' ' && text[0] != '\t' {
			s.cause, s.causeAt, s.excSeen, s.causeLast = t, now, true, true
		}
	case s.inBlock:
		// The exception's message continues (torch's "At:" lines ...).
	case isErrorLine(t):
		if strings.HasPrefix(t, "Fatal Python error") && cppAbort.MatchString(s.cause) && now.Sub(s.causeAt) <= time.Second {
			// faulthandler's stacks after a C++ exception's abort: that
			// exception is the cause, "Fatal Python error: Aborted" its echo.
			break
		}
		s.cause, s.causeAt, s.causeLast = t, now, true
	default:
		s.causeLast = false
		if t != "" && text[0] != ' ' && text[0] != '\t' && !warningLine.MatchString(t) {
			s.plain, s.plainAt = t, now
		}
	}
}

// stdout notes a line on the worker's stdout: the error before it, if any,
// was not its last word.
func (s *stderrState) stdout() { s.causeLast = false }

var torchRankPrefix = regexp.MustCompile(`^\[rank\d+\]: ?`)

// warningLine: Python's `file:line: UserWarning: ...` (and the like).
var warningLine = regexp.MustCompile(`\b[A-Z]\w*Warning\b`)

func isChainLine(t string) bool {
	return strings.HasPrefix(t, "During handling of the above exception") ||
		strings.HasPrefix(t, "The above exception was the direct cause")
}

// errorLine: an exception printed alone (`RuntimeError: ...`, `foo.BarError`),
// argparse's `prog: error: ...`, `error: ...`, a fatal interpreter error, or a
// C++ exception that ends in abort.
var errorLine = regexp.MustCompile(`^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit)(?::|$)|` +
	`^(?i:error|fatal)\b|^Fatal Python error|^terminate called|^what\(\):|^\S+: error: `)

func isErrorLine(t string) bool { return errorLine.MatchString(t) }

// cppAbort: the lines an uncaught C++ exception prints before abort().
var cppAbort = regexp.MustCompile(`^terminate called|^what\(\):`)

// deadline is when the held lines go out, given the line just added.
func (s *stderrState) deadline() time.Time {
	if s.inBlock {
		return minTime(s.lastLine.Add(blockQuiet), s.blockStart.Add(blockMax))
	}
	return s.firstHeld.Add(lineHold)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// exitCause is the error a worker's death is owed to, if any. A signal sent
// from outside (SIGKILL, SIGTERM ...) is its own cause: whatever the worker
// printed before cannot have brought it on.
func (s *stderrState) exitCause(code int, sig string, at time.Time) string {
	age := at.Sub(s.causeAt)
	if s.cause == "" || age > causeWindow && !(s.causeLast && age <= lastCauseWindow) {
		if sig == "" && code != 0 && s.plain != "" && at.Sub(s.plainAt) <= plainWindow {
			return s.plain
		}
		return ""
	}
	switch {
	case sig == "":
		if code == 0 {
			return ""
		}
	case selfSignal[sig]:
	default:
		return ""
	}
	return s.cause
}

// selfSignal: signals a process raises itself (an uncaught C++ exception, a
// crash); any other signal came from outside and is its own cause.
var selfSignal = map[string]bool{"SIGABRT": true, "SIGSEGV": true, "SIGBUS": true, "SIGFPE": true, "SIGILL": true}

// errLine handles one stderr line of w: held, or dropped from the terminal
// when the worker's generation is already stopping. Called with w.mu held.
func (w *worker) errLine(prefix, text string) {
	s := &w.errOut
	now := time.Now()
	s.observe(text, now)
	if w.quiet.Load() {
		return
	}
	if len(s.held) > 0 && s.heldGen != w.gen {
		// A live regroup moved the worker on: judge the earlier lines by
		// the generation they belong to.
		w.release(!w.a.faults.failing(s.heldGen))
	}
	if len(s.held) == 0 {
		s.firstHeld, s.heldGen = now, w.gen
	}
	s.held = append(s.held, prefix+text)
	if s.exiting {
		return // the exit path lets them go
	}
	d := time.Until(s.deadline())
	if s.timer == nil {
		s.timer = time.AfterFunc(d, w.holdExpired)
	} else {
		s.timer.Reset(d)
	}
}

// holdExpired lets the held lines of a running worker go: to the terminal,
// unless a worker of its generation has died meanwhile.
func (w *worker) holdExpired() {
	w.mu.Lock()
	s := &w.errOut
	if s.exiting || len(s.held) == 0 {
		w.mu.Unlock()
		return
	}
	if time.Now().Before(s.deadline()) {
		// A line came in since the timer was set: wait for it.
		s.timer.Reset(time.Until(s.deadline()))
		w.mu.Unlock()
		return
	}
	gen, causeAt := s.heldGen, s.causeAt
	w.mu.Unlock()
	// A peer that printed its error first, and has not exited yet (torch can
	// take seconds to exit after an exception): this error is its consequence.
	earlier := !causeAt.IsZero() && w.a.earlierTraceback(w, gen, causeAt) != nil
	w.mu.Lock()
	defer w.mu.Unlock()
	if s.exiting || len(s.held) == 0 || s.heldGen != gen {
		return
	}
	since := w.a.faults.since(s.heldGen)
	if !since.IsZero() && !s.causeAt.IsZero() && s.causeAt.Before(since) && time.Since(s.causeAt) < causeWindow {
		// This worker's error came before the death: it may be dying of it
		// (slow to exit), and then it is the fault. Its exit decides.
		s.timer.Reset(blockQuiet)
		return
	}
	w.release(!w.quiet.Load() && since.IsZero() && !earlier)
}

// release ends the hold: the lines go to the terminal if show (they are in
// the rank log already). Called with w.mu held.
func (w *worker) release(show bool) {
	s := &w.errOut
	if show {
		for _, l := range s.held {
			w.a.cfg.Console.Line("", l)
		}
	}
	s.held, s.inBlock = nil, false
}

// exiting stops the hold of a worker whose process ended; finish decides.
func (w *worker) stopHold() {
	w.mu.Lock()
	w.errOut.exiting = true
	if w.errOut.timer != nil {
		w.errOut.timer.Stop()
	}
	w.mu.Unlock()
}

// genFaults records, per generation, that a worker has died abnormally and
// which one's death is the fault. A leaf lock: taken under worker.mu.
type genFaults struct {
	mu sync.Mutex
	m  map[int]*genFault
}

type genFault struct {
	since time.Time // the first abnormal death
	owner *worker   // the worker whose death is the fault (nil: not yet decided)
}

// died notes that a worker of gen died abnormally at (before its output drained).
func (f *genFaults) died(gen int, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[int]*genFault{}
	}
	if f.m[gen] == nil {
		f.m[gen] = &genFault{since: at}
	}
}

func (f *genFaults) failing(gen int) bool { return !f.since(gen).IsZero() }

// since is when the first worker of gen died abnormally (zero: none has).
func (f *genFaults) since(gen int) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	if g := f.m[gen]; g != nil {
		return g.since
	}
	return time.Time{}
}

// claim makes w the fault of gen if no other worker is; reports whether w is.
func (f *genFaults) claim(gen int, w *worker) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.m[gen]
	if g == nil {
		g = &genFault{since: time.Now()}
		f.m[gen] = g
	}
	if g.owner == nil {
		g.owner = w
	}
	return g.owner == w
}

// forget drops what is known about gen (it has ended).
func (f *genFaults) forget(gen int) {
	f.mu.Lock()
	delete(f.m, gen)
	f.mu.Unlock()
}

// earlierTraceback returns a peer of w in its generation, not yet reported,
// that printed an error before causeAt: when its death follows, it, not w,
// is the fault (w's error is the consequence of the peer's going).
func (a *Launcher) earlierTraceback(w *worker, gen int, causeAt time.Time) *worker {
	a.mu.Lock()
	var peers []*worker
	if g := a.gens[gen]; g != nil {
		peers = append(peers, g.workers...)
	}
	a.mu.Unlock()
	for _, v := range peers {
		if v == w || v.isSettled() {
			continue
		}
		v.mu.Lock()
		at := v.errOut.causeAt
		v.mu.Unlock()
		if !at.IsZero() && at.Before(causeAt) && causeAt.Sub(at) < causeWindow {
			return v
		}
	}
	return nil
}

func (w *worker) isSettled() bool {
	select {
	case <-w.settled:
		return true
	default:
		return false
	}
}

// dyingRank names the worker of gen that printed an uncaught error (the
// first, if several) since the job's last progress and has not exited: the
// likely culprit when it hangs on its way out.
func (a *Launcher) dyingRank(ws []*worker) (int, string) {
	// Since the last progress, less a second: progress datagrams and output
	// lines are read by different goroutines, and a peer's last report can be
	// read just after the dying rank's error.
	after := time.Unix(0, a.lastProgress.Load()).Add(-time.Second)
	rank, cause, first := -1, "", time.Time{}
	for _, w := range ws {
		if w.hasExited() {
			continue
		}
		w.mu.Lock()
		at, c, r := w.errOut.causeAt, w.errOut.cause, w.rank
		w.mu.Unlock()
		if !at.IsZero() && at.After(after) && (first.IsZero() || at.Before(first)) {
			rank, cause, first = r, c, at
		}
	}
	if rank < 0 {
		return -1, ""
	}
	return rank, "printed " + cause + ", not exited"
}
