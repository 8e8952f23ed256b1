// Package store is where the coordinator keeps the job's state: one small
// key-value interface with revisions, so that the embedded single-process
// store of `bulsajo run` and etcd (multi-node, next) are interchangeable and
// are held to the same conformance suite (storetest).
package store

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"
)

// KV is one stored key with the revision of its last change.
type KV struct {
	Key      string
	Value    []byte
	Revision int64
}

// Store is the state interface. Every call takes a context first; writes
// return the store revision they created.
type Store interface {
	// Put sets key to value.
	Put(ctx context.Context, key string, value []byte) (int64, error)
	// Get returns the key, or ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)
	// List returns the keys under prefix, in key order.
	List(ctx context.Context, prefix string) ([]KV, error)
	// CompareAndPut sets key only if its current revision is rev (0: absent).
	CompareAndPut(ctx context.Context, key string, value []byte, rev int64) (int64, error)
	// Close releases the store.
	Close() error
}

// Errors with the package prefix, as etcd's concurrency package does.
var (
	ErrNotFound = errors.New("store: key not found")
	ErrConflict = errors.New("store: revision conflict")
	ErrClosed   = errors.New("store: closed")
	// ErrUnavailable: the backend cannot serve the request now (no etcd
	// endpoint answered, no leader). The caller may retry; a write that
	// failed this way may or may not have been applied.
	ErrUnavailable = errors.New("store: unavailable")
)

// Memory is the in-process store used by `bulsajo run` on one machine: the
// coordinator and agent live in the same process, so its state lives and
// dies with them; the event log file is the durable record.
type Memory struct {
	mu     sync.Mutex
	rev    int64
	kv     map[string]KV
	closed bool
}

// NewMemory returns an empty store.
func NewMemory() *Memory { return &Memory{kv: map[string]KV{}} }

func (m *Memory) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if m.closed {
		return ErrClosed
	}
	return nil
}

// Put implements Store.
func (m *Memory) Put(ctx context.Context, key string, value []byte) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return 0, err
	}
	return m.put(key, value), nil
}

func (m *Memory) put(key string, value []byte) int64 {
	m.rev++
	m.kv[key] = KV{Key: key, Value: append([]byte(nil), value...), Revision: m.rev}
	return m.rev
}

// Get implements Store.
func (m *Memory) Get(ctx context.Context, key string) (KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return KV{}, err
	}
	kv, ok := m.kv[key]
	if !ok {
		return KV{}, ErrNotFound
	}
	return kv, nil
}

// List implements Store.
func (m *Memory) List(ctx context.Context, prefix string) ([]KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return nil, err
	}
	var out []KV
	for k, kv := range m.kv {
		if strings.HasPrefix(k, prefix) {
			out = append(out, kv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// CompareAndPut implements Store.
func (m *Memory) CompareAndPut(ctx context.Context, key string, value []byte, rev int64) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return 0, err
	}
	if m.kv[key].Revision != rev {
		return 0, ErrConflict
	}
	return m.put(key, value), nil
}

// Close implements Store.
func (m *Memory) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}
