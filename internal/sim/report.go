package sim

import (
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// SweepPoint is the ETTR of one mode at one checkpoint interval.
type SweepPoint struct {
	Mode     Mode    `json:"mode"`
	Interval float64 `json:"interval_minutes"`
	ETTR     Stat    `json:"ettr"`
}

// Report is one scenario: every mode side by side, and optionally a sweep of
// checkpoint intervals.
type Report struct {
	GPUs         int          `json:"gpus"`
	GPUsPerNode  int          `json:"gpus_per_node"`
	Nodes        int          `json:"nodes"`
	Days         float64      `json:"days"`
	Unexpected   float64      `json:"unexpected_per_node_day"`
	JobMTTFHours float64      `json:"job_mttf_hours_expected"`
	CkptInterval Duration     `json:"ckpt_interval"`
	Spares       int          `json:"spares"`
	Trials       int          `json:"trials"`
	Seed         uint64       `json:"seed"`
	Params       Params       `json:"params"`
	Results      []ModeResult `json:"results"`
	Sweep        []SweepPoint `json:"sweep,omitempty"`
	SweepTrials  int          `json:"sweep_trials,omitempty"`
	timeline     map[Mode]*TrialResult
}

// SweepIntervals are the checkpoint intervals the chart compares.
var SweepIntervals = []time.Duration{2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute,
	30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour, 8 * time.Hour}

// Run simulates modes with p, then (sweepTrials > 0) each mode at every
// SweepIntervals interval.
func Run(p Params, modes []Mode, trials int, seed uint64, sweepTrials int) *Report {
	spares := p.Spares
	if spares < 0 {
		spares = p.AutoSpares()
	}
	r := &Report{GPUs: p.GPUs, GPUsPerNode: p.GPUsPerNode, Nodes: p.Nodes(), Days: p.Days,
		Unexpected: p.Rates.Unexpected(), CkptInterval: p.CkptInterval, Spares: spares,
		Trials: trials, Seed: seed, Params: p, timeline: map[Mode]*TrialResult{}}
	if u := p.Rates.Unexpected(); u > 0 {
		r.JobMTTFHours = 24 / (float64(p.Nodes()) * u)
	}
	p.Spares = spares
	for _, m := range modes {
		mr := RunMode(&p, m, trials, seed)
		r.timeline[m] = &mr.Trials[0]
		r.Results = append(r.Results, mr)
	}
	if sweepTrials > 0 {
		r.SweepTrials = sweepTrials
		for _, m := range modes {
			for _, iv := range SweepIntervals {
				q := p
				q.CkptInterval = Duration(iv)
				mr := RunMode(&q, m, sweepTrials, seed)
				r.Sweep = append(r.Sweep, SweepPoint{Mode: m, Interval: iv.Minutes(), ETTR: mr.ETTR})
			}
		}
	}
	return r
}

func pm(s Stat, prec int) string {
	if s.SE == 0 && s.Mean != 0 {
		return fmt.Sprintf("%.*f", prec, s.Mean) // one trial: no standard error
	}
	return fmt.Sprintf("%.*f ± %.*f", prec, s.Mean, prec, s.SE)
}

// WriteTable prints the scenario's tables.
func (r *Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "%s GPUs (%s nodes × %d), %g days, unexpected faults %.3g per node-day (job MTTF %.2f h), "+
		"checkpoint every %s, %d spares, %d trials, seed %d\n\n",
		thousands(r.GPUs), thousands(r.Nodes), r.GPUsPerNode, r.Days, r.Unexpected, r.JobMTTFHours,
		r.CkptInterval, r.Spares, r.Trials, r.Seed)
	tw := newTab(w)
	tw.row("mode", "ETTR", "ETTR if overlaps stalled fully", "job MTTF h", "spares used", "nodes requeued", "quarantined (lemons)", "resubmits")
	for _, m := range r.Results {
		tw.row(string(m.Mode), pm(m.ETTR, 4), pm(m.ETTRFull, 4), fmt.Sprintf("%.2f", m.MTTFHours.Mean),
			fmt.Sprintf("%.1f", m.SparesUsed.Mean), fmt.Sprintf("%.1f", m.Requeues.Mean),
			fmt.Sprintf("%.1f (%.1f)", m.Quarantined.Mean, m.QLemons.Mean), fmt.Sprintf("%.1f", m.Resubmits.Mean))
	}
	tw.flush()
	fmt.Fprintf(w, "\ntime lost, %% of wall (mean ± standard error over trials)\n")
	tw = newTab(w)
	hdr := []string{"mode"}
	for c := Cause(1); c < NumCauses; c++ {
		hdr = append(hdr, c.String())
	}
	tw.row(hdr...)
	for _, m := range r.Results {
		row := []string{string(m.Mode)}
		for c := Cause(1); c < NumCauses; c++ {
			row = append(row, pm(m.lost[c], 2))
		}
		tw.row(row...)
	}
	tw.flush()
	fmt.Fprintf(w, "\nfaults per run that hit the job, by class (mean)\n")
	tw = newTab(w)
	hdr = []string{"mode"}
	for c := Class(0); c < NumClasses; c++ {
		hdr = append(hdr, c.String())
	}
	tw.row(append(hdr, "during a recovery")...)
	for _, m := range r.Results {
		row := []string{string(m.Mode)}
		for c := Class(0); c < NumClasses; c++ {
			row = append(row, fmt.Sprintf("%.1f", m.faults[c].Mean))
		}
		tw.row(append(row, fmt.Sprintf("%.1f", m.Overlapped.Mean))...)
	}
	tw.flush()
	if len(r.Sweep) > 0 {
		fmt.Fprintf(w, "\nETTR by checkpoint interval (%d trials each)\n", r.SweepTrials)
		tw = newTab(w)
		hdr = []string{"mode"}
		for _, iv := range SweepIntervals {
			hdr = append(hdr, shortDur(iv))
		}
		tw.row(append(hdr, "best")...)
		for _, m := range r.Results {
			row := []string{string(m.Mode)}
			best, bestIv := -1.0, 0.0
			for _, s := range r.Sweep {
				if s.Mode == m.Mode {
					row = append(row, fmt.Sprintf("%.4f", s.ETTR.Mean))
					if s.ETTR.Mean > best {
						best, bestIv = s.ETTR.Mean, s.Interval
					}
				}
			}
			tw.row(append(row, fmt.Sprintf("%s", shortDur(time.Duration(bestIv*float64(time.Minute)))))...)
		}
		tw.flush()
	}
}

