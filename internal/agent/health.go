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
