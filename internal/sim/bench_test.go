package sim

import "testing"

// Per-trial cost at the defaults (54 days): go test -run X -bench . ./internal/sim
func benchTrial(b *testing.B, gpus int, m Mode) {
	p := Default()
	p.GPUs = gpus
	p.Spares = p.AutoSpares()
	for i := 0; i < b.N; i++ {
		RunTrial(&p, m, 1, i, false)
	}
}

func BenchmarkTrial16kCR(b *testing.B)      { benchTrial(b, 16384, ModeCR) }
func BenchmarkTrial16kRestart(b *testing.B) { benchTrial(b, 16384, ModeRestart) }
func BenchmarkTrial16kPeer(b *testing.B)    { benchTrial(b, 16384, ModePeer) }
func BenchmarkTrial16kLive(b *testing.B)    { benchTrial(b, 16384, ModeLive) }
func BenchmarkTrial40kLive(b *testing.B)    { benchTrial(b, 40000, ModeLive) }
