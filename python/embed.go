// Package python carries the bulsajo Python SDK inside the Go binary, so that
// `bulsajo run` can put it on the workers' PYTHONPATH with nothing installed.
package python

import (
	"embed"
	"io/fs"
	"os"
	"path/filepath"
)

//go:embed bulsajo/*.py
var sdk embed.FS

// Extract writes the SDK under dir (as dir/bulsajo/...) and returns dir, the
// entry to put on PYTHONPATH.
func Extract(dir string) (string, error) {
	err := fs.WalkDir(sdk, "bulsajo", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := sdk.ReadFile(path)
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	return dir, err
}
