// Package chaos is the built-in fault injector (`--chaos`), a testing and
// demonstration aid: it kills or stops random workers on a schedule so a user
// can watch detection and recovery without writing a fault script.
//
// A plan is a comma-separated list:
//
//	kill-every=15s   SIGKILL a random worker every 15 s
//	kill-at=5s       SIGKILL a random worker once, 5 s into the run
//	stop-every=30s   SIGSTOP a random worker (a hang) every 30 s
//	stop-at=20s      SIGSTOP a random worker once
//	kill-at-step=300 SIGKILL a random worker once, when the job reaches step 300
//	stop-at-step=800 SIGSTOP a random worker once, when the job reaches step 800
//	max-faults=4     inject no more than 4 faults in all
//	seed=7           choose ranks reproducibly
//
// The -at-step forms need progress reports (the SDK or --progress-regex).
// They put faults at points of training rather than of the wall clock, so
// a slow machine meets the same faults as a fast one (the demo uses them).
package chaos

import (
	"fmt"
	"math/rand"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Action is one scheduled kind of fault.
type Action struct {
	Signal syscall.Signal
	At     time.Duration // first time
	Every  time.Duration // 0 = once
	AtStep int           // > 0: once, when the job's step reaches it (At, Every unused)
}

// Plan is a parsed --chaos value.
type Plan struct {
	Actions   []Action
	Seed      int64
	MaxFaults int // 0 = no limit
}

// Parse reads a plan; the empty string is no plan.
func Parse(s string) (Plan, error) {
	var p Plan
	if strings.TrimSpace(s) == "" {
		return p, nil
	}
	p.Seed = 1
	for _, item := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			return p, fmt.Errorf("chaos: %q: want key=value (e.g. kill-every=15s)", item)
		}
		if k == "seed" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return p, fmt.Errorf("chaos: seed %q: not an integer", v)
			}
			p.Seed = n
			continue
		}
		if k == "kill-at-step" || k == "stop-at-step" || k == "max-faults" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return p, fmt.Errorf("chaos: %s=%q: want a positive integer", k, v)
			}
			switch k {
			case "kill-at-step":
				p.Actions = append(p.Actions, Action{Signal: syscall.SIGKILL, AtStep: n})
			case "stop-at-step":
				p.Actions = append(p.Actions, Action{Signal: syscall.SIGSTOP, AtStep: n})
			default:
				p.MaxFaults = n
			}
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return p, fmt.Errorf("chaos: %s=%q: want a positive duration like 15s", k, v)
		}
		switch k {
		case "kill-every":
			p.Actions = append(p.Actions, Action{Signal: syscall.SIGKILL, At: d, Every: d})
		case "kill-at":
			p.Actions = append(p.Actions, Action{Signal: syscall.SIGKILL, At: d})
		case "stop-every":
			p.Actions = append(p.Actions, Action{Signal: syscall.SIGSTOP, At: d, Every: d})
		case "stop-at":
			p.Actions = append(p.Actions, Action{Signal: syscall.SIGSTOP, At: d})
		default:
			return p, fmt.Errorf("chaos: unknown key %q (kill-every, kill-at, stop-every, stop-at, kill-at-step, stop-at-step, max-faults, seed)", k)
		}
	}
	return p, nil
}

// Injector says, as time passes, which fault to inject next. It is driven by
// the coordinator's ticks; the coordinator picks the live worker and signals it.
type Injector struct {
	next  []time.Duration
	plan  Plan
	rng   *rand.Rand
	fired int
}

// NewInjector starts the schedule of p.
func NewInjector(p Plan) *Injector {
	in := &Injector{plan: p, rng: rand.New(rand.NewSource(p.Seed))}
	for _, a := range p.Actions {
		in.next = append(in.next, a.At)
	}
	return in
}

// Due returns the signal to inject at now, if any is due. A due fault waits
// while canInject is false (no generation is training), so faults land on a
// training job as the schedule intends rather than piling up during restarts.
func (in *Injector) Due(now time.Duration, canInject bool) (syscall.Signal, bool) {
	return in.DueAt(now, -1, canInject)
}

// DueAt is Due for a job that has reached step (-1: none yet).
func (in *Injector) DueAt(now time.Duration, step int, canInject bool) (syscall.Signal, bool) {
	if !canInject || (in.plan.MaxFaults > 0 && in.fired >= in.plan.MaxFaults) {
		return 0, false
	}
	for i, a := range in.plan.Actions {
		if in.next[i] < 0 {
			continue
		}
		if a.AtStep > 0 {
			if step < a.AtStep {
				continue
			}
		} else if now < in.next[i] {
			continue
		}
		if a.Every > 0 {
			in.next[i] = now + a.Every
		} else {
			in.next[i] = -1
		}
		in.fired++
		return a.Signal, true
	}
	return 0, false
}

// Pick chooses one of ranks.
func (in *Injector) Pick(ranks []int) int { return ranks[in.rng.Intn(len(ranks))] }
