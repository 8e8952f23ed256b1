package events

import (
	"fmt"
	"strings"
	"time"
)

// Summary is the end-of-run account: what happened and where time went.
type Summary struct {
	Outcome     string  `json:"outcome"`
	WallS       float64 `json:"wall_s"`
	Steps       int     `json:"steps"`
	Generations int     `json:"generations"`
	Faults      int     `json:"faults"`
	Recoveries  int     `json:"recoveries"`

	// Badput, in seconds: detecting faults, restarting (detection to the
	// next generation's first step), and re-doing rolled-back steps.
	DetectS   float64 `json:"detect_s"`
	RestartS  float64 `json:"restart_s"`
	RollbackS float64 `json:"rollback_s"`
	LostS     float64 `json:"lost_s"`
	// Goodput is 1 - lost/wall: the share of wall time spent training forward.
	Goodput float64 `json:"goodput"`
}

// Summarize accounts a run from its events. stepTime is the median time of
// one step (to price rolled-back steps); 0 leaves rollback unpriced.
func Summarize(evs []Event, stepTime time.Duration) Summary {
	var s Summary
	var start, end time.Time
	for _, e := range evs {
		switch e.Type {
		case RunStarted:
			// A run dir used again: account the latest run only.
			s, start, end = Summary{}, e.Time, e.Time
		case GenerationStart:
			s.Generations++
		case FaultDetected:
			s.Faults++
			s.DetectS += e.DetectMS / 1000
			if e.Step != nil && *e.Step > s.Steps {
				s.Steps = *e.Step
			}
		case Recovered:
			s.Recoveries++
			s.RestartS += e.RecoverMS / 1000
			s.RollbackS += float64(e.RolledBack) * stepTime.Seconds()
		case RunFinished:
			end = e.Time
			s.Outcome = e.Outcome
			if e.Step != nil && *e.Step > s.Steps {
				s.Steps = *e.Step
			}
		}
		if e.Time.After(end) {
			end = e.Time
		}
	}
	if !start.IsZero() {
		s.WallS = end.Sub(start).Seconds()
	}
	s.LostS = s.DetectS + s.RestartS + s.RollbackS
	if s.WallS > 0 {
		s.Goodput = max(0, 1-s.LostS/s.WallS)
	}
	return s
}

// LostByCause is the lost time broken down as the summary line shows it.
func (s Summary) LostByCause() map[string]float64 {
	return map[string]float64{"detect": s.DetectS, "restart": s.RestartS, "rollback": s.RollbackS}
}

// Line renders the summary as the one line a user pastes into a report.
func (s Summary) Line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "in %.1f s", s.WallS)
	if s.Steps > 0 {
		fmt.Fprintf(&b, " · last step %d", s.Steps) // the highest step index reported
	}
	fmt.Fprintf(&b, " · %d %s, %d %s · %.1f s lost", s.Faults, plural(s.Faults, "fault", "faults"),
		s.Recoveries, plural(s.Recoveries, "recovery", "recoveries"), s.LostS)
	if s.Faults > 0 {
		fmt.Fprintf(&b, " (detect %.1f, restart %.1f, rollback %.1f)", s.DetectS, s.RestartS, s.RollbackS)
	}
	fmt.Fprintf(&b, " · goodput %.2f", s.Goodput)
	return b.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
