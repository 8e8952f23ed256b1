package sim

import "time"

// evKind says what an event does when it comes due.
type evKind uint8

const (
	evNodeFail    evKind = iota // a node's next fault (a = node, ep = node epoch)
	evNodeBack                  // a node returns from repair or maintenance (a = node, ep = node epoch)
	evStraggleEnd               // a straggler episode ends (a = node, ep = node epoch)
	evDeliver                   // an input reaches the policy (in), if the job epoch still matches
	evStopped                   // every worker of generation a has been reaped
	evLaunched                  // generation a is up
	evFirstStep                 // the generation's first step (or the regroup's)
	evDiagnosed                 // live: the hang's culprit is known
	evJoinerReady               // a replacement is ready (a = slot, b = node)
	evCkptStart                 // a checkpoint write begins (ep = checkpoint epoch)
	evCkptDone                  // it is durable
	evResubmit                  // a new job after the policy gave up
	evEnd                       // the simulated time is over
	evPhase                     // the down time from here on counts as Cause(a), if the job epoch matches
)

type event struct {
	at   time.Duration
	seq  uint64
	kind evKind
	a, b int
	ep   uint64
	in   any // policy.Input for evDeliver
}

// queue is a binary min-heap of events ordered by time, then by the order
// they were pushed, so equal times run first-in first-out and a run is a
// function of its seed alone. Cancelling is done by epochs: a stale event
// is popped and dropped by its handler.
type queue struct {
	h   []event
	seq uint64
}

func (q *queue) less(i, j int) bool {
	a, b := &q.h[i], &q.h[j]
	return a.at < b.at || (a.at == b.at && a.seq < b.seq)
}

func (q *queue) push(e event) {
	q.seq++
	e.seq = q.seq
	q.h = append(q.h, e)
	i := len(q.h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !q.less(i, p) {
			break
		}
		q.h[i], q.h[p] = q.h[p], q.h[i]
		i = p
	}
}

func (q *queue) len() int { return len(q.h) }

func (q *queue) pop() event {
	e := q.h[0]
	n := len(q.h) - 1
	q.h[0] = q.h[n]
	q.h[n] = event{}
	q.h = q.h[:n]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && q.less(l, m) {
			m = l
		}
		if r < n && q.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		q.h[i], q.h[m] = q.h[m], q.h[i]
		i = m
	}
	return e
}
