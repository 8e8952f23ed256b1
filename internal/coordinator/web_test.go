package coordinator

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/bulsajo/bulsajo/internal/console"
	"github.com/bulsajo/bulsajo/internal/store"
)

// TestGrafanaQueriesNameExportedMetrics: every metric a query of the Grafana
// dashboard names is one the coordinator exports.
func TestGrafanaQueriesNameExportedMetrics(t *testing.T) {
	s, err := New(Config{Token: "test-join-token-0123456789abcdef", Store: store.NewMemory(), DataDir: t.TempDir(),
		Console: console.New(os.Stderr), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	exported := s.metrics.Names()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "grafana", "bulsajo.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("bulsajo.json: %v", err)
	}
	name := regexp.MustCompile(`\bbulsajo_[a-z_]+`)
	queries := 0
	check := func(where, expr string) {
		for _, m := range name.FindAllString(expr, -1) {
			queries++
			if !slices.Contains(exported, m) {
				t.Errorf("%s: %s names %s, which the binary does not export (it exports %v)", where, expr, m, exported)
			}
		}
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			check("panel "+p.Title, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(string); ok {
			check("variable", q)
		}
	}
	if queries < 10 {
		t.Errorf("only %d metric references in the dashboard's queries", queries)
	}
}
