package cli

import (
	"errors"
	"strings"
	"testing"

	"github.com/bulsajo/bulsajo/internal/config"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		args    string
		wantCmd string
		wantErr string // "" = valid
	}{
		{"agent --coordinator c:7070 --token-file /t --nproc-per-node 8 --node-name gpu-1 --health-addr 0.0.0.0:7071", "agent", ""},
		{"agent --coordinator c:7070 --token-file /t --nproc_per_node 2", "agent", ""},
		{"coordinator --listen 0.0.0.0:7070 --data-dir /data --health-addr :7071", "coordinator", ""},
		{"submit --coordinator c:7070 --token-file /t --nnodes 2:3 -- python3 train.py --steps 5", "submit", ""},
		{"status --coordinator c:7070", "status", ""},
		{"agent --coordinator c:7070 --token-file /t --gpus 8", "", "unknown flag: --gpus"},
		{"agent --coordinator c --token-file /t", "", "want host:port"},
		{"agent --coordinator c:1 --token-file /t --node-name bad/name", "", "--node-name"},
		{"agent --coordinator c:1 --token-file /t --nproc-per-node 0", "", "--nproc-per-node must be 1..1024"},
		{"agent --coordinator c:1", "", "--token-file is required"},
		{"agent --coordinator c:1 --token-file /t --health-addr 7071", "", "--health-addr"},
		{"submit --coordinator c:1 --token-file /t --nnodes 3:2 -- x", "", "--nnodes"},
		{"submit --coordinator c:1 --token-file /t --nnodes 2", "", "no command"},
		{"coordinator --lease five", "", "invalid argument"},
		{"launch --nnodes 2", "", "not a bulsajo command"},
	}
	for _, tt := range tests {
		t.Run(tt.args, func(t *testing.T) {
			cmd, _, err := Check(strings.Fields(tt.args))
			if tt.wantErr == "" {
				if err != nil || cmd != tt.wantCmd {
					t.Fatalf("Check = %q, %v; want %q, nil", cmd, err, tt.wantCmd)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Check error = %v, want one containing %q", err, tt.wantErr)
			}
			if !errors.Is(err, config.ErrUsage) {
				t.Errorf("Check error %v is not a usage error", err)
			}
		})
	}
}
