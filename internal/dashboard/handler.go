package dashboard

import (
	"bytes"
	"embed"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/bulsajo/bulsajo/internal/events"
)

//go:embed static
var static embed.FS

// Handler serves the page (/), its assets (/static/), the data
// (/api/snapshot) and the live stream (/api/stream, server-sent events).
// Everything is read-only.
func Handler(h *Hub) http.Handler {
	mux := http.NewServeMux()
	sub, _ := fs.Sub(static, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(sub)))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		page(w, nil)
	})
	mux.HandleFunc("GET /api/snapshot", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(h.Snapshot())
	})
	mux.HandleFunc("GET /api/stream", func(w http.ResponseWriter, r *http.Request) { stream(w, r, h) })
	return mux
}

// stream sends every event and progress sample as it happens, and the
// state/summary/status once a second, until the page goes away.
func stream(w http.ResponseWriter, r *http.Request, h *Hub) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	ch := h.subscribe()
	defer h.unsubscribe(ch)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	sendLive := func() error {
		b, _ := json.Marshal(h.Live())
		_, err := io.WriteString(w, "event: live\ndata: "+string(b)+"\n\n")
		fl.Flush()
		return err
	}
	if sendLive() != nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case f := <-ch:
			if _, err := w.Write(f); err != nil {
				return
			}
			fl.Flush()
			// An event changes the counts and the state: send them with it
			// rather than up to a second later.
			if bytes.HasPrefix(f, []byte("event: event\n")) && sendLive() != nil {
				return
			}
		case <-tick.C:
			if sendLive() != nil {
				return
			}
		}
	}
}

// page writes the HTML page. With data, the page is a self-contained report:
// the script and style are inlined and the snapshot is in the page.
func page(w io.Writer, data *Snapshot) {
	tpl, _ := static.ReadFile("static/index.html")
	html := string(tpl)
	if data != nil {
		css, _ := static.ReadFile("static/app.css")
		js, _ := static.ReadFile("static/app.js")
		b, _ := json.Marshal(data)
		// </script> inside a JSON string would end the script element.
		snap := strings.ReplaceAll(string(b), "</", `<\/`)
		html = strings.Replace(html, `<link rel="stylesheet" href="/static/app.css">`, "<style>"+string(css)+"</style>", 1)
		html = strings.Replace(html, `<script src="/static/app.js"></script>`,
			"<script>window.BULSAJO_SNAPSHOT="+snap+";</script><script>"+string(js)+"</script>", 1)
	}
	io.WriteString(w, html)
}

// WriteReport writes the report of a run from its events: the page with the
// data inside, readable without bulsajo or a network.
func WriteReport(w io.Writer, evs []events.Event) events.Summary {
	var end time.Time
	if n := len(evs); n > 0 {
		end = evs[n-1].Time
	}
	s := Snapshot{Now: end, State: "unknown", Events: evs}
	for _, e := range evs {
		s.State = stateAfter(s.State, e)
	}
	s.Summary = summarize(evs, nil, end)
	for _, e := range evs {
		if e.Type == events.RunFinished && e.Summary != nil {
			s.Summary = *e.Summary // the run's own account, with its step time
		}
	}
	if s.State == "training" || s.State == "recovering" || s.State == "starting" {
		s.State += " (log ends here)"
	}
	page(w, &s)
	return s.Summary
}
