package policy

import (
	"fmt"
	"strconv"
	"time"
)

// String forms of decisions: one line each, used by the scenario transcripts
// and by debug logging.

func (d Launch) String() string {
	return fmt.Sprintf("launch gen=%d world=%d restart=%d", d.Gen, d.WorldSize, d.RestartCount)
}

func (d Stop) String() string { return fmt.Sprintf("stop gen=%d reason=%s", d.Gen, d.Reason) }

func (d Fault) String() string {
	s := fmt.Sprintf("fault gen=%d kind=%s rank=%d step=%d", d.Gen, d.Kind, d.Rank, d.Step)
	if d.Silent > 0 {
		s += " silent=" + round(d.Silent)
	}
	return s + " detail=" + strconv.Quote(d.Detail)
}

func (d Recovered) String() string {
	return fmt.Sprintf("recovered gen=%d took=%s rolled-back=%d", d.Gen, round(d.Took), d.RolledBack)
}

func (d Finish) String() string {
	return fmt.Sprintf("finish outcome=%s reason=%s", d.Outcome, strconv.Quote(d.Reason))
}

func round(d time.Duration) string { return d.Round(time.Millisecond).String() }

func (d Regroup) String() string {
	s := fmt.Sprintf("regroup gen=%d world=%d survivors=%v admit=%d spawn=%d kill=%v", d.Gen, d.WorldSize, d.Survivors, d.Admit, d.Spawn, d.Kill)
	if d.Grow {
		s += fmt.Sprintf(" grow at-step=%d", d.AtStep)
	}
	return s
}

func (d Diagnose) String() string {
	if d.StateOnly {
		return fmt.Sprintf("diagnose gen=%d state-only", d.Gen)
	}
	return fmt.Sprintf("diagnose gen=%d", d.Gen)
}

func (d Probe) String() string { return fmt.Sprintf("probe gen=%d", d.Gen) }

func (d Busy) String() string {
	return fmt.Sprintf("busy gen=%d ranks=%v silent=%s", d.Gen, d.Ranks, round(d.Silent))
}

func (d SpawnJoiners) String() string { return fmt.Sprintf("spawn joiners=%d", d.N) }