func shortDur(d time.Duration) string {
	if d%time.Hour == 0 {
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	return fmt.Sprintf("%dm", d/time.Minute)
}

func thousands(n int) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// tab aligns columns (text/tabwriter pads by bytes; "±" is two).
type tab struct {
	w    io.Writer
	rows [][]string
}

func newTab(w io.Writer) *tab { return &tab{w: w} }

func (t *tab) row(cells ...string) { t.rows = append(t.rows, cells) }

func (t *tab) flush() {
	var width []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(width) {
				width = append(width, 0)
			}
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	for _, r := range t.rows {
		var b strings.Builder
		for i, c := range r {
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", width[i]-len([]rune(c))+2))
			}
		}
		fmt.Fprintln(t.w, b.String())
	}
}

// ---- charts ----

var modeColors = map[Mode]string{ModeCR: "#c0392b", ModeRestart: "#e67e22", ModePeer: "#2980b9", ModeLive: "#27ae60"}
var causeColors = [NumCauses]string{"#2ecc71", "#95a5a6", "#e74c3c", "#8e44ad", "#e67e22", "#f1c40f", "#3498db", "#bdc3c7"}

// WriteCharts writes ettr.svg (when there is a sweep) and timeline.svg into dir.
func (r *Report) WriteCharts(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if len(r.Sweep) > 0 {
		if err := os.WriteFile(filepath.Join(dir, "ettr.svg"), []byte(r.ettrSVG()), 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "timeline.svg"), []byte(r.timelineSVG()), 0o644)
}

func (r *Report) ettrSVG() string {
	const W, H, L, R, T, B = 820.0, 440.0, 70.0, 170.0, 40.0, 50.0
	lo := 1.0
	for _, s := range r.Sweep {
		lo = math.Min(lo, s.ETTR.Mean-s.ETTR.SE)
	}
	lo = math.Max(0, math.Floor(lo*20)/20)
	x0, x1 := math.Log(SweepIntervals[0].Minutes()), math.Log(SweepIntervals[len(SweepIntervals)-1].Minutes())
	px := func(min float64) float64 { return L + (math.Log(min)-x0)/(x1-x0)*(W-L-R) }
	py := func(e float64) float64 { return T + (1-e)/(1-lo)*(H-T-B) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%g" y="22" font-size="14">ETTR vs checkpoint interval: %s GPUs, %.3g interruptions/node-day, %g days, %d trials/point</text>`+"\n",
		L, thousands(r.GPUs), r.Unexpected, r.Days, r.SweepTrials)
	for e := lo; e <= 1.0001; e += 0.05 {
		y := py(e)
		fmt.Fprintf(&b, `<line x1="%g" y1="%.1f" x2="%g" y2="%.1f" stroke="#ddd"/><text x="%g" y="%.1f" text-anchor="end">%.2f</text>`+"\n", L, y, W-R, y, L-6, y+4, e)
	}
	for _, iv := range SweepIntervals {
		x := px(iv.Minutes())
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="#eee"/><text x="%.1f" y="%g" text-anchor="middle">%s</text>`+"\n", x, T, x, H-B, x, H-B+16, shortDur(iv))
	}
	fmt.Fprintf(&b, `<text x="%g" y="%g" text-anchor="middle">checkpoint interval (log scale)</text>`+"\n", (L+W-R)/2, H-12)
	for i, m := range r.Results {
		var pts []string
		for _, s := range r.Sweep {
			if s.Mode != m.Mode {
				continue
			}
			x, y := px(s.Interval), py(s.ETTR.Mean)
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", x, py(s.ETTR.Mean+2*s.ETTR.SE), x, py(s.ETTR.Mean-2*s.ETTR.SE), modeColors[m.Mode])
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", modeColors[m.Mode], strings.Join(pts, " "))
		y := T + 20 + float64(i)*20
		fmt.Fprintf(&b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="%s" stroke-width="3"/><text x="%g" y="%g">%s</text>`+"\n", W-R+12, y, W-R+32, y, modeColors[m.Mode], W-R+38, y+4, m.Mode)
	}
	fmt.Fprintf(&b, `<text x="%g" y="%g" fill="#666">bars: ±2 SE</text>`+"\n", W-R+12, T+20+float64(len(r.Results))*20+10)
	b.WriteString("</svg>\n")
	return b.String()
}

