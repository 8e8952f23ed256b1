package sim

import "testing"

func BenchmarkLive(b *testing.B) {
	p := Default()
	for i := 0; i < b.N; i++ {
		RunTrial(&p, ModeLive, 1, i, false)
	}
}
func BenchmarkRestart(b *testing.B) {
	p := Default()
	for i := 0; i < b.N; i++ {
		RunTrial(&p, ModeRestart, 1, i, false)
	}
}
