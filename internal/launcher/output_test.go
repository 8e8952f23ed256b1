package launcher

import "testing"

func TestMaskLine(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		same bool
	}{
		{"[GPU0] Epoch 6 | Batchsize: 32 | Steps: 16", "[GPU0] Epoch 7 | Batchsize: 32 | Steps: 16", false},
		{"step 1200 loss 2.3012", "step 1200 loss 2.2871", true},
		{"step 1200 loss 2.3012", "step 1210 loss 2.3012", false},
		{"2026-12-02 03:01:02,123 INFO starting", "2026-12-03 04:11:12,456 INFO starting", true},
		{"[W socket.cpp:601] [c10d] The client socket has failed to connect to [localhost]:29517 (errno: 99 - Cannot assign requested address).",
			"[W socket.cpp:601] [c10d] The client socket has failed to connect to [localhost]:41233 (errno: 99 - Cannot assign requested address).", true},
		{"RuntimeError: Connection closed by peer [127.0.0.1]:52348", "RuntimeError: Connection closed by peer [127.0.0.1]:6011", true},
		{"loaded data in 0.51s", "loaded data in 1.7s", true},
		{"object at 0x7f3a2c1b", "object at 0x7f99ee00", true},
	} {
		if got := maskLine(tt.a) == maskLine(tt.b); got != tt.same {
			t.Errorf("%q vs %q: same=%v, want %v (%q, %q)", tt.a, tt.b, got, tt.same, maskLine(tt.a), maskLine(tt.b))
		}
	}
}

func TestLineBookNewPerGeneration(t *testing.T) {
	var b lineBook
	steps := []struct {
		gen  int
		line string
		new  bool
	}{
		{1, "Epoch 0", true},
		{1, "Epoch 0", true}, // another rank, same generation: new to this one too
		{1, "Epoch 1", true},
		{2, "Epoch 0", false},
		{2, "Epoch 1", false},
		{2, "Epoch 2", true},
		{3, "Epoch 2", false},
	}
	for _, s := range steps {
		if got := b.note(s.gen, s.line); got != s.new {
			t.Errorf("gen %d %q: new=%v, want %v", s.gen, s.line, got, s.new)
		}
	}
}
