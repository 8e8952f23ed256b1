package coordinator

import (
	"slices"
	"strings"
	"testing"
)

// table builds a node table from specs: name, then flags: s = spare,
// q = quarantined, l = lost, d = disconnected, 1/2/... = slots (default 2).
func table(specs ...string) map[string]*node {
	out := map[string]*node{}
	for _, sp := range specs {
		name, flags, _ := strings.Cut(sp, ":")
		n := &node{nodeRecord: nodeRecord{Name: name}, NProc: 2, sess: &session{}}
		for _, f := range flags {
			switch {
			case f == 's':
				n.Spare = true
			case f == 'q':
				n.Quarantined = true
			case f == 'l':
				n.lost = true
			case f == 'd':
				n.sess = nil
			case f >= '0' && f <= '9':
				n.NProc = int(f - '0')
			}
		}
		out[name] = n
	}
	return out
}

func names(ns []*node) []string {
	out := []string{}
	for _, n := range ns {
		out = append(out, n.Name)
	}
	return out
}

func TestChoose(t *testing.T) {
	prev := func(ns ...string) []placement {
		var out []placement
		for i, n := range ns {
			out = append(out, placement{Node: n, Ranks: []int{2 * i, 2*i + 1}})
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		nodes    map[string]*node
		prev     []placement
		max, min int
		want     []string
	}{
		{"first generation: workers by name, spares kept free",
			table("c", "a", "b", "s1:s"), nil, 3, 2, []string{"a", "b", "c"}},
		{"first generation: spares only to reach the minimum",
			table("a", "s2:s", "s1:s"), nil, 3, 2, []string{"a", "s1"}},
		{"first generation: at most max",
			table("a", "b", "c"), nil, 2, 1, []string{"a", "b"}},
		{"a lost node: the previous nodes keep their order, a spare takes the place",
			table("a", "b:l", "c", "s1:s"), prev("c", "b", "a"), 3, 3, []string{"c", "a", "s1"}},
		{"spares before idle workers",
			table("a", "b:q", "z", "s1:s"), prev("a", "b"), 2, 2, []string{"a", "s1"}},
		{"idle workers when no spare is left",
			table("a", "b:d", "z", "s1:s:q"), prev("a", "b"), 2, 2, []string{"a", "z"}},
		{"too few slots: not usable",
			table("a", "b:1", "s1:s:1"), prev("a", "b"), 2, 1, []string{"a"}},
		{"nothing usable",
			table("a:q", "b:l"), prev("a", "b"), 2, 1, []string{}},
		{"a previous node that left the table",
			table("a", "s1:s"), prev("gone", "a"), 2, 2, []string{"a", "s1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := names(choose(tc.nodes, tc.prev, tc.max, tc.min, 2))
			if !slices.Equal(got, tc.want) {
				t.Errorf("choose = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestUsable(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want bool
	}{{"a", true}, {"a:s", true}, {"a:q", false}, {"a:l", false}, {"a:d", false}, {"a:1", false}, {"a:4", true}} {
		if got := usable(table(tc.spec)["a"], 2); got != tc.want {
			t.Errorf("usable(%s) = %v, want %v", tc.spec, got, tc.want)
		}
	}
}

func TestJoinerHosts(t *testing.T) {
	nodes := table("b", "a", "s2:s", "s1:s", "x:q", "y:d", "z:l", "s0:s")
	// The generation runs on a and s0 (a spare that took over earlier).
	ranks := map[string][]int{"a": {0, 1}, "s0": {2, 3}}
	got := names(joinerHosts(nodes, func(n string) []int { return ranks[n] }))
	want := []string{"s1", "s2", "b", "a", "s0"}
	if !slices.Equal(got, want) {
		t.Errorf("joinerHosts = %v, want %v", got, want)
	}
}
