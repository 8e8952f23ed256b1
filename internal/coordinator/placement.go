package coordinator

import "slices"

// Placement: which nodes a generation runs on and where replacements start.
// These are pure functions of the node table, so that the rules can be read
// and tested without a server.

// usable reports whether n can take part in a new generation that needs
// nproc slots on each node.
func usable(n *node, nproc int) bool {
	return n.sess != nil && !n.lost && !n.Quarantined && n.NProc >= nproc
}

// choose picks the nodes of the next generation, at most max of them: the
// previous generation's nodes that are still good (so group ranks stay where
// they were), then spares, then idle nodes. The first generation (no
// previous placement) takes worker nodes first and spares only to reach min,
// so that spares stay free for the first loss.
func choose(nodes map[string]*node, prev []placement, max, min, nproc int) []*node {
	var out []*node
	taken := map[string]bool{}
	add := func(n *node) {
		if len(out) < max && !taken[n.Name] && usable(n, nproc) {
			out = append(out, n)
			taken[n.Name] = true
		}
	}
	for _, p := range prev {
		if n := nodes[p.Node]; n != nil {
			add(n)
		}
	}
	var spares, others []*node
	for _, n := range nodes {
		if n.Spare {
			spares = append(spares, n)
		} else {
			others = append(others, n)
		}
	}
	byName := func(a, b *node) int { return cmpString(a.Name, b.Name) }
	slices.SortFunc(spares, byName)
	slices.SortFunc(others, byName)
	if len(prev) == 0 {
		for _, n := range others {
			add(n)
		}
		for _, n := range spares {
			if len(out) < min {
				add(n)
			}
		}
		return out
	}
	for _, n := range spares {
		add(n)
	}
	for _, n := range others {
		add(n)
	}
	return out
}

// joinerHosts orders the nodes that may host live-mode replacements: spares
// that hold none of the job's ranks first, then other idle nodes, then the
// generation's own nodes (their free slots); by name within each class.
// ranksOf names the job's ranks on a node.
func joinerHosts(nodes map[string]*node, ranksOf func(string) []int) []*node {
	var hosts []*node
	for _, nd := range nodes {
		if nd.sess != nil && !nd.lost && !nd.Quarantined {
			hosts = append(hosts, nd)
		}
	}
	class := func(nd *node) int {
		idle := len(ranksOf(nd.Name)) == 0
		switch {
		case nd.Spare && idle:
			return 0
		case idle:
			return 1
		}
		return 2
	}
	slices.SortFunc(hosts, func(a, b *node) int {
		if ca, cb := class(a), class(b); ca != cb {
			return ca - cb
		}
		return cmpString(a.Name, b.Name)
	})
	return hosts
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