func (r *Report) timelineSVG() string {
	const W, L, R, T, rowH, gap = 900.0, 140.0, 20.0, 40.0, 30.0, 14.0
	cols := int(W - L - R)
	H := T + float64(len(r.Results))*(rowH+gap) + 70
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%g" y="22" font-size="14">One run per mode (trial 0, seed %d): %s GPUs, checkpoint every %s</text>`+"\n",
		L, r.Seed, thousands(r.GPUs), r.CkptInterval)
	span := 0.0
	for _, m := range r.Results {
		span = math.Max(span, r.timeline[m.Mode].Wall)
	}
	if span <= 0 {
		span = 1
	}
	per := span / float64(cols) // seconds per pixel column
	for i, m := range r.Results {
		tr := r.timeline[m.Mode]
		y := T + float64(i)*(rowH+gap)
		fmt.Fprintf(&b, `<text x="%g" y="%.1f" text-anchor="end">%s</text>`+"\n", L-8, y+rowH/2+4, m.Mode)
		// Each pixel column shows the shares of its time by cause, stacked.
		bins := make([][NumCauses]float64, cols)
		add := func(s Segment, sign float64, c Cause) {
			for k := max(0, int(s.From/per)); k < cols && float64(k)*per < s.To; k++ {
				lo, hi := math.Max(s.From, float64(k)*per), math.Min(s.To, float64(k+1)*per)
				if hi > lo {
					bins[k][c] += sign * (hi - lo)
					if sign < 0 {
						bins[k][Rollback] += hi - lo
					}
				}
			}
		}
		for _, s := range tr.Timeline {
			add(s, 1, s.Cause)
		}
		for _, s := range tr.Lost {
			add(s, -1, Productive)
		}
		for k := range bins {
			var tot float64
			for _, v := range bins[k] {
				tot += math.Max(0, v)
			}
			if tot <= 0 {
				continue
			}
			yy := y + rowH
			for c := Cause(0); c < NumCauses; c++ {
				h := math.Max(0, bins[k][c]) / tot * rowH
				if h < 0.05 {
					continue
				}
				yy -= h
				fmt.Fprintf(&b, `<rect x="%d" y="%.2f" width="1" height="%.2f" fill="%s"/>`+"\n", int(L)+k, yy, h, causeColors[c])
			}
		}
		for _, mk := range tr.Marks {
			x := L + mk.At/span*(W-L-R)
			fmt.Fprintf(&b, `<line x1="%.2f" y1="%.1f" x2="%.2f" y2="%.1f" stroke="black" stroke-width="0.5"/>`+"\n", x, y+rowH, x, y+rowH+5)
		}
	}
	yAxis := T + float64(len(r.Results))*(rowH+gap)
	days := span / 86400
	step := math.Max(1, math.Ceil(days/10))
	for d := 0.0; d <= days+1e-9; d += step {
		x := L + d*86400/span*(W-L-R)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%gd</text>`+"\n", x, yAxis+4, d)
	}
	x := L
	for c := Cause(0); c < NumCauses; c++ {
		if c == Slow || c == CkptCost {
			continue // not drawn: both happen while training
		}
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="12" height="12" fill="%s"/><text x="%.1f" y="%.1f">%s</text>`+"\n", x, yAxis+24, causeColors[c], x+16, yAxis+34, c)
		x += 110
	}
	fmt.Fprintf(&b, `<text x="%g" y="%.1f" fill="#666">each pixel column: its share of time by cause, %.1f h per column; ticks: faults that hit the job</text>`+"\n", L, yAxis+56, per/3600)
	b.WriteString("</svg>\n")
	return b.String()
}
