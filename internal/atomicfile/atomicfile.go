// Package atomicfile replaces a file's contents so that a reader sees the old
// contents or the new, never a part: it writes a temporary file in the same
// directory and renames it over the target (os.WriteFile truncates first, so
// a reader can catch it empty).
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data, mode perm. Nothing is synced: the data
// survives the process being killed (the page cache keeps it), not a power
// loss. For files that describe a moment (which pid holds a rank).
func Write(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, false)
}

// WriteDurable is Write with the data synced to disk before the rename, so
// that after a power loss the file holds the old contents or the new. For
// files that cannot be rebuilt (keys, certificates, an event log).
func WriteDurable(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, true)
}

func write(path string, data []byte, perm os.FileMode, sync bool) error {
	// A hidden name the directory's other readers skip; the random suffix
	// keeps two writers of the same path from sharing a temporary file.
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = f.Chmod(perm) // CreateTemp makes it 0600
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
