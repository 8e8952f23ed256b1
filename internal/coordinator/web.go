package coordinator

import (
	"fmt"
	"html"
	"net/http"
)

// serveMetrics is the Prometheus text format (read-only, no token).
func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	st := s.Status()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	counts := map[string]int{}
	quarantined := 0
	for _, n := range st.Nodes {
		counts[n.State]++
		if n.Quarantined {
			quarantined++
		}
	}
	fmt.Fprintf(w, "# HELP bulsajo_nodes Nodes by state.\n# TYPE bulsajo_nodes gauge\n")
	for _, state := range []string{"ready", "training", "lost", "disconnected"} {
		fmt.Fprintf(w, "bulsajo_nodes{state=%q} %d\n", state, counts[state])
	}
	fmt.Fprintf(w, "# HELP bulsajo_nodes_quarantined Nodes excluded after repeated faults.\n# TYPE bulsajo_nodes_quarantined gauge\nbulsajo_nodes_quarantined %d\n", quarantined)
	fmt.Fprintf(w, "# HELP bulsajo_agent_sessions Connected agent sessions.\n# TYPE bulsajo_agent_sessions gauge\nbulsajo_agent_sessions %d\n", s.sessions.Load())
	fmt.Fprintf(w, "# HELP bulsajo_heartbeats_total Heartbeats received.\n# TYPE bulsajo_heartbeats_total counter\nbulsajo_heartbeats_total %d\n", s.heartbeats.Load())
	writeGPUMetrics(w, st)
	if j := st.Job; j != nil {
		fmt.Fprintf(w, "# HELP bulsajo_job_generation Current generation.\n# TYPE bulsajo_job_generation gauge\nbulsajo_job_generation{job=%q} %d\n", j.ID, j.Gen)
		fmt.Fprintf(w, "# HELP bulsajo_job_step Highest step reported.\n# TYPE bulsajo_job_step gauge\nbulsajo_job_step{job=%q} %d\n", j.ID, j.Step)
		fmt.Fprintf(w, "# HELP bulsajo_job_restarts Restarts so far.\n# TYPE bulsajo_job_restarts gauge\nbulsajo_job_restarts{job=%q} %d\n", j.ID, j.Restarts)
		fmt.Fprintf(w, "# HELP bulsajo_job_world_size Ranks in the current generation.\n# TYPE bulsajo_job_world_size gauge\nbulsajo_job_world_size{job=%q} %d\n", j.ID, j.World)
	}
}

// serveDashboard is a plain read-only page.
func (s *Server) serveDashboard(w http.ResponseWriter, r *http.Request) {
	st := s.Status()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprint(w, `<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>bulsajo</title>
<style>body{font:14px system-ui;margin:2em}td,th{padding:2px 10px;text-align:left}</style><h1>bulsajo</h1>`)
	if j := st.Job; j != nil {
		fmt.Fprintf(w, "<p>job <b>%s</b>: %s · generation %d · world %d · step %d · restarts %d %s</p>",
			esc(j.ID), esc(j.State), j.Gen, j.World, j.Step, j.Restarts, esc(j.Outcome))
	}
	fmt.Fprint(w, "<table><tr><th>node<th>state<th>addr<th>slots<th>ranks<th>faults<th>quarantine</tr>")
	for _, n := range st.Nodes {
		role := ""
		if n.Spare {
			role = " (spare)"
		}
		fmt.Fprintf(w, "<tr><td>%s%s<td>%s<td>%s<td>%d<td>%v<td>%d<td>%s</tr>", esc(n.Name), role, n.State, esc(n.Addr), n.NProc, n.Ranks, n.Faults, esc(n.Reason))
	}
	fmt.Fprint(w, "</table>")
}

func esc(s string) string { return html.EscapeString(s) }
