package agent

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Ready says whether the agent can take work now: its session with a
// coordinator is up (welcomed) and its lease is current. GET /readyz on
// --health-addr reports it.
func (a *Agent) Ready(context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.sess == nil:
		return errors.New("no session with a coordinator")
	case !a.until.IsZero() && time.Now().After(a.until):
		return fmt.Errorf("lease ran out %s ago (the coordinator acknowledges nothing)", time.Since(a.until).Round(time.Millisecond))
	}
	return nil
}

// stopGracefully is the agent's answer to SIGTERM (scancel, a pod's
// termination, a node drain): its workers get SIGTERM and the job's stop
// grace (submit --stop-grace) to write a checkpoint, as in a stop the
// coordinator orders, before anything is killed. Without a running
// generation it returns at once.
func (a *Agent) stopGracefully() {
	a.mu.Lock()
	ag, gen, sp, stopped := a.ag, a.gen, a.spec, a.stopped
	a.mu.Unlock()
	if ag == nil || gen == 0 || stopped || sp == nil || sp.StopGraceMS <= 0 {
		return
	}
	grace := time.Duration(sp.StopGraceMS) * time.Millisecond
	a.con.Printf("! stopping: generation %d's workers get SIGTERM and %s to checkpoint", gen, grace)
	ag.StopGeneration(gen, grace)
	for deadline := time.Now().Add(grace + time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		a.mu.Lock()
		done := a.stopped || a.ag != ag || a.gen != gen
		a.mu.Unlock()
		if done {
			return
		}
	}
}
